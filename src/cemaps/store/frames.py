"""DataFrames <-> HDF5 groups, one dataset per column, readable with plain h5py.

Numeric and boolean columns keep their numpy dtype; all-string columns become UTF-8
string datasets; anything else (lists such as prompt ``tokens``, mixed values, missing
values in non-float columns) is stored one JSON string per row with attr
``encoding="json"``. The column order is the group attr ``columns`` (JSON list).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd

from cemaps.errors import StoreError
from cemaps.store.schema import to_json

_STR = h5py.string_dtype("utf-8")


def check_column_name(name: object, *, what: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in {".", ".."}:
        raise StoreError(f"{what}: column name {name!r}; expected a non-empty string without '/'")
    return name


def write_frame(group: h5py.Group, frame: pd.DataFrame, *, what: str) -> None:
    """Writes ``frame`` (index dropped) into the empty ``group``."""
    columns = [check_column_name(c, what=what) for c in frame.columns]
    group.attrs["columns"] = json.dumps(columns)
    group.attrs["n_rows"] = len(frame)
    for name in columns:
        series = frame[name]
        dtype = series.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            group.create_dataset(name, data=series.to_numpy())
        elif len(series) and all(isinstance(v, str) for v in series):
            group.create_dataset(name, data=np.array(list(series), dtype=object), dtype=_STR)
        else:
            values = [None if v is pd.NA or v is pd.NaT else v for v in series.tolist()]
            encoded = [to_json(v, what=f"{what} column {name!r}") for v in values]
            dataset = group.create_dataset(name, data=np.array(encoded, dtype=object), dtype=_STR)
            dataset.attrs["encoding"] = "json"


def read_frame(group: h5py.Group) -> pd.DataFrame:
    """Reads a frame written by :func:`write_frame` (default RangeIndex)."""
    columns = json.loads(group.attrs["columns"])
    data: dict[str, object] = {}
    for name in columns:
        dataset = group[name]
        if dataset.attrs.get("encoding") == "json":
            data[name] = [json.loads(v) for v in dataset.asstr()[()]]
        elif h5py.check_string_dtype(dataset.dtype) is not None:
            data[name] = list(dataset.asstr()[()])
        else:
            data[name] = dataset[()]
    frame = pd.DataFrame(data, columns=columns)
    if not columns:
        frame = pd.DataFrame(index=range(int(group.attrs.get("n_rows", 0))))
    return frame


def rows_to_frame(rows: list[dict], key: str) -> pd.DataFrame:
    """Rows of JSON values -> DataFrame indexed by ``key`` (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    frame = pd.DataFrame({c: pd.Series([row.get(c) for row in rows], dtype=object) for c in columns}, columns=columns)
    frame = frame.infer_objects()
    if key not in frame.columns:
        frame[key] = pd.Series([], dtype=object)
    return frame.set_index(key)


def frame_row_keys(frame: pd.DataFrame, *, what: str) -> list[str]:
    """A canonical JSON string per row, to drop rows that are already stored (idempotent appends)."""
    records = frame.to_dict(orient="records")
    return [to_json(row, what=what) for row in records]
