from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from cli_helpers import SMALL, write


@pytest.fixture()
def run_cli(monkeypatch, capsys):
    """Runs the console script in-process; returns (exit code, stdout, stderr)."""
    from cemaps.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["cemaps", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture()
def cli():
    """Runs ``cemaps ARGS`` through typer's CliRunner in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from cemaps.cli import app

    def run(*args: object) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an unexpected exception is a test failure with its traceback
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture(scope="session")
def unlabelled_study(tmp_path_factory) -> Path:
    """A captured study with inline (unlabelled) prompts, the base and one 2-step LoRA: its folder.

    Holds ``study.yaml``, ``lora/`` and ``study.h5`` (+ parts). Tests copy it before changing it.
    """
    from typer.testing import CliRunner

    from cemaps.cli import app
    from cemaps.data import synthetic_subject_images

    folder = tmp_path_factory.mktemp("unlabelled")
    images = folder / "images"
    images.mkdir()
    for i, image in enumerate(synthetic_subject_images("object1", n=2, size=64)):
        image.save(images / f"{i}.png")
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "personalize",
            "-m",
            "lora",
            "-i",
            str(images),
            "-t",
            "sks",
            "-c",
            "mug",
            "-o",
            str(folder / "lora"),
            "--steps",
            "2",
            "-q",
        ],
    )
    assert trained.exit_code == 0, trained.output
    write(
        folder,
        SMALL.replace("[a red mug, freedom]", "[a red mug, freedom, a cat on a table]")
        + "store: study.h5\npersonalized:\n  - {id: lora1, method: lora, subject: object1, path: lora}\n",
    )
    captured = runner.invoke(app, ["capture", "-c", str(folder / "study.yaml"), "-q"])
    assert captured.exit_code == 0, captured.output
    return folder


@pytest.fixture()
def study_copy(unlabelled_study, tmp_path) -> Path:
    """A private copy of the unlabelled study (tests may damage it)."""
    copy = tmp_path / "study"
    shutil.copytree(unlabelled_study, copy)
    return copy


@pytest.fixture(scope="session")
def analysed_results(unlabelled_study, tmp_path_factory) -> Path:
    """`cemaps analyze` of the unlabelled study (read-only for tests: copy before changing it)."""
    from typer.testing import CliRunner

    from cemaps.cli import app

    out = tmp_path_factory.mktemp("analysed") / "results"
    result = CliRunner().invoke(app, ["analyze", str(unlabelled_study / "study.h5"), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out
