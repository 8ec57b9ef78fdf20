"""What a killed `cemaps analyze` / `report` left beside its output is cleared by the next run.

A run writes into ``.<name>.partial-<pid>-*`` and moves an earlier output aside into
``.<name>.old-<pid>-*`` for the swap. SIGKILL leaves them behind; the next run deletes the partial
folder of a dead process and puts an earlier output back when the kill came between the two moves.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cemaps.outputs import recover_leftovers, staged_output, write_marker


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_dead_runs_partial_folder_is_removed_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "results"
    dead = tmp_path / f".results.partial-{_dead_pid()}-abc"
    live = tmp_path / f".results.partial-{os.getpid()}-xyz"
    unnamed = tmp_path / ".results.partial-q1w2e3"  # an older version's name: whose it is cannot be told
    for folder in (dead, live, unnamed):
        (folder / "figures").mkdir(parents=True)
        (folder / "figures" / "a.png").write_bytes(b"png")
    with staged_output(out, "analyze") as staging:
        (staging / "summary.json").write_text("{}")
    assert not dead.exists() and live.exists() and unnamed.exists()
    assert (out / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.glob(".results.*")) == sorted([live.name, unnamed.name])  # none of its own


def test_an_earlier_output_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    out = tmp_path / "report"
    aside = tmp_path / f".report.old-{_dead_pid()}-k9" / "report"
    aside.mkdir(parents=True)
    (aside / "report.html").write_text("<p>the earlier report</p>")
    write_marker(aside, "report")
    assert recover_leftovers(out) == [aside.parent]
    assert (out / "report.html").read_text() == "<p>the earlier report</p>" and not aside.parent.exists()


def test_an_aside_copy_is_deleted_when_the_new_output_is_in_place(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("new")
    aside = tmp_path / f".report.old-{_dead_pid()}-k9" / "report"
    aside.mkdir(parents=True)
    (aside / "report.html").write_text("old")
    recover_leftovers(out)
    assert (out / "report.html").read_text() == "new" and not aside.parent.exists()


def test_a_killed_trainings_staging_folder_is_cleared_by_the_next_training(tmp_path):
    from cemaps.models.train.common import staging_dir

    out = tmp_path / "lora"
    dead = tmp_path / f".lora.partial-{_dead_pid()}-t1"
    dead.mkdir()
    (dead / "pytorch_lora_weights.safetensors").write_bytes(b"half")
    with staging_dir(out) as staging:
        assert staging.name.startswith(f".lora.partial-{os.getpid()}-")
    assert not dead.exists() and not staging.exists()
