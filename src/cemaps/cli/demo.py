"""``cemaps demo``: the whole pipeline on the trained toy world (or the tiny model), in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer

from cemaps.cli.app import one_line_errors, quiet_option


@one_line_errors
def demo_command(
    out: Path = typer.Option(
        Path("demo-out"),
        "--out",
        "-o",
        help="Folder for models, store, results and report: new, "
        "empty, or an earlier demo's (it resumes there); any other folder is refused.",
    ),
    quiet: bool = quiet_option(),
    world: str = typer.Option("toy", "--world", help="toy: the trained toy world; tiny: the random-weight tiny model."),
) -> None:
    """Train LoRA, Textual Inversion and DreamBooth on toy subjects, capture, analyse, report.

    By default on the trained toy world (--world tiny: the random-weight tiny model); its
    numbers are about that small model, not evidence about Stable Diffusion v1.5.
    """
    from cemaps.cli.app import console, quiet_libraries, say
    from cemaps.outputs import check_output_folder

    check_output_folder(out, "demo", whole_folder=True)  # before anything is trained
    quiet_libraries()
    from cemaps.demo import run_demo

    result = run_demo(out, progress=not quiet, console=console, world=world)
    say("[green]done[/] in {} s: store {}, results {}", f"{result.seconds:.0f}", result.store, result.results)
    typer.echo(str(result.report))
