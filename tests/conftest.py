"""Shared fixtures: tiny models built in-process, no downloads, CPU only."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models are dominated by per-op overhead: one thread is as fast and never oversubscribes
# the CPU when tests start subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from cemaps.models import tiny_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """Builds a fresh tiny pipeline per call (tests that modify weights need their own)."""
    return tiny_pipeline


@pytest.fixture()
def tiny_pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture()
def generator():
    return torch.Generator().manual_seed(0)
