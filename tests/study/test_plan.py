"""The study planner: counts per process, and estimates that hold against a real capture."""

from __future__ import annotations

import sys
import textwrap

import pytest

from cemaps.errors import ConfigError
from cemaps.probes import CrossAttentionSettings
from cemaps.store import open_store
from cemaps.study.config import GenerationSettings, StudyConfig
from cemaps.study.plan import plan_study
from cemaps.study.runner import run_study

PROMPTS = [
    "a red mug",
    "freedom",
    "two cats on a sofa",
    "a foggy harbour in the early morning light",
    "an oil painting of a pear",
    "joy",
    "a crowded market street at night, lanterns",
    "silence",
]


def _config(**overrides) -> StudyConfig:
    values = dict(
        prompts=PROMPTS,
        seeds=(0, 1),
        generation=GenerationSettings(steps=3, batch_size=2),
        capture=CrossAttentionSettings(timesteps=2),
    )
    values.update(overrides)
    return StudyConfig(**values)


def test_disk_estimate_within_30_percent_of_the_real_store_then_nothing_left(tmp_path, tiny_pipe, monkeypatch):
    path = tmp_path / "study.h5"
    plan = plan_study(_config(), path, processes=2, records_per_part=4, pipe=tiny_pipe)
    assert [(p.share, p.done, p.to_make, p.batches, p.model_switches) for p in plan.processes] == [
        (8, 0, 8, 4, 0),
        (8, 0, 8, 4, 0),
    ]
    assert plan.calibration.seconds_per_batch > 0 and plan.calibration.bytes_per_token_row > 0
    assert all(p.seconds == pytest.approx(4 * plan.calibration.seconds_per_batch) for p in plan.processes)
    run_study(_config(), path, progress=False, records_per_part=4, pipe=tiny_pipe)
    with open_store(path) as store:
        real = store.size_on_disk()
    estimate = sum(p.bytes for p in plan.processes)
    assert 0.7 * real <= estimate <= 1.3 * real, (estimate, real)

    import cemaps.study.plan as plan_module

    def no_calibration(*args, **kwargs):
        raise AssertionError("a study with nothing left to make must not be calibrated (issue 25)")

    monkeypatch.setattr(plan_module, "calibrate", no_calibration)
    again = plan_study(_config(), path, processes=1, pipe=tiny_pipe)
    assert [(p.share, p.done, p.to_make, p.bytes, p.seconds) for p in again.processes] == [(16, 16, 0, 0, 0.0)]
    assert again.store_bytes_now == real and again.calibration is None
    assert "no calibration: every record is already in the store" in again.to_text()


def test_a_partly_captured_store_plans_only_the_rest(tmp_path, tiny_pipe):
    path = tmp_path / "study.h5"
    run_study(_config(seeds=(0,)), path, progress=False, pipe=tiny_pipe)
    plan = plan_study(_config(seeds=(0, 1)), path, processes=1, pipe=tiny_pipe)
    (only,) = plan.processes
    assert (only.share, only.done, only.to_make, only.batches) == (16, 8, 8, 4)
    assert "rank0" in plan.to_text() and "to make" in plan.to_text()


def test_processes_below_one_is_refused(tmp_path, tiny_pipe):
    with pytest.raises(ConfigError, match="processes=0: expected an integer >= 1"):
        plan_study(_config(), tmp_path / "s.h5", processes=0, pipe=tiny_pipe)


def test_capture_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(
        textwrap.dedent("""
        base: cemaps/tiny-sd
        prompts: [a red mug, freedom, joy]
        seeds: [0]
        generation: {steps: 2, batch_size: 1}
        capture: {timesteps: 2}
    """)
    )
    store = tmp_path / "s.h5"
    from cemaps.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        ["cemaps", "capture", "--config", str(config), "--store", str(store), "--dry-run", "--processes", "2"],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    assert "3 records over 2 process(es)" in out
    assert [line.split()[:4] for line in out.splitlines() if line.strip().startswith("rank")] == [
        ["rank0", "1", "0", "1"],
        ["rank1", "2", "0", "2"],
    ]
    assert "power: no personalized models" in out  # the MDEs need models to compare
    assert not store.exists() and not store.with_name("s.h5.parts").exists()
