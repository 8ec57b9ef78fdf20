"""Issue 13, kind 8: nothing bad is accepted silently: an unknown CLIP architecture, a
scorer recorded that did not run, a TI token that is already a word, a store without its parts."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import assert_refused, snapshot


@pytest.mark.parametrize("name", ["ViT-Q-99", "vit-b-32", "ViT-B-32 "])
def test_an_unknown_clip_architecture_is_refused(cli, study_copy, tmp_path, name):
    before = snapshot(study_copy)
    code, _, err = cli("analyze", study_copy / "study.h5", "--out", tmp_path / "r", "--clip-model", name, "-q")
    assert_refused(code, err, f"--clip-model {name!r}", "open_clip knows", "ViT-B-32", "ViT-L-14")
    assert snapshot(study_copy) == before
    assert not (tmp_path / "r").exists()


def test_the_manifest_records_the_scorer_that_ran(analysed_results):
    manifest = json.loads((analysed_results / "manifest.json").read_text())
    assert "tiny random-weight" in manifest["clip_scorer"]
    assert "ViT-B-32" not in manifest["clip_scorer"]


@pytest.mark.parametrize("token", ["dog", "red", "a"])
def test_textual_inversion_refuses_a_token_that_is_a_word(cli, study_copy, tmp_path, token):
    before = snapshot(study_copy)
    code, _, err = cli(
        "personalize",
        "-m",
        "textual_inversion",
        "-i",
        study_copy / "images",
        "-t",
        token,
        "-c",
        "dog",
        "-o",
        tmp_path / "ti",
        "--steps",
        "2",
        "-q",
    )
    assert_refused(code, err, f"token {token!r} is already in the tokenizer")
    assert snapshot(study_copy) == before
    assert not (tmp_path / "ti").exists()


@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_a_store_without_its_parts_folder_is_an_error(cli, study_copy, tmp_path, command):
    shutil.rmtree(study_copy / "study.h5.parts")
    before = snapshot(study_copy)
    args = (
        ("inspect", study_copy / "study.h5")
        if command == "inspect"
        else ("analyze", study_copy / "study.h5", "--out", tmp_path / "r", "-q")
    )
    code, _, err = cli(*args)
    assert_refused(code, err, str(study_copy / "study.h5"), "parts folder study.h5.parts/ is missing")
    assert snapshot(study_copy) == before
    assert not (tmp_path / "r").exists()


def test_a_store_missing_one_part_file_is_an_error(cli, study_copy):
    parts = sorted((study_copy / "study.h5.parts").glob("part-*.h5"))
    parts[0].unlink()
    code, _, err = cli("inspect", study_copy / "study.h5")
    assert_refused(code, err, "part files it lists are missing", parts[0].name)
