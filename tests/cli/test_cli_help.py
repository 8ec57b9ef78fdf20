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


def test_personalize_options_are_the_train_settings_fields_with_their_defaults():
    import inspect

    from cemaps.cli.personalize import personalize_command
    from cemaps.models.train import METHOD_DEFAULTS
    from cemaps.models.train_settings import TrainSettings, cli_fields, cli_help

    options = inspect.signature(personalize_command).parameters
    fields = {f.name: f for f in cli_fields()}
    assert len(fields) == 14 and set(fields) <= set(options)
    assert {name: options[name].default.default for name in fields} == {
        name: getattr(TrainSettings(method="lora", steps=1, learning_rate=1.0), name)
        if name not in ("steps", "learning_rate")
        else None
        for name in fields
    }
    assert cli_help(fields["steps"]).endswith(
        "(default per method: " + ", ".join(f"{m} {d.steps}" for m, d in METHOD_DEFAULTS.items()) + ")."
    )
    assert ", ".join(f"{m} {d.learning_rate:g}" for m, d in METHOD_DEFAULTS.items()) in cli_help(
        fields["learning_rate"]
    )


def test_unknown_command_exits_2(run_cli):
    code, _, err = run_cli("frobnicate")
    assert code == 2


def test_report_without_results_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("report", tmp_path / "nothing")
    assert code == 2 and "no manifest.json" in err
