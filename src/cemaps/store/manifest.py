"""The manifest ``study.h5``: header (settings, base, provenance) and a rebuilt view of all parts.

Manifest layout (schema v1)::

    /                attrs: format="cemaps-store", schema_version (1 or 2), settings, base,
                            provenance (JSON strings), updated_at
    /models          frame group (model_id + JSON-able columns)
    /prompts         frame group (prompt_id, text, tokens, token_ids, labels...)
    /tables/<name>   frame group per model-level table
    /parts           str [P]: sealed part paths relative to the manifest's folder
    /records         compound [N]: model_id, prompt_id, seed, part, row (unique keys)
    /arrays/<name>   Virtual Dataset [rows, *trailing] concatenating /arrays/<name> of all parts
                     in /parts order; source paths are relative, and HDF5 resolves them
                     against the manifest's folder (checked in tests), so the store can move
    /offsets/<name>  int64 [N, 2]: (start, count) of record i in /arrays/<name>; (-1, 0) if absent

Everything under /parts.. /offsets is derived from the sealed files, so the manifest is
rewritten atomically (tmp file in the same folder, fsync, os.replace) after every change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from cemaps.errors import StoreError
from cemaps.store.contents import ContentsCache, StoreContents, array_schemas, record_table
from cemaps.store.frames import rows_to_frame, write_frame
from cemaps.store.layout import in_memory_h5, parts_dir, sealed_files, write_image
from cemaps.store.part_index import RECORD_DTYPE, array_path, offsets_path
from cemaps.store.schema import SCHEMA_VERSION, STORE_FORMAT, check_version, first_difference, register_filters

_MANIFEST_RECORD_DTYPE = np.dtype(
    [(n, RECORD_DTYPE.fields[n][0]) for n in RECORD_DTYPE.names] + [("part", np.int64), ("row", np.int64)]
)


@dataclass(frozen=True)
class Header:
    schema_version: int
    settings: dict
    base: dict
    provenance: dict


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_header(path: Path) -> Header:
    """Reads and validates the manifest attributes; every failure is a one-line StoreError."""
    if not path.exists():
        raise StoreError(f"{path}: no such store; expected a study.h5 written by cemaps capture")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory; expected a study.h5 file written by cemaps capture")
    try:
        with h5py.File(path, "r") as manifest:
            attrs = dict(manifest.attrs)
    except OSError as err:
        raise StoreError(
            f"{path}: not a readable HDF5 file ({_first_line(err)}); expected a store written by cemaps capture"
        ) from None
    if "format" not in attrs:
        raise StoreError(f"{path}: not a cemaps store (no format attribute); expected a file written by cemaps capture")
    if attrs["format"] != STORE_FORMAT:
        raise StoreError(
            f"{path}: format is {attrs['format']!r}; expected {STORE_FORMAT!r} (a file written by cemaps capture)"
        )
    try:
        version = int(attrs["schema_version"])
    except (KeyError, TypeError, ValueError):
        raise StoreError(
            f"{path}: schema_version attribute missing or not an integer; expected {SCHEMA_VERSION}"
        ) from None
    check_version(version, what=str(path))
    register_filters()
    try:
        settings, base, provenance = (json.loads(attrs[k]) for k in ("settings", "base", "provenance"))
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"{path}: header attribute {_first_line(err)} missing or not JSON; the manifest is damaged"
        ) from None
    return Header(version, settings, base, provenance)


def check_compatible(path: Path, stored: Header, *, settings: dict, base: dict, now: str = "now") -> None:
    """StoreError naming the first key where ``base`` or ``settings`` differ from the stored ones."""
    for what, old, new in (("base model setting", stored.base, base), ("capture setting", stored.settings, settings)):
        difference = first_difference(old, new)
        if difference is not None:
            key, old_value, new_value = difference
            raise StoreError(
                f"{path}: {what} {key!r} is {old_value} in the store but {new_value} {now}; use a new --store path"
            )


def _write_virtual_arrays(manifest: h5py.File, path: Path, contents: StoreContents, records) -> None:
    schemas = array_schemas(contents.parts)
    folder = parts_dir(path).name
    for name, schema in schemas.items():
        bases = np.zeros(len(contents.parts), dtype=np.int64)
        total = 0
        for index, part in enumerate(contents.parts):
            bases[index] = total
            total += part.rows.get(name, 0)
        layout = h5py.VirtualLayout(shape=(total, *schema.trailing), dtype=schema.dtype)
        for index, part in enumerate(contents.parts):
            rows = part.rows.get(name, 0)
            if rows:
                source = h5py.VirtualSource(
                    f"{folder}/{part.path.name}", array_path(name), shape=(rows, *schema.trailing), dtype=schema.dtype
                )
                layout[bases[index] : bases[index] + rows] = source
        dataset = manifest.create_virtual_dataset(array_path(name), layout)
        dataset.attrs["axes"] = json.dumps(list(schema.axes))
        dataset.attrs["name"] = name
        per_part = []
        for index, part in enumerate(contents.parts):
            spans = part.offsets.get(name)
            if spans is None:
                spans = np.tile(np.array([[-1, 0]], dtype=np.int64), (len(part.keys), 1))
            else:
                spans = spans.copy()
                spans[spans[:, 0] >= 0, 0] += bases[index]
            per_part.append(spans)
        all_spans = np.concatenate(per_part) if per_part else np.zeros((0, 2), dtype=np.int64)
        first_row = np.cumsum([0] + [len(p.keys) for p in contents.parts])[:-1].astype(np.int64)
        offsets = all_spans[first_row[records.part] + records.row] if len(records.part) else all_spans[:0]
        manifest.create_dataset(offsets_path(name), data=offsets)


def write_manifest(path: Path, header: Header, contents: StoreContents) -> None:
    """Builds the whole manifest in memory and atomically replaces ``path`` with it (``layout.write_image``)."""
    records = record_table(contents.parts)
    manifest = in_memory_h5()
    try:
        _fill_manifest(manifest, path, header, contents, records)
    except BaseException:
        manifest.close()
        raise
    write_image(manifest, path)


def _fill_manifest(manifest: h5py.File, path: Path, header: Header, contents: StoreContents, records) -> None:
    manifest.attrs.update(
        {
            "format": STORE_FORMAT,
            "schema_version": header.schema_version,
            "settings": json.dumps(header.settings, sort_keys=True),
            "base": json.dumps(header.base, sort_keys=True),
            "provenance": json.dumps(header.provenance, sort_keys=True),
            "updated_at": datetime.now(UTC).isoformat(),
        }
    )
    write_frame(
        manifest.create_group("models"),
        rows_to_frame(contents.models, "model_id").reset_index(),
        what=f"{path} models",
    )
    write_frame(
        manifest.create_group("prompts"),
        rows_to_frame(contents.prompts, "prompt_id").reset_index(),
        what=f"{path} prompts",
    )
    tables = manifest.create_group("tables")
    for name, frame in contents.tables.items():
        write_frame(tables.create_group(name), frame, what=f"{path} table {name!r}")
    folder = parts_dir(path).name
    manifest.create_dataset(
        "parts",
        data=np.array([f"{folder}/{p.path.name}" for p in contents.parts], dtype=object),
        dtype=h5py.string_dtype("utf-8"),
    )
    table = np.empty(len(records.part), dtype=_MANIFEST_RECORD_DTYPE)
    if len(table):
        table["model_id"] = records.frame["model_id"].to_numpy(dtype=object)
        table["prompt_id"] = records.frame["prompt_id"].to_numpy(dtype=object)
        table["seed"] = records.frame["seed"].to_numpy()
        table["part"] = records.part
        table["row"] = records.row
    manifest.create_dataset("records", data=table)
    manifest.create_group("arrays")
    manifest.create_group("offsets")
    _write_virtual_arrays(manifest, path, contents, records)


def rebuild_manifest(path: Path, header: Header, cache: ContentsCache) -> StoreContents:
    """Rewrites the manifest from the sealed files until no file appeared meanwhile.

    Another writer may seal a file between our scan and our os.replace; re-scanning after
    the replace and rewriting if the set grew makes the last rewrite hold the full union.
    """
    folder = parts_dir(path)
    for _ in range(5):
        contents = cache.scan(path)
        write_manifest(path, header, contents)
        seen = {p.path for p in contents.parts} | set(contents.metas) | set(contents.damaged)
        if set(sealed_files(folder, "part") + sealed_files(folder, "meta")) == seen:
            break
    return contents
