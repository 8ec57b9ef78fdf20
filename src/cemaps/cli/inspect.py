"""``cemaps inspect``: what a store holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cemaps.cli.app import one_line_errors


@one_line_errors
def inspect_command(
    store: Path = typer.Argument(..., help="A store written by `cemaps capture` (the .h5 manifest)."),
    provenance: bool = typer.Option(True, help="Print provenance (package versions, settings)."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Read every chunk of every part file and check it (checksums, digests, settings); "
        "print one line per damaged part and record and exit 1 if any.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", "--no-progress", help="Print only the first line (records and size on disk)."
    ),
) -> None:
    """Print a store's models, prompts, records, arrays with their shapes, size on disk and provenance."""
    from cemaps.store import open_store

    if verify:
        _verify(store)
        return

    out = Console(width=None if sys.stdout.isatty() else 200)
    with open_store(store) as reader:
        records = reader.records
        out.print(
            f"[bold]{escape(str(store))}[/]  schema v{reader.schema_version}  {len(records)} records  "
            f"{reader.size_on_disk() / 1e6:.2f} MB on disk "
            f"({reader.size_on_disk() / max(len(records), 1) / 1e3:.1f} kB/record)"
        )
        if quiet:
            return
        models = Table("model", "method", "subject", "records", title="models")
        counts = records.groupby("model_id").size() if len(records) else {}
        for model_id, row in reader.models.iterrows():
            models.add_row(
                *(_cell(v) for v in (model_id, row.get("method"), row.get("subject_id"), int(counts.get(model_id, 0))))
            )
        out.print(models)
        prompts = reader.prompts
        seeds = sorted(set(records["seed"])) if len(records) else []
        out.print(f"prompts: {len(prompts)}; seeds: {escape(str(seeds))}")
        arrays = Table("array", "axes", "per-record shape (first axis ragged)", "dtype", title="arrays")
        for name in reader.array_names:
            shape = ("n", *reader.trailing_shape(name))
            arrays.add_row(
                *(
                    escape(v)
                    for v in (
                        name,
                        ", ".join(reader.axes(name)),
                        " x ".join(map(str, shape)),
                        str(reader.dtype(name)) if hasattr(reader, "dtype") else "",
                    )
                )
            )
        out.print(arrays)
        if provenance:
            for title, value, indent in (
                ("settings", reader.settings, 1),
                ("base", reader.base, None),
                ("provenance", reader.provenance, 1),
            ):
                out.print(f"[bold]{title}[/]", escape(json.dumps(value, indent=indent, default=str)), highlight=False)


def _verify(store: Path) -> None:
    """``inspect --verify``: a line per damaged file and record on stdout; exit 1 when there is damage."""
    from cemaps.store.verify import verify_store

    result = verify_store(store)
    lines = result.lines()
    for line in lines:
        typer.echo(f"damaged: {line}")
    parts = sum(1 for f in result.files if f.path.name.startswith("part-"))
    if lines:
        typer.echo(
            f"{store}: {len(result.damaged)} of {len(result.files)} sealed files damaged; move them out of the "
            "parts folder (or run `cemaps capture --set-aside-damaged`) and rerun capture to remake their records"
        )
        raise typer.Exit(code=1)
    typer.echo(f"{store}: verified {parts} part files and {len(result.files) - parts} meta files: no damage")


def _cell(value: object) -> str:
    """A table cell: the value as text, "-" where there is none (the base model has no subject: NaN in pandas)."""
    import pandas as pd

    return "-" if value is None or (not isinstance(value, str) and pd.isna(value)) else escape(str(value))
