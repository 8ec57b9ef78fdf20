"""``benchmarks/gpu_toyworld.py``: time boxes end child processes; tars come back in pieces that rejoin."""

from __future__ import annotations

import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_toyworld  # noqa: E402


def test_a_child_past_its_time_box_is_killed(tmp_path):
    log = tmp_path / "log"
    ran = gpu_toyworld.run_until([sys.executable, "-c", "import time; time.sleep(60)"], log, time.time() + 1)
    assert ran["returncode"] is None and ran["ended_by"] == "killed at the time box" and ran["seconds"] < 30
    assert "time.sleep(60)" in log.read_text()


def test_a_child_that_honours_its_stop_file_saves_and_ends(tmp_path):
    stop = tmp_path / "STOP"
    script = f"import pathlib, time\nwhile not pathlib.Path({str(stop)!r}).exists(): time.sleep(0.1)\nprint('saved')"
    ran = gpu_toyworld.run_until([sys.executable, "-c", script], tmp_path / "log", time.time() + 1, stop_file=stop)
    assert ran["returncode"] == 0 and ran["ended_by"] == "its STOP file at the time box"
    assert "saved" in (tmp_path / "log").read_text()


def test_pack_splits_a_folder_into_parts_that_rejoin(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_toyworld, "PART_BYTES", 4096)
    folder = tmp_path / "weights"
    folder.mkdir()
    payload = bytes(range(256)) * 64
    (folder / "unet.bin").write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    names = gpu_toyworld.pack(folder, out)
    assert len(names) > 1 and names == sorted(names)
    assert all((out / name).stat().st_size <= 4096 for name in names)
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join((out / name).read_bytes() for name in names))
    with tarfile.open(joined) as tar:
        assert tar.extractfile("weights/unet.bin").read() == payload


def test_quality_summary_takes_the_best_single_layer():
    tables = {
        "accuracy": [
            {"check": "colour", "source": "generated", "accuracy": 0.5},
            {"check": "colour", "source": "rendered", "accuracy": 1.0},
        ],
        "miou": [
            {"layer": "all layers", "mean": 0.9},
            {"layer": "a", "mean": 0.2},
            {"layer": "b", "mean": 0.3},
        ],
        "miou_images": 7,
    }
    summary = gpu_toyworld.quality_summary(tables)
    assert summary == {"generated": {"colour": 0.5}, "best_layer": "b", "best_layer_miou": 0.3, "miou_images": 7}
