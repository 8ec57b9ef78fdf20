"""The README's main command as a newcomer runs it: a fresh ``git clone``, then ``make demo`` from its root.

Issue 25: ``make demo`` (``cemaps demo --out demo-out``, a relative folder) failed after minutes of
training because the demo wrote a path into study.yaml relative to the current directory; every
earlier demo test used absolute paths. This test runs the committed tree exactly as the README says
and checks what the end-to-end demo test used to check (it replaces it, so CI runs the demo once).

The clone reuses the venv running the tests (installing one takes minutes): ``make VENV=<that venv>
VENV_READY=1`` skips the Makefile's install step, and ``PYTHONPATH=<clone>/src`` makes that venv's
``cemaps`` the clone's. The venv's own editable install must not move (a ``pip install -e`` of the
clone would point it at a folder deleted after the test): that is checked before and after.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def _venv_state() -> dict[str, str]:
    """What a ``pip install -e`` into the venv would change: its cemaps metadata files and where a plain
    ``import cemaps`` (no PYTHONPATH) leads."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(str(VENV))))
    state = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(site.glob("*cemaps*"))
        if path.is_file()
    }
    for info in sorted(site.glob("cemaps-*.dist-info")):
        for path in sorted(info.iterdir()):
            state[f"{info.name}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    state["import"] = subprocess.run(
        [sys.executable, "-c", "import cemaps; print(cemaps.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout.strip()
    return state


@pytest.mark.slow
def test_make_demo_runs_from_a_fresh_clone_with_the_readmes_relative_out(tmp_path):
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout")
    before = _venv_state()
    clone = tmp_path / "cemaps"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    # Under `make test` the outer make exports MAKEFLAGS/MAKELEVEL, and the inner make would print
    # "make[1]: Leaving directory ..." after the demo's last line.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["PYTHONPATH"] = str(clone / "src")
    imported = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import cemaps; print(cemaps.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=clone,
    ).stdout.strip()
    assert Path(imported).is_relative_to(clone / "src"), imported

    run = subprocess.run(
        ["make", "--no-print-directory", "demo", f"VENV={VENV}", "VENV_READY=1"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert _venv_state() == before, "make demo changed the shared venv's cemaps install"
    assert run.returncode == 0, run.stderr[-3000:]
    out = clone / "demo-out"
    report = Path(run.stdout.strip().splitlines()[-1])
    assert report == out / "report" / "report.html" or (clone / report).resolve() == out / "report" / "report.html"
    assert "pip install" not in run.stdout + run.stderr

    # The config names its files relative to its own folder, so it reads the same from anywhere.
    raw = yaml.safe_load((out / "study.yaml").read_text())
    assert raw["prompts"] == "toy_prompts_demo24.csv" and raw["store"] == "study.h5"
    assert {entry["path"] for entry in raw["personalized"]} == {f"models/{e['id']}" for e in raw["personalized"]}

    # The demo's phase times are in its own output (docs/front-door.md quotes them).
    timing = re.search(
        r"time \((\d+) process(?:es)? x (\d+) threads?\): training \d+ s( on \d+ processes)? \(.*\), capture \d+ s, "
        r"analyze \d+ s, report \d+ s",
        run.stderr,
    )
    assert timing, run.stderr[-2000:]
    assert timing.group(2) == os.environ.get("OMP_NUM_THREADS", timing.group(2)), run.stderr[-2000:]
    # What the end-to-end demo test checked before (tests/toyworld/test_toyworld_demo.py).
    results = out / "results"
    subjects = pd.read_csv(results / "toyworld_subjects.csv")
    assert sorted(subjects["model_id"]) == sorted(
        f"{method}-{subject}" for method in ("lora", "ti", "db") for subject in ("toyface", "toyobject", "toystyle")
    )
    assert subjects["rate"].between(0, 1).all() and (subjects["images"] == 8).all()
    # The subject checks the demo's training settings give (docs/toyworld.md: DreamBooth face 8/8, LoRA face
    # 2/8, base with the class word 0/8), with a margin for thread-count numerics.
    shows = subjects.set_index("model_id")["shows_subject"]
    assert shows["db-toyface"] >= 6 and shows["lora-toyface"] >= 1, subjects.to_string()
    assert (subjects["base_rate"] == 0).all(), subjects.to_string()
    localisation = pd.read_csv(results / "toyworld_localisation.csv")
    assert localisation["layer"].nunique() == 17 and localisation["miou"].between(0, 1).all()
    html = (out / "report" / "report.html").read_text()
    assert "Base model: cemaps/toyworld" in html and 'id="fig-toyworld-localisation"' in html
    assert (results / "cem_alignment_drop.csv").is_file()
