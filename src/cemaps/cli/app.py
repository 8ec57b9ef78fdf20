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
    import os

    from cemaps.errors import CemapsError

    # cemaps draws its own progress bars; the hub's per-file bars would interleave with them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()  # click handles usage errors itself (exit 2) and exits 0 on success
    except CemapsError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


def quiet_libraries() -> None:
    """Silence diffusers/transformers' own loading bars in the CLI (cemaps shows rich progress instead)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
