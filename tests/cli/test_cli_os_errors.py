"""Issue 13, kind 4: operating-system errors (a folder that cannot be written, an output path
that is an existing file) are one line naming the path, found before any work is done."""

from __future__ import annotations

import pytest
from cli_helpers import SMALL, assert_refused, read_only_folder, snapshot, write


@pytest.fixture()
def results(analysed_results):
    return analysed_results


def _commands(study, results, out):
    images = study / "images"
    return {
        "capture": ("capture", "-c", study / "study.yaml", "--store", out / "s.h5", "-q"),
        "analyze": ("analyze", study / "study.h5", "--out", out / "results", "-q"),
        "report": ("report", results, "--out", out / "report"),
        "personalize": (
            "personalize",
            "-m",
            "lora",
            "-i",
            images,
            "-t",
            "sks",
            "-c",
            "mug",
            "-o",
            out / "w",
            "--steps",
            "2",
            "-q",
        ),
        "demo": ("demo", "--out", out / "demo", "-q"),
    }


@pytest.mark.parametrize("command", ["capture", "analyze", "report", "personalize", "demo"])
def test_a_read_only_output_folder_is_one_line(cli, study_copy, results, tmp_path, command):
    with read_only_folder(tmp_path / "locked") as locked:
        before = snapshot(study_copy, results)
        code, _, err = cli(*_commands(study_copy, results, locked)[command])
        assert_refused(code, err, str(locked), "expected a folder this user can write to")
        assert snapshot(study_copy, results) == before
        assert not any(locked.iterdir())


@pytest.mark.parametrize("command", ["analyze", "report", "personalize", "demo"])
def test_an_output_path_that_is_a_file_is_one_line(cli, study_copy, results, tmp_path, command):
    dest = tmp_path / "dest"
    dest.mkdir()
    args = list(_commands(study_copy, results, dest)[command])
    target = next(args[i + 1] for i, a in enumerate(args) if a in ("--out", "-o"))
    target.write_text("a file of the user's")
    before = snapshot(study_copy, results, target)
    code, _, err = cli(*args)
    assert_refused(code, err, str(target), "is an existing file")
    assert snapshot(study_copy, results, target) == before


def test_a_store_below_a_file_is_one_line(cli, tmp_path):
    config = write(tmp_path, SMALL)
    (tmp_path / "notes").write_text("x")
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "--store", tmp_path / "notes" / "s.h5", "-q")
    assert_refused(code, err, "notes", "is a file")
    assert snapshot(tmp_path) == before


def test_an_os_error_inside_a_command_is_one_line(cli, tmp_path, monkeypatch):
    """The safety net: an OSError that no check foresaw still becomes one line naming its path."""
    from cemaps.cli import inspect as inspect_cli

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "s.h5"))

    monkeypatch.setattr("cemaps.store.open_store", refuse)
    assert inspect_cli  # the command imports open_store when it runs
    code, _, err = cli("inspect", tmp_path / "s.h5")
    assert_refused(code, err, str(tmp_path / "s.h5"), "Permission denied")
