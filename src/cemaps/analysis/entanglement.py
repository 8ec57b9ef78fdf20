"""Concept Entanglement Maps: one metric laid out as personalized models x prompts.

Rows are models labelled (method, subject_id, model_id); columns are prompts labelled
(abstractness, domain, prompt_id); both sorted, so methods, subjects and prompt
categories form contiguous blocks in a heat map. Maps are saved as CSV (one per
metric, for people) and together in one HDF5 file (for programs).

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"model_id": ["lora-mug", "ti-mug"], "method": ["lora", "ti"],
    ...                       "subject_id": ["mug", "mug"], "prompt_id": ["p1", "p1"],
    ...                       "abstractness": ["concrete"] * 2, "domain": ["object"] * 2,
    ...                       "alignment_drop": [2.5, 0.5]})
    >>> entanglement_map(table, "alignment_drop").shape
    (2, 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cemaps.errors import ConfigError, StoreError

ROW_LEVELS = ("method", "subject_id", "model_id")
COLUMN_LEVELS = ("abstractness", "domain", "prompt_id")
# Missing labels (e.g. a prompt without a domain) become this, so no row or column is dropped.
UNLABELLED = "n/a"
MAPS_FILE = "entanglement_maps.h5"
_FORMAT = "cemaps-entanglement-maps"
_STR = h5py.string_dtype("utf-8")


def entanglement_map(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as a models x prompts matrix.

    Args:
        table: rows with model_id, prompt_id, method, subject_id, abstractness, domain and
            ``metric`` (e.g. :func:`cemaps.analysis.disruption.aggregate_over_seeds` joined
            with ``store.models`` and ``store.prompts``). Several rows per (model, prompt),
            e.g. one per seed, are averaged.
        metric: the column to lay out, e.g. ``"alignment_drop"``.

    Returns:
        float64 DataFrame; index MultiIndex (method, subject_id, model_id), columns
        MultiIndex (abstractness, domain, prompt_id), both sorted; NaN where a
        (model, prompt) pair has no value.
    """
    if not isinstance(metric, str) or metric not in table.columns:
        raise ConfigError(f"metric {metric!r} is not a column of the table; columns are {list(table.columns)}")
    missing = [c for c in (*ROW_LEVELS, *COLUMN_LEVELS) if c not in table.columns]
    if missing:
        raise ConfigError(
            f"table lacks label column(s) {missing}; join model and prompt labels first "
            "(aggregate_over_seeds(..., models=store.models, prompts=store.prompts))"
        )
    if not pd.api.types.is_numeric_dtype(table[metric]):
        raise ConfigError(f"metric column {metric!r} has dtype {table[metric].dtype}; expected numbers")
    for key, levels in (("model_id", ROW_LEVELS), ("prompt_id", COLUMN_LEVELS)):
        labels_per_key = table.groupby(key)[list(levels[:-1])].nunique(dropna=False)
        ambiguous = labels_per_key.index[(labels_per_key > 1).any(axis=1)]
        if len(ambiguous):
            raise ConfigError(
                f"{key} {ambiguous[0]!r} has more than one {'/'.join(levels[:-1])} label; expected one label per id"
            )
    labelled = table[[*ROW_LEVELS, *COLUMN_LEVELS, metric]].copy()
    for level in (*ROW_LEVELS, *COLUMN_LEVELS):
        labelled[level] = labelled[level].astype("string").fillna(UNLABELLED).astype(str)
    matrix = labelled.pivot_table(
        index=list(ROW_LEVELS), columns=list(COLUMN_LEVELS), values=metric, aggfunc="mean", dropna=False, observed=True
    )
    matrix = _complete_grid(labelled, matrix).astype(np.float64)
    matrix.columns.name = None
    return matrix.sort_index(axis=0).sort_index(axis=1)


def _complete_grid(labelled: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """Every model and prompt of the table appears once, even if all its values were NaN."""
    rows = pd.MultiIndex.from_frame(labelled[list(ROW_LEVELS)].drop_duplicates())
    columns = pd.MultiIndex.from_frame(labelled[list(COLUMN_LEVELS)].drop_duplicates())
    return matrix.reindex(index=rows, columns=columns)


def write_entanglement_maps(maps: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes each map to ``cem_<metric>.csv`` and all of them to one ``entanglement_maps.h5``.

    HDF5 layout: ``/<metric>/values`` float64 [models, prompts], ``/<metric>/rows`` str
    [models, 3] (method, subject_id, model_id), ``/<metric>/columns`` str [prompts, 3]
    (abstractness, domain, prompt_id); level names in the datasets' ``levels`` attribute.
    Every file is written under a temporary name and renamed, so a crash leaves no half file.

    Args:
        maps: metric name -> map from :func:`entanglement_map`.
        out_dir: folder to write into (created if absent).

    Returns:
        ``{"<metric>": csv path, ..., "h5": the HDF5 path}``.
    """
    if not maps:
        raise ConfigError("maps is empty; expected at least one metric -> entanglement map")
    for metric, frame in maps.items():
        if not isinstance(metric, str) or not metric or "/" in metric or metric != metric.strip():
            raise ConfigError(f"metric name {metric!r}; expected a non-empty name without '/' (it names files)")
        if not isinstance(frame, pd.DataFrame) or frame.index.nlevels != 3 or frame.columns.nlevels != 3:
            raise ConfigError(
                f"map {metric!r} is not an entanglement_map() result; expected 3-level row and column labels"
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for metric, frame in maps.items():
        path = out_dir / f"cem_{metric}.csv"
        _atomic_write(path, lambda tmp, frame=frame: frame.to_csv(tmp))
        written[metric] = path
    h5_path = out_dir / MAPS_FILE
    _atomic_write(h5_path, lambda tmp: _write_h5(tmp, maps))
    written["h5"] = h5_path
    return written


def _write_h5(path: Path, maps: Mapping[str, pd.DataFrame]) -> None:
    with h5py.File(path, "w") as file:
        file.attrs["format"] = _FORMAT
        for metric, frame in maps.items():
            group = file.create_group(metric)
            group.create_dataset("values", data=frame.to_numpy(dtype=np.float64))
            for name, index in (("rows", frame.index), ("columns", frame.columns)):
                labels = np.array([[str(v) for v in key] for key in index], dtype=object).reshape(len(index), 3)
                dataset = group.create_dataset(name, data=labels, dtype=_STR)
                dataset.attrs["levels"] = [str(level) for level in index.names]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_entanglement_maps(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Reads every map from an ``entanglement_maps.h5`` written by :func:`write_entanglement_maps`.

    Returns:
        metric -> DataFrame with the same labels and values as written.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such entanglement maps file; expected {MAPS_FILE} from write_entanglement_maps")
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != _FORMAT:
                raise StoreError(f"{path}: format {file.attrs.get('format')!r}; expected {_FORMAT!r}")
            return {metric: _read_map(file[metric]) for metric in file}
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from None


def _read_map(group: h5py.Group) -> pd.DataFrame:
    labels = {}
    for name in ("rows", "columns"):
        dataset = group[name]
        tuples = [tuple(row) for row in dataset.asstr()[()].reshape(-1, 3).tolist()]
        labels[name] = pd.MultiIndex.from_tuples(tuples, names=list(dataset.attrs["levels"]))
    return pd.DataFrame(group["values"][()], index=labels["rows"], columns=labels["columns"])
