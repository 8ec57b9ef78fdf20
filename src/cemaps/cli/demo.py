"""``cemaps demo``: the whole pipeline on the embedded tiny model, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for models, store, results and report."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    world: str = typer.Option("tiny", "--world", help="tiny: the random-weight tiny model; toy: the trained toy world."),
) -> None:
    """Train LoRA, Textual Inversion and DreamBooth on two synthetic subjects, capture, analyse, report.

    The embedded model has random weights: the demo validates the pipeline end to end;
    its numbers are not evidence about Stable Diffusion v1.5.
    """
    from cemaps.cli.app import console
    from cemaps.cli.app import quiet_libraries

    quiet_libraries()
    from cemaps.demo import run_demo

    result = run_demo(out, progress=not no_progress, console=console, world=world)
    console.print(f"[green]done[/] in {result.seconds:.0f} s: store {result.store}, results {result.results}")
    typer.echo(str(result.report))
