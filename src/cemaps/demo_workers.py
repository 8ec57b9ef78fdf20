"""The demo's work spread over processes: its trainings in a process pool, its capture in ranks.

Why processes and not threads: on the project's 2-core machine, two single-threaded processes each
training their own model kept both cores busy, while one process with two torch threads trained
small models no faster on a quiet machine and 5-50x slower on a loaded one (OpenMP threads spin
waiting for a core another job holds; docs/front-door.md, "The demo's time and threads").
Capture needs no new machinery: each process is a rank of :mod:`cemaps.study.distributed` (the
``RANK`` / ``WORLD_SIZE`` variables ``torchrun`` sets), captures a disjoint block of the study's
batches into its own part files, and the store's manifest is the union of every sealed part.

Workers are spawned, not forked (torch's thread pools do not survive a fork), and each loads the
base itself by name, so the base must be reloadable from a name: the toy world's alias or the tiny
model. Every worker runs with ``threads`` torch threads.

Example (two processes train two tiny LoRAs; each job's model folder gets the usual files):
    >>> # train_models([TrainJob(...), TrainJob(...)], base="cemaps/tiny-sd", threads=1, workers=2)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cemaps.models.train import TrainSettings

# A rough cost per job for the longest-first order: DreamBooth steps cost most per step, Textual
# Inversion least (the demo's quiet-machine times at 1 thread: 0.33, 0.22 and 0.20 s per step).
_COST_PER_STEP = {"dreambooth": 1.5, "lora": 1.0, "textual_inversion": 0.9}
_WORKER_PIPE: Any = None


@dataclass(frozen=True)
class TrainJob:
    """One personalization the demo trains: the arguments of :func:`cemaps.models.train.personalize`.

    Attributes:
        model_id: the study's id for the model (names it in progress lines and phases).
        images: the subject's training images (PIL), picklable to a worker.
    """

    model_id: str
    method: str
    images: tuple
    token: str
    class_word: str
    out: Path
    settings: TrainSettings

    @property
    def cost(self) -> float:
        return self.settings.steps * self.settings.batch_size * _COST_PER_STEP.get(self.method, 1.0)


def default_workers() -> int:
    """The CPU cores this process may use (``os.sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_base(base: str) -> Any:
    """The demo's base on the CPU in float32, by name (the toy world is registered first)."""
    from cemaps.models.loading import load_pipeline
    from cemaps.toyworld import register

    register()
    return load_pipeline(base, device="cpu", dtype="float32")


def _library_output() -> tuple:
    """This process's diffusers/transformers verbosity and loading bars, and its warning filters."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    return (
        diffusers_logging.get_verbosity(),
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.get_verbosity(),
        transformers_logging.is_progress_bar_enabled(),
        [entry for entry in warnings.filters if _picklable(entry)],
    )


def _picklable(value: object) -> bool:
    import pickle

    try:
        pickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


def _start_worker(base: str, threads: int, library_output: tuple) -> None:
    """A worker's start: the parent's library output settings (a quiet CLI stays quiet), threads, the base."""
    import warnings

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    global _WORKER_PIPE
    diffusers_verbosity, diffusers_bars, transformers_verbosity, transformers_bars, filters = library_output
    diffusers_logging.set_verbosity(diffusers_verbosity)
    transformers_logging.set_verbosity(transformers_verbosity)
    if not diffusers_bars:
        diffusers_logging.disable_progress_bar()
    if not transformers_bars:
        transformers_logging.disable_progress_bar()
    warnings.filters[:] = filters
    torch.set_num_threads(threads)
    _WORKER_PIPE = load_base(base)


def _train_in_worker(job: TrainJob) -> tuple[str, float]:
    return job.model_id, _train(_WORKER_PIPE, job, progress=False)


def _train(pipe: Any, job: TrainJob, progress: bool) -> float:
    from cemaps.models.train import personalize

    started = time.perf_counter()
    personalize(
        pipe,
        job.method,
        list(job.images),
        job.token,
        job.class_word,
        job.out,
        job.settings,
        progress=progress,
        overwrite=True,
    )
    return time.perf_counter() - started


def _capture_in_worker(config_path: Path, store: Path, rank: int, world_size: int, progress: bool) -> int:
    from cemaps.study.config import load_config
    from cemaps.study.runner import run_study

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    try:
        return run_study(load_config(config_path), store, progress=progress, pipe=_WORKER_PIPE).written
    finally:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(name, None)


class DemoPool:
    """``workers`` spawned processes, each holding the base pipeline, for the demo's trainings and capture.

    With ``workers == 1`` nothing is spawned: the work runs in this process on ``pipe`` (loaded
    on first use when not given).

    Args:
        base: the base's name, reloadable in a worker (:func:`load_base`).
        threads: torch threads in each worker.
        workers: processes (>= 1).
        pipe: the base already loaded in this process (used only with ``workers == 1``).
    """

    def __init__(self, base: str, threads: int, workers: int, pipe: Any = None):
        self.base, self.threads, self.workers, self.pipe = base, threads, workers, pipe
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> DemoPool:
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.base, self.threads, _library_output()),
            )
        elif self.pipe is None:
            self.pipe = load_base(self.base)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def train(
        self, jobs: Sequence[TrainJob], progress: bool, on_done: Callable[[str, float], None]
    ) -> list[tuple[str, float]]:
        """Trains every job, longest first; returns ``(model_id, seconds)`` in finishing order.

        ``on_done(model_id, seconds)`` is called in this process as each job ends (in a pool,
        per-step progress bars would interleave, so workers train without them).

        Raises:
            whatever :func:`cemaps.models.train.personalize` raises for a job (the other jobs are
            cancelled or finish first).
        """
        ordered = sorted(jobs, key=lambda job: job.cost, reverse=True)
        done: list[tuple[str, float]] = []
        if self._pool is None:
            for job in ordered:
                done.append((job.model_id, _train(self.pipe, job, progress)))
                on_done(*done[-1])
            return done
        futures: list[Future] = [self._pool.submit(_train_in_worker, job) for job in ordered]
        for future in as_completed(futures):
            done.append(future.result())
            on_done(*done[-1])
        return done

    def capture(self, config_path: Path, store: Path, progress: bool) -> int:
        """Captures the study at ``config_path`` into ``store``, one rank per worker; returns records written.

        Rank 0 shows its progress bar (its share of the records) when ``progress``.
        """
        from cemaps.study.config import load_config
        from cemaps.study.runner import run_study

        if self._pool is None:
            return run_study(load_config(config_path), store, progress=progress, pipe=self.pipe).written
        futures = [
            self._pool.submit(_capture_in_worker, config_path, store, rank, self.workers, progress and rank == 0)
            for rank in range(self.workers)
        ]
        return sum(future.result() for future in futures)


__all__ = ["DemoPool", "TrainJob", "default_workers", "load_base"]
