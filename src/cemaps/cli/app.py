"""The typer app and the one-line error rule shared by every command."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="cemaps",
    help="Concept Entanglement Maps: capture cross-attention from base and personalized diffusion models, "
    "measure what personalization disrupts, and report it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def main() -> None:
    """Console-script entry point: user errors are one line on stderr and exit code 2."""
    from cemaps.errors import CemapsError

    try:
        app(standalone_mode=False)
    except CemapsError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[bold red]interrupted[/]: completed records are kept; rerun the same command to resume")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
