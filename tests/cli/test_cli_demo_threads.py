"""``cemaps demo --threads`` and ``--workers``: the flag, else OMP_NUM_THREADS (threads) or the usable cores
(workers), else the measured default; bad values refused in one line before anything is written (issue 25)."""

from __future__ import annotations

import pytest
from cli_helpers import assert_refused

from cemaps.cli.demo import DEFAULT_THREADS, demo_threads
from cemaps.demo import run_demo
from cemaps.errors import ConfigError


def test_the_flag_wins_then_omp_num_threads_then_the_default():
    assert demo_threads(3, {"OMP_NUM_THREADS": "2"}) == 3
    assert demo_threads(None, {"OMP_NUM_THREADS": " 2 "}) == 2
    assert demo_threads(None, {}) == DEFAULT_THREADS
    assert demo_threads(None, {"OMP_NUM_THREADS": ""}) == DEFAULT_THREADS


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_omp_num_threads_is_named(value):
    with pytest.raises(ConfigError, match=f"OMP_NUM_THREADS={value!r}: expected an integer >= 1"):
        demo_threads(None, {"OMP_NUM_THREADS": value})


def test_threads_below_one_is_refused_before_the_output_folder_is_made(cli, tmp_path):
    out = tmp_path / "demo"
    code, _, err = cli("demo", "--out", out, "--threads", "0", "-q")
    assert_refused(code, err, "--threads 0: expected an integer >= 1")
    assert not out.exists()


def test_run_demo_refuses_zero_threads_before_the_output_folder_is_made(tmp_path):
    with pytest.raises(ConfigError, match="demo threads=0: expected an integer >= 1"):
        run_demo(tmp_path / "demo", threads=0, progress=False)
    assert not (tmp_path / "demo").exists()


def test_workers_below_one_is_refused_before_the_output_folder_is_made(cli, tmp_path):
    out = tmp_path / "demo"
    code, _, err = cli("demo", "--out", out, "--workers", "0", "-q")
    assert_refused(code, err, "--workers 0: expected an integer >= 1")
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, -2, True, 1.5])
def test_run_demo_refuses_bad_workers_before_the_output_folder_is_made(tmp_path, workers):
    with pytest.raises(ConfigError, match=f"demo workers={workers!r}: expected an integer >= 1"):
        run_demo(tmp_path / "demo", workers=workers, progress=False)
    assert not (tmp_path / "demo").exists()


def test_the_workers_default_is_the_usable_cores_and_the_flag_wins():
    import os

    from cemaps.cli.demo import demo_workers

    assert demo_workers(None) == len(os.sched_getaffinity(0))
    assert demo_workers(3) == 3
