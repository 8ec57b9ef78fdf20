"""``cemaps analyze``: disruption metrics, Concept Entanglement Maps and statistics."""

from __future__ import annotations

from pathlib import Path

import typer

from cemaps.cli.app import one_line_errors, quiet_option


@one_line_errors
def analyze_command(
    store: Path = typer.Argument(..., help="A store written by `cemaps capture` (the .h5 manifest)."),
    out: Path = typer.Option(
        Path("results"),
        "--out",
        "-o",
        help="Results folder, written as a whole when the "
        "analysis succeeds; a folder holding other files is refused, an earlier analysis "
        "there is replaced.",
    ),
    clip_model: str = typer.Option(
        "ViT-B-32", help="open_clip architecture of the CLIP scorer, e.g. ViT-B-32 or ViT-L-14."
    ),
    clip_weights: Path = typer.Option(
        None,
        help="Local open_clip weights (.safetensors) for --clip-model. Without it: the toy world's "
        "trained CLIP for a toy-world store, a tiny random-weight CLIP for a tiny-model store, else "
        "--clip-model's weights from the local Hugging Face cache.",
    ),
    subjects: str = typer.Option(
        "subjects15",
        help="Subject definitions: subjects15, toyworld or a CSV/YAML file (subject_id, kind, descriptor, class_word).",
    ),
    n_perm: int = typer.Option(9999, min=99, help="Permutations for the semantic-proximity tests."),
    quiet: bool = quiet_option(),
) -> None:
    """Measure disruption of every personalized record against its base twin and test the study's questions.

    Writes tidy tables (CSV, Parquet), the Concept Entanglement Maps (CSV + HDF5) and
    summary.json with every statistical test; `cemaps report` reads the folder.
    """
    from cemaps.analysis.pipeline import check_clip_model
    from cemaps.cli.app import library_warnings_counted, quiet_libraries
    from cemaps.outputs import check_output_folder

    check_output_folder(out, "analyze")  # before any model or store is opened
    check_clip_model(clip_model)
    quiet_libraries()
    from cemaps.analysis.pipeline import run_analysis

    with library_warnings_counted(quiet, "summary.json says which tests could not run"):
        summary = run_analysis(
            store,
            out,
            clip_model=clip_model,
            clip_weights=clip_weights,
            subjects=subjects,
            n_perm=n_perm,
            progress=not quiet,
        )
    typer.echo(str(summary.parent))
