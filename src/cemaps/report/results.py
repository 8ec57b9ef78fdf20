"""Reads the results folder written by ``cemaps analyze`` into DataFrames, tolerating absent files.

A results folder holds ``manifest.json``, ``summary.json`` and CSV tables
(``disruption.csv``, ``cem_<metric>.csv``, ...). Only ``manifest.json`` is
required; every other absent or unreadable file becomes a note, and the figures
that need it are skipped.

Example:
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "manifest.json").write_text(json.dumps({"metrics": ["alignment_drop"]}))
    >>> results = load_results(folder)
    >>> results.metrics, "disruption" in results.tables
    (['alignment_drop'], False)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cemaps.analysis.stats.common import STRUCTURAL_ZERO, require_columns
from cemaps.errors import ConfigError

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
# table name -> default file name; manifest["files"] may point elsewhere.
TABLE_FILES = {
    "disruption": "disruption.csv",
    "disruption_by_prompt": "disruption_by_prompt.csv",
    "attention_shift": "attention_shift.csv",
    "layers": "layers.csv",
    "weight_deltas": "weight_deltas.csv",
    "similarity": "similarity.csv",
    "prompts": "prompts.csv",
    "models": "models.csv",
}
CEM_PREFIX = "cem_"
QUESTIONS = ("methods", "abstractness", "semantic_proximity", "layer_linking", "clustering")
# ids are labels, never numbers: "007" must stay "007".
ID_COLUMNS = {"model_id": str, "prompt_id": str, "subject_id": str}


@dataclass(frozen=True)
class Results:
    """Everything a report draws from one results folder.

    Attributes:
        folder: the results folder.
        manifest: parsed ``manifest.json``.
        summary: parsed ``summary.json`` ({} when absent).
        tables: table name (see ``TABLE_FILES``) -> DataFrame, for the tables present.
        cems: metric -> Concept Entanglement Map [models x prompts], 3-level row index
            (method, subject_id, model_id) and 3-level columns (abstractness, domain, prompt_id).
        files: name -> path of every data file read, for the report's data section.
        notes: one line per file that was absent or unreadable.
    """

    folder: Path
    manifest: dict[str, Any]
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    cems: dict[str, pd.DataFrame]
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        """Metric names: the manifest's list, else the metrics that have a CEM."""
        listed = self.manifest.get("metrics")
        if isinstance(listed, list) and listed:
            return [str(m) for m in listed]
        return sorted(self.cems)

    @property
    def store_path(self) -> Path | None:
        """The capture store named by the manifest (absolute, or relative to the folder)."""
        store = self.manifest.get("store")
        if not isinstance(store, str) or not store:
            return None
        path = Path(store)
        return path if path.is_absolute() else self.folder / path

    def section(self, question: str, metric: str | None = None) -> dict[str, Any] | None:
        """The summary's results for one question, for ``metric`` when they are kept per metric.

        ``summary[question]`` may hold the results directly or one entry per metric; this
        returns the entry for ``metric`` when there is one, else the whole section.
        """
        section = self.summary.get(question)
        if not isinstance(section, Mapping):
            return None
        if metric is not None and isinstance(section.get(metric), Mapping):
            return dict(section[metric])
        if metric is not None and isinstance(section.get("value"), str) and section["value"] != metric:
            return None  # results of another metric
        return dict(section)


