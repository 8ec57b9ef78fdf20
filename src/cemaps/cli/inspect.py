"""``cemaps inspect``: what a store holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def inspect_command(
    store: Path = typer.Argument(..., help="A store written by `cemaps capture` (the .h5 manifest)."),
    provenance: bool = typer.Option(True, help="Print provenance (package versions, settings)."),
) -> None:
    """Print a store's models, prompts, records, arrays with their shapes, size on disk and provenance."""
    from cemaps.store import open_store

    out = Console(width=None if sys.stdout.isatty() else 200)
    with open_store(store) as reader:
        records = reader.records
        out.print(f"[bold]{store}[/]  schema v{reader.schema_version}  {len(records)} records  "
                  f"{reader.size_on_disk() / 1e6:.2f} MB on disk "
                  f"({reader.size_on_disk() / max(len(records), 1) / 1e3:.1f} kB/record)")
        models = Table("model", "method", "subject", "records", title="models")
        counts = records.groupby("model_id").size() if len(records) else {}
        for model_id, row in reader.models.iterrows():
            models.add_row(str(model_id), str(row.get("method")), str(row.get("subject_id")), str(int(counts.get(model_id, 0))))
        out.print(models)
        prompts = reader.prompts
        out.print(f"prompts: {len(prompts)}; seeds: {sorted(set(records['seed'])) if len(records) else []}")
        arrays = Table("array", "axes", "per-record shape (first axis ragged)", "dtype", title="arrays")
        for name in reader.array_names:
            shape = ("n", *reader.trailing_shape(name))
            arrays.add_row(name, ", ".join(reader.axes(name)), " x ".join(map(str, shape)), str(reader.dtype(name)) if hasattr(reader, "dtype") else "")
        out.print(arrays)
        if provenance:
            out.print("[bold]settings[/]", json.dumps(reader.settings, indent=1, default=str))
            out.print("[bold]base[/]", json.dumps(reader.base, default=str))
            out.print("[bold]provenance[/]", json.dumps(reader.provenance, indent=1, default=str))
