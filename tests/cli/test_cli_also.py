"""Issue 13, "also": --version, one quiet flag, personalize --help at 80 columns, and no pages
of library warnings from analyze."""

from __future__ import annotations

import sys
import warnings

import pytest
from typer.testing import CliRunner

from cemaps.cli import app

COMMANDS = ["capture", "personalize", "analyze", "report", "demo", "inspect", "toyworld train"]


def test_version(cli):
    from cemaps import __version__

    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"cemaps {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_one_quiet_flag(command):
    help_text = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "100"}).stdout
    assert "-q, --quiet" in help_text


@pytest.mark.parametrize("command", ["personalize", "capture", "analyze", "report", "demo", "inspect"])
def test_help_fits_80_columns(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    long = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not long, long


def _with_visible_warnings(cli, *args):
    """Runs the CLI with warnings shown as Python shows them outside pytest (pytest records them)."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        return cli(*args)


def test_analyze_prints_no_library_warnings(cli, study_copy, tmp_path):
    code, _, err = _with_visible_warnings(
        cli, "analyze", study_copy / "study.h5", "--out", tmp_path / "r", "--n-perm", "99"
    )
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 12, err
    assert not [line for line in lines if "site-packages" in line or "warnings.warn" in line], err


def test_report_prints_no_library_warnings(cli, analysed_results, tmp_path):
    code, _, err = _with_visible_warnings(cli, "report", analysed_results, "--out", tmp_path / "report")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2, err
    assert not [line for line in lines if "site-packages" in line], err


def test_report_and_inspect_take_q(cli, analysed_results, unlabelled_study, tmp_path):
    code, out, err = cli("report", analysed_results, "--out", tmp_path / "report", "-q")
    assert code == 0, err
    assert out.strip().endswith("report.html") and not err.strip(), err
    code, out, err = cli("inspect", unlabelled_study / "study.h5", "-q")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and "records" in out and "kB/record" in out, out


def test_inspect_shows_no_nan_for_the_base_models_subject(cli, unlabelled_study):
    code, out, err = cli("inspect", unlabelled_study / "study.h5", "--no-provenance")
    assert code == 0, err
    base_row = next(line for line in out.splitlines() if "│ base" in line or line.strip().startswith("base"))
    assert "nan" not in out.lower().split("provenance")[0] and " - " in base_row, out


def test_analyze_help_names_the_real_default_scorers():
    help_text = " ".join(CliRunner().invoke(app, ["analyze", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "toy world's trained CLIP for a toy-world store" in help_text
    assert "tiny random-weight CLIP for a tiny-model store" in help_text