def mentions(value: Any, needle: str) -> bool:
    """Whether any string inside a nested JSON value contains ``needle``."""
    if isinstance(value, str):
        return needle in value
    if isinstance(value, Mapping):
        return any(mentions(v, needle) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(mentions(v, needle) for v in value)
    return False


def require_table(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """Raises ConfigError naming ``name`` if ``table`` lacks ``columns`` (the statistics' own check,
    :func:`cemaps.analysis.stats.common.require_columns`) or has no rows."""
    require_columns(table, columns, name)
    if table.empty:
        raise ConfigError(f"{name}: table is empty; expected at least one row")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); expected an object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: JSON {type(value).__name__}; expected an object")
    return value


def read_cem(path: str | os.PathLike) -> pd.DataFrame:
    """A ``cem_<metric>.csv`` as written by ``write_entanglement_maps`` (3-level rows and columns)."""
    path = Path(path)
    try:
        cem = pd.read_csv(path, header=[0, 1, 2], index_col=[0, 1, 2])
    except (ValueError, IndexError, pd.errors.ParserError) as err:
        raise ConfigError(
            f"{path}: not a CEM table ({str(err).splitlines()[0]}); expected 3 header rows "
            "(abstractness, domain, prompt_id) and 3 index columns (method, subject_id, model_id)"
        ) from None
    cem.index = cem.index.set_levels([level.astype(str) for level in cem.index.levels])
    cem.columns = cem.columns.set_levels([level.astype(str) for level in cem.columns.levels])
    return cem.astype("float64")


def _table_paths(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Path]:
    listed = manifest.get("files") if isinstance(manifest.get("files"), Mapping) else {}
    paths = {name: folder / default for name, default in TABLE_FILES.items()}
    for name, relative in listed.items():
        key = str(name).removesuffix(".csv").removesuffix(".json")
        if isinstance(relative, str) and (key in TABLE_FILES or key.startswith(CEM_PREFIX)):
            paths[key] = folder / relative
    for path in folder.glob(f"{CEM_PREFIX}*.csv"):
        paths.setdefault(path.stem, path)
    return paths


def load_results(results_dir: str | os.PathLike) -> Results:
    """Reads a results folder; absent optional files become notes.

    Raises:
        ConfigError: the folder or its ``manifest.json`` is missing, or a file is malformed.
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such results folder; expected the output folder of `cemaps analyze`")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: missing; expected a results folder written by `cemaps analyze`")
    manifest = _read_json(manifest_path)
    files = {"manifest": manifest_path}
    notes: list[str] = []
    summary: dict[str, Any] = {}
    if (folder / SUMMARY).is_file():
        summary = _read_json(folder / SUMMARY)
        files["summary"] = folder / SUMMARY
    else:
        notes.append(f"{SUMMARY} is absent: no test tables")
    tables: dict[str, pd.DataFrame] = {}
    cems: dict[str, pd.DataFrame] = {}
    for name, path in _table_paths(folder, manifest).items():
        if not path.is_file():
            notes.append(f"{path.name} is absent")
            continue
        files[name] = path
        if name.startswith(CEM_PREFIX):
            cems[name.removeprefix(CEM_PREFIX)] = read_cem(path)
            continue
        try:
            tables[name] = pd.read_csv(path, dtype={c: t for c, t in ID_COLUMNS.items()})
        except (ValueError, pd.errors.ParserError) as err:
            raise ConfigError(f"{path}: not a readable CSV table ({str(err).splitlines()[0]})") from None
    return Results(
        folder=folder, manifest=manifest, summary=summary, tables=tables, cems=cems, files=files, notes=notes
    )


def find_test(obj: Any, test: str) -> dict[str, Any] | None:
    """The first test result (a dict with 'test' == ``test`` and a 'p') anywhere inside ``obj``."""
    if isinstance(obj, Mapping):
        if obj.get("test") == test and "p" in obj:
            return dict(obj)
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = find_test(child, test)
        if found is not None:
            return found
    return None


def find_records(obj: Any, columns: Sequence[str]) -> pd.DataFrame | None:
    """The first table (a list of dicts) inside ``obj`` whose records have all ``columns``."""
    if isinstance(obj, list) and obj and all(isinstance(r, Mapping) for r in obj):
        if all(c in obj[0] for c in columns):
            return pd.DataFrame.from_records(obj)
        return None
    children = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, list) else []
    for child in children:
        found = find_records(child, columns)
        if found is not None:
            return found
    return None


def prompt_texts(results: Results) -> dict[str, str]:
    """prompt_id -> text from ``prompts.csv`` ({} without it); a missing text is ''."""
    prompts = results.tables.get("prompts")
    if prompts is None or not {"prompt_id", "text"} <= set(prompts.columns):
        return {}
    return dict(zip(prompts["prompt_id"].astype(str), prompts["text"].fillna("").astype(str), strict=True))


def per_pair_disruption(results: Results, metric: str) -> pd.DataFrame | None:
    """One row per (model_id, prompt_id) with its labels and ``metric`` averaged over seeds, or None.

    From ``disruption.csv`` when present, else from ``disruption_by_prompt.csv``'s ``<metric>_mean``.
    Structural-zero pairs (bit-identical to the base twin for every seed: 0 by construction) are
    left out, as in every statistic: figures show measurements only.
    """
    labels = ["method", "subject_id", "subject_domain", "abstractness", "domain"]
    table = results.tables.get("disruption")
    if table is not None and {"model_id", "prompt_id", metric} <= set(table.columns):
        keep = [c for c in labels if c in table.columns]
        zero = {STRUCTURAL_ZERO: (STRUCTURAL_ZERO, "all")} if STRUCTURAL_ZERO in table.columns else {}
        pairs = (
            table.assign(**({STRUCTURAL_ZERO: table[STRUCTURAL_ZERO].fillna(False).astype(bool)} if zero else {}))
            .groupby(["model_id", "prompt_id"], sort=True)
            .agg(**{c: (c, "first") for c in keep}, **{metric: (metric, "mean")}, **zero)
            .reset_index()
        )
        return _measured(pairs)
    table = results.tables.get("disruption_by_prompt")
    if table is not None and {"model_id", "prompt_id", f"{metric}_mean"} <= set(table.columns):
        return _measured(table.rename(columns={f"{metric}_mean": metric}))
    return None


def _measured(pairs: pd.DataFrame) -> pd.DataFrame:
    if STRUCTURAL_ZERO not in pairs.columns:
        return pairs
    zero = pairs[STRUCTURAL_ZERO].fillna(False).astype(bool).to_numpy()
    return pairs[~zero].drop(columns=STRUCTURAL_ZERO).reset_index(drop=True)
