"""`cemaps --help` is fast to reach and every command explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["capture", "personalize", "analyze", "report", "demo", "inspect"]


def test_top_level_help_lists_every_command(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(run_cli, command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and "Usage" in out and len(out.splitlines()) > 5


def test_help_does_not_import_torch():
    code = "import sys; from cemaps.cli import app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_personalize_help_matches_the_trainer_defaults():
    from cemaps.cli import personalize as cli
    from cemaps.models.train import METHOD_DEFAULTS

    assert cli.METHODS_HELP == ", ".join(METHOD_DEFAULTS)
    assert cli.STEPS_HELP == ", ".join(f"{m} {d.steps}" for m, d in METHOD_DEFAULTS.items())
    assert cli.LEARNING_RATE_HELP == ", ".join(f"{m} {d.learning_rate:g}" for m, d in METHOD_DEFAULTS.items())


def test_unknown_command_exits_2(run_cli):
    code, _, err = run_cli("frobnicate")
    assert code == 2


def test_report_without_results_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("report", tmp_path / "nothing")
    assert code == 2 and "no manifest.json" in err
