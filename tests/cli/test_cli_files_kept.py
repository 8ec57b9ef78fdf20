"""Issue 13, kind 1: no command deletes or overwrites a file it did not create; a results
folder describes one run (no stale files, never half-written)."""

from __future__ import annotations

import json

from cli_helpers import assert_refused, snapshot

from cemaps.outputs import MARKER


def _user_project(folder):
    """A folder as a user keeps it: their study.yaml, a LoRA of theirs and a store."""
    (folder / "models" / "lora-face1").mkdir(parents=True)
    (folder / "study.yaml").write_text("base: cemaps/tiny-sd\nprompts: demo24\n")
    (folder / "models" / "lora-face1" / "my_weights.safetensors").write_bytes(b"\x00user weights" * 10)
    (folder / "study.h5").write_bytes(b"user store")
    return folder


def test_demo_refuses_a_users_project_folder(cli, tmp_path):
    project = _user_project(tmp_path / "proj")
    before = snapshot(project)
    code, _, err = cli("demo", "--out", project, "-q")
    assert_refused(code, err, str(project), "not written by `cemaps demo`", "study.yaml")
    assert snapshot(project) == before  # nothing overwritten, deleted or added


def test_analyze_refuses_a_folder_with_other_files(cli, study_copy, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out, study_copy)
    code, _, err = cli("analyze", study_copy / "study.h5", "--out", out, "-q")
    assert_refused(code, err, str(out), "notes.txt")
    assert snapshot(out, study_copy) == before


def test_report_refuses_an_analysis_folder_as_its_output(cli, study_copy, tmp_path):
    results = tmp_path / "results"
    assert cli("analyze", study_copy / "study.h5", "--out", results, "-q")[0] == 0
    before = snapshot(results)
    code, _, err = cli("report", results, "--out", results)
    assert_refused(code, err, str(results), "not written by `cemaps report`")
    assert snapshot(results) == before


def test_personalize_overwrite_never_deletes_a_users_file(cli, study_copy, tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    (out / "mine.safetensors").write_bytes(b"precious")
    before = snapshot(out)
    for extra in ((), ("--overwrite",)):
        code, _, err = cli(
            "personalize",
            "-m",
            "lora",
            "-i",
            study_copy / "images",
            "-t",
            "sks",
            "-c",
            "mug",
            "-o",
            out,
            "--steps",
            "2",
            "-q",
            *extra,
        )
        assert_refused(code, err, str(out), "mine.safetensors")
        assert snapshot(out) == before


def test_a_new_analysis_leaves_no_stale_file_of_an_older_one(cli, study_copy, tmp_path):
    out = tmp_path / "results"
    assert cli("analyze", study_copy / "study.h5", "--out", out, "-q")[0] == 0
    # an older run that wrote a table this one does not write
    (out / "cem_old_metric.csv").write_text("stale")
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "files": [*marker["files"], "cem_old_metric.csv"]}))
    assert cli("analyze", study_copy / "study.h5", "--out", out, "-q")[0] == 0
    assert not (out / "cem_old_metric.csv").exists()
    files = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    assert files == sorted(json.loads((out / MARKER).read_text())["files"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_failed_analysis_leaves_the_earlier_results_untouched(cli, study_copy, tmp_path, monkeypatch):
    from cemaps.analysis import pipeline
    from cemaps.errors import StoreError

    out = tmp_path / "results"
    assert cli("analyze", study_copy / "study.h5", "--out", out, "-q")[0] == 0
    before = snapshot(out)

    def fail(*args, **kwargs):
        raise StoreError("planted failure after the first tables were written")

    monkeypatch.setattr(pipeline, "write_entanglement_maps", fail)
    code, _, err = cli("analyze", study_copy / "study.h5", "--out", out, "-q")
    assert_refused(code, err, "planted failure")
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    code, _, err = cli("analyze", study_copy / "study.h5", "--out", tmp_path / "fresh", "-q")
    assert_refused(code, err, "planted failure")
    assert not (tmp_path / "fresh").exists()  # never a half-written folder
