from __future__ import annotations

import sys

import pytest


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
