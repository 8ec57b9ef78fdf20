"""The typer app and the one-line error rule shared by every command."""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="cemaps",
    help="Concept Entanglement Maps: capture cross-attention from base and personalized diffusion models, "
    "measure what personalization disrupts, and report it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold literal brackets, e.g. "[inline, list]"
)
console = Console(stderr=True)

QUIET_HELP = "No progress bars or status lines (errors are still printed)."


def quiet_option() -> bool:
    """The one quiet flag of every command: ``--quiet`` / ``-q`` (``--no-progress`` is accepted too)."""
    return typer.Option(False, "--quiet", "-q", "--no-progress", help=QUIET_HELP)


def _version(value: bool) -> None:
    if value:
        from cemaps.version import __version__

        typer.echo(f"cemaps {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Concept Entanglement Maps: capture cross-attention from base and personalized diffusion models,
    measure what personalization disrupts, and report it."""
    from cemaps.toyworld import register

    register()  # the bundled toy world's alias, scorer, tables and report section (no heavy import)


def print_error(message: str) -> None:
    """One ``error:`` line on stderr; the message is printed literally (brackets in paths or shapes stay)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def say(markup: str, *values: object) -> None:
    """A status line on stderr: ``markup`` is the command's own rich markup, ``values`` user text
    (paths, ids) filled into its ``{}`` slots literally."""
    console.print(markup.format(*(escape(str(v)) for v in values)), highlight=False, soft_wrap=True)


def one_line_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Wraps a command so that a user error is one literal ``error:`` line and exit code 2.

    Done inside the app (not only in :func:`main`), so ``typer.testing.CliRunner`` and
    ``python -m cemaps`` behave alike.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from cemaps.errors import CemapsError, one_line
        from cemaps.outputs import os_error_message

        try:
            command(*args, **kwargs)
        except CemapsError as exc:
            print_error(one_line(exc))
            raise typer.Exit(code=2) from None
        except OSError as exc:  # a folder that cannot be written, a file where a folder is needed, a full disk
            print_error(os_error_message(exc))
            raise typer.Exit(code=2) from None

    return run


@contextlib.contextmanager
def library_warnings_counted(quiet: bool, hint: str) -> Iterator[None]:
    """Library warnings inside the block are counted in one line, not printed one by one; cemaps'
    own warnings are printed once each.

    Small studies make scipy, statsmodels, sklearn and matplotlib warn (constant input, few
    groups, flat axes) once per test or figure: pages of text a user cannot act on.
    """
    package = str(Path(__file__).resolve().parents[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    own = list(dict.fromkeys(str(w.message) for w in caught if str(w.filename).startswith(package)))
    others = [w for w in caught if not str(w.filename).startswith(package)]
    for message in own:
        say("[yellow]warning[/]: {}", message)
    if others and not quiet:
        kinds = sorted({w.category.__name__ for w in others})
        say("[dim]{} library warnings ({}); {}[/]", len(others), ", ".join(kinds), hint)


def main() -> None:
    """Console-script entry point: user errors are one line on stderr and exit code 2."""
    import os

    from cemaps.errors import CemapsError, one_line
    from cemaps.outputs import os_error_message

    # cemaps draws its own progress bars; the hub's per-file bars would interleave with them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()  # click handles usage errors itself (exit 2) and exits 0 on success
    except CemapsError as exc:
        print_error(one_line(exc))
        sys.exit(2)
    except OSError as exc:  # a folder that cannot be written, a file where a folder is needed, a full disk
        print_error(os_error_message(exc))
        sys.exit(2)


def quiet_libraries() -> None:
    """Silence diffusers/transformers' loading bars and the library warnings a CLI user cannot act on."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
