"""The studies in ``examples/`` never go stale: each loads, the paper-scale one is the paper's design,
its training commands parse against ``cemaps personalize``, and the tiny one runs end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from cemaps.cli import app
from cemaps.data import load_prompts, load_subjects
from cemaps.store import open_store
from cemaps.study.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*/study.yaml"))


@pytest.fixture()
def any_device(monkeypatch):
    """Examples name the device they are meant for (``device: cuda``); this machine may have none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


def test_the_examples_are_there():
    assert {path.parent.name for path in CONFIGS} >= {"sd15-paper", "tiny"}


@pytest.mark.parametrize("config", CONFIGS, ids=[path.parent.name for path in CONFIGS])
def test_every_example_loads_from_another_directory_with_paths_beside_it(config, any_device, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = load_config(config)
    assert study.device is not None, "an example shows `device:`"
    assert Path(study.store).parent == config.parent
    assert all(Path(entry.path).is_relative_to(config.parent) for entry in study.personalized)
    assert len(load_prompts(study.prompts)) == len(set(load_prompts(study.prompts)["prompt_id"]))


def test_the_paper_scale_example_is_the_papers_design(any_device):
    study = load_config(EXAMPLES / "sd15-paper" / "study.yaml")
    subjects = load_subjects("subjects15").set_index("subject_id")
    assert len(load_prompts(study.prompts)) == 200 and study.seeds == (0, 1, 2, 3)
    assert study.device == "cuda" and study.generation.steps == 50 and study.generation.height == 512
    pairs = {(entry.subject, entry.method) for entry in study.personalized}
    assert pairs == {(s, m) for s in subjects.index for m in ("dreambooth", "lora", "textual_inversion")}
    for entry in study.personalized:
        if entry.method == "textual_inversion":
            assert entry.token == subjects.loc[entry.subject, "token"]
    text = (EXAMPLES / "sd15-paper" / "study.yaml").read_text()
    assert "EDIT" in text and "torchrun --nproc_per_node" in text


def test_the_paper_scale_training_script_trains_every_listed_model_with_valid_flags(any_device):
    script = EXAMPLES / "sd15-paper" / "train.sh"
    printed = subprocess.run(
        ["bash", str(script)], env={**os.environ, "DRY": "1"}, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    study = load_config(EXAMPLES / "sd15-paper" / "study.yaml")
    subjects = load_subjects("subjects15").set_index("subject_id")
    command = typer.main.get_command(app).commands["personalize"]
    trained = set()
    for line in printed:
        words = line.split()
        assert words[:2] == ["cemaps", "personalize"], line
        context = command.make_context("personalize", words[2:])  # the flags exist and their values parse
        params = context.params
        model = Path(params["out"]).name
        trained.add(model)
        subject = model.split("-", 1)[1]
        assert params["class_word"] == subjects.loc[subject, "class_word"], line
    entries = {
        Path(entry.path).relative_to(EXAMPLES / "sd15-paper" / "models").parts[0] for entry in study.personalized
    }
    assert trained == entries and len(trained) == 45


@pytest.mark.slow
def test_the_tiny_example_runs_end_to_end(tmp_path):
    example = tmp_path / "tiny"
    shutil.copytree(EXAMPLES / "tiny", example)
    bin_dir = Path(sys.executable).parent
    source = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(source)}
    run = subprocess.run(["bash", str(example / "run.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    with open_store(example / "study.h5") as store:
        assert sorted(store.models.index) == ["base", "lora-face1", "ti-face1"]
        assert len(store.records) == 3 * 24
    assert (example / "results" / "summary.json").is_file()
    assert (example / "report" / "report.html").is_file()
