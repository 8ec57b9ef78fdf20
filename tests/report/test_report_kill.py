"""Issue 22, kind 4: `cemaps report` killed (SIGKILL) while drawing leaves no report or the earlier one
untouched, and a rerun writes the same report as an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cemaps.outputs import staged_output
from cemaps.report import write_report

SRC = Path(__file__).resolve().parents[2] / "src"


def report_files(folder: Path) -> dict[str, bytes]:
    """Every file of a report folder, the page's creation time blanked; SVGs by name only (matplotlib
    gives their clip paths random ids unless ``svg.hashsalt`` is set, so two runs never match)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".cemaps-output.json"):
        data = b"" if path.suffix == ".svg" else path.read_bytes()
        if path.suffix == ".html":
            data = re.sub(rb"Made \d{4}-\d\d-\d\d \d\d:\d\d UTC", b"Made <time>", data)
        files[path.relative_to(folder).as_posix()] = data
    return files


def kill_after_figures(results: Path, out: Path, figures: int) -> None:
    """Starts `cemaps report` and SIGKILLs it once its staging folder holds ``figures`` figure files."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-m", "cemaps", "report", str(results), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            drawn = list(out.parent.glob(f".{out.name}.partial-*/figures/*.png"))
            if len(drawn) >= figures:
                break
            time.sleep(0.02)
        assert child.poll() is None, "the report finished before the kill point"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_report_killed_while_drawing_leaves_old_or_nothing_and_reruns_to_the_same_report(results_dir, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    with staged_output(uninterrupted, "report") as staging:
        write_report(results_dir, staging)
    expected = report_files(uninterrupted)

    out = tmp_path / "report"
    kill_after_figures(results_dir, out, figures=1)  # no earlier report: none appears
    assert not out.exists()
    with staged_output(out, "report") as staging:  # the rerun
        write_report(results_dir, staging)
    assert report_files(out) == expected

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    kill_after_figures(results_dir, out, figures=len(expected) // 4)  # an earlier report: kept byte for byte
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with staged_output(out, "report") as staging:
        write_report(results_dir, staging)
    assert report_files(out) == expected
