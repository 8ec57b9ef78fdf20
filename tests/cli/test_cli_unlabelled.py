"""Issue 13, kind 9: the README flow with inline (unlabelled) prompts: analyse what needs no
labels, say which questions were skipped and why, never leave a half-written results folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import assert_refused, snapshot

from cemaps.outputs import MARKER


def test_inline_prompts_are_analysed_without_labels(analysed_results):
    manifest = json.loads((analysed_results / "manifest.json").read_text())
    assert set(manifest["skipped"]) == {"abstractness", "semantic_proximity"}
    assert (
        "abstractness" in manifest["skipped"]["abstractness"] and "domain" in manifest["skipped"]["semantic_proximity"]
    )
    summary = json.loads((analysed_results / "summary.json").read_text())
    for metric in ("alignment_drop", "image_drift"):
        assert summary["abstractness"][metric] == {"not_computed": manifest["skipped"]["abstractness"]}
        for question in ("methods", "layer_linking", "clustering"):
            assert question in summary and metric in summary[question]
    # what needs no label is there: per-record disruption, attention shift, both maps
    assert len(pd.read_csv(analysed_results / "disruption.csv")) == 3
    assert (analysed_results / "attention_shift.csv").is_file()
    cem = pd.read_csv(analysed_results / "cem_image_drift.csv", header=[0, 1, 2], index_col=[0, 1, 2])
    assert cem.shape == (1, 3) and set(cem.columns.get_level_values(0)) == {"n/a"}
    listed = set(json.loads((analysed_results / MARKER).read_text())["files"])
    assert listed == {p.name for p in analysed_results.iterdir() if p.name != MARKER}


def test_skipped_questions_are_said_on_the_console(cli, study_copy, tmp_path):
    code, out, err = cli("analyze", study_copy / "study.h5", "--out", tmp_path / "r", "--n-perm", "99")
    assert code == 0, err
    assert "skipped abstractness" in err and "skipped semantic_proximity" in err
    assert out.strip() == str(tmp_path / "r")


def test_a_report_reads_the_unlabelled_results(cli, analysed_results, tmp_path):
    code, _, err = cli("report", analysed_results, "--out", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.parametrize("broken", ["table", "summary"])
def test_a_failure_leaves_no_half_written_folder(cli, study_copy, tmp_path, monkeypatch, broken):
    from cemaps.analysis import pipeline
    from cemaps.errors import StoreError

    def fail(*args, **kwargs):
        raise StoreError("planted failure")

    target = "_write_table" if broken == "table" else "to_jsonable"
    real = getattr(pipeline, target)
    calls = []

    def fail_late(*args, **kwargs):  # let a few files be written first
        calls.append(1)
        return fail() if len(calls) > 3 or broken == "summary" else real(*args, **kwargs)

    monkeypatch.setattr(pipeline, target, fail_late)
    before = snapshot(study_copy)
    code, _, err = cli("analyze", study_copy / "study.h5", "--out", tmp_path / "r", "-q")
    assert_refused(code, err, "planted failure")
    assert not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "study"] == []
    assert snapshot(study_copy) == before
