"""``cemaps report``: figures and the self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from cemaps.cli.app import library_warnings_counted, one_line_errors, quiet_option


@one_line_errors
def report_command(
    results: Path = typer.Argument(Path("results"), help="The folder `cemaps analyze` wrote."),
    out: Path = typer.Option(
        Path("report"),
        "--out",
        "-o",
        help="Report folder: report.html and figures/ (PNG + SVG). "
        "A folder holding other files is refused; an earlier report there is replaced.",
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Draw every figure (PNG and SVG) and write one self-contained, offline HTML report."""
    from cemaps.errors import ConfigError
    from cemaps.outputs import check_output_folder, staged_output
    from cemaps.report import write_report

    if not (results / "manifest.json").is_file():
        raise ConfigError(f"{results}: no manifest.json; expected a folder written by `cemaps analyze`")
    check_output_folder(out, "report")
    with staged_output(out, "report") as staging, library_warnings_counted(quiet, "figures were still drawn"):
        written = Path(write_report(results, staging))
    typer.echo(str(out / written.relative_to(staging)))
