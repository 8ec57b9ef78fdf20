"""``cemaps demo``: the whole pipeline on the embedded tiny model, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer

from cemaps.cli.app import one_line_errors, quiet_option


@one_line_errors
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for models, store, results and report: new, "
                             "empty, or an earlier demo's (it resumes there); any other folder is refused."),
    quiet: bool = quiet_option(),
) -> None:
    """Train LoRA, Textual Inversion and DreamBooth on two synthetic subjects, capture, analyse, report.

    The embedded model has random weights: the demo validates the pipeline end to end;
    its numbers are not evidence about Stable Diffusion v1.5.
    """
    from cemaps.cli.app import console, quiet_libraries, say
    from cemaps.outputs import check_output_folder

    check_output_folder(out, "demo", whole_folder=True)  # before anything is trained
    quiet_libraries()
    from cemaps.demo import run_demo

    result = run_demo(out, progress=not quiet, console=console)
    say("[green]done[/] in {} s: store {}, results {}", f"{result.seconds:.0f}", result.store, result.results)
    typer.echo(str(result.report))
