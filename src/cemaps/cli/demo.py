"""``cemaps demo``: the whole pipeline on the trained toy world (or the tiny model), in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for models, store, results and report."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    world: str = typer.Option("toy", "--world", help="toy: the trained toy world; tiny: the random-weight tiny model."),
) -> None:
    """Train LoRA, Textual Inversion and DreamBooth on toy subjects, capture, analyse, report.

    By default on the trained toy world (--world tiny: the random-weight tiny model); its
    numbers are about that small model, not evidence about Stable Diffusion v1.5.
    """
    from cemaps.cli.app import console
    from cemaps.cli.app import quiet_libraries

    quiet_libraries()
    from cemaps.demo import run_demo

    result = run_demo(out, progress=not no_progress, console=console, world=world)
    console.print(f"[green]done[/] in {result.seconds:.0f} s: store {result.store}, results {result.results}")
    typer.echo(str(result.report))
