"""The union of a store's sealed files: records, array schemas, models, prompts, tables.

Both the manifest rebuild and the reader derive everything from this union, so whatever
the order in which writers seal files and rewrite the manifest, they converge.
Sealed files are immutable, so a :class:`ContentsCache` reads each one only once.

Meta file layout (schema v1)::

    /                 attrs: format="cemaps-store-meta", schema_version, writer_tag
    /models           str [k]: one JSON object per model row
    /prompts          str [k]: one JSON object per prompt row
    /tables/<name>    a frame group (see frames.py): rows appended to model-level table <name>
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cemaps.errors import StoreError
from cemaps.store.frames import frame_row_keys, read_frame
from cemaps.store.integrity import IDENTITY_ATTR, check_identity
from cemaps.store.layout import parts_dir, sealed_files
from cemaps.store.part_index import ArraySchema, DamagedPartError, PartIndex, RecordKey, read_part_index
from cemaps.store.schema import META_FORMAT


@dataclass(frozen=True)
class MetaContent:
    models: list[dict]
    prompts: list[dict]
    tables: dict[str, pd.DataFrame]


@dataclass(frozen=True)
class RecordTable:
    """Unique records in stable order (part name, then row); first occurrence of a key wins."""

    frame: pd.DataFrame  # columns record, model_id, prompt_id, seed
    part: np.ndarray  # int64 [N]: index into StoreContents.parts
    row: np.ndarray  # int64 [N]: row inside that part
    duplicates: int  # rows dropped because their key came earlier


@dataclass(frozen=True)
class StoreContents:
    parts: list[PartIndex]
    metas: list[Path]
    models: list[dict]
    prompts: list[dict]
    tables: dict[str, pd.DataFrame]
    damaged: dict[Path, str] = field(default_factory=dict)  # sealed file -> why it cannot be read


def read_meta(path: Path, expected_identity: dict | None = None) -> MetaContent:
    try:
        with h5py.File(path, "r") as meta:
            if meta.attrs.get("format") != META_FORMAT:
                raise StoreError(f"{path}: not a cemaps store meta file (format attribute missing or wrong)")
            check_identity(path, meta.attrs.get(IDENTITY_ATTR), expected_identity)
            models = [json.loads(v) for v in meta["models"].asstr()[()]] if "models" in meta else []
            prompts = [json.loads(v) for v in meta["prompts"].asstr()[()]] if "prompts" in meta else []
            tables = {name: read_frame(group) for name, group in meta["tables"].items()} if "tables" in meta else {}
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedPartError(f"{path}: damaged store meta file ({message})") from None
    return MetaContent(models, prompts, tables)


def _first_by_id(rows: list[dict], key: str) -> list[dict]:
    seen: dict[str, dict] = {}
    for row in rows:
        seen.setdefault(row[key], row)
    return list(seen.values())


def _append_tables(into: dict[str, pd.DataFrame], seen: dict[str, set[str]], tables: dict[str, pd.DataFrame]) -> None:
    for name, frame in tables.items():
        keys = frame_row_keys(frame, what=f"table {name!r}")
        known = seen.setdefault(name, set())
        fresh = [i for i, k in enumerate(keys) if k not in known]
        known.update(keys)
        part = frame.iloc[fresh]
        into[name] = part if name not in into else pd.concat([into[name], part], ignore_index=True)


@dataclass
class ContentsCache:
    """Indexes of sealed files already read (they never change).

    Attributes:
        identity: the store's settings and base (``integrity.identity``); a sealed file written
            under another one is a StoreError naming it. None: not checked.
        damaged: sealed files found damaged (path -> one-line reason); the scan leaves them out,
            so the rest of the store stays readable.
    """

    parts: dict[Path, PartIndex] = field(default_factory=dict)
    metas: dict[Path, MetaContent] = field(default_factory=dict)
    identity: dict | None = None
    damaged: dict[Path, str] = field(default_factory=dict)

    def _read(self, path: Path, into: dict, reader) -> None:
        if path in into or path in self.damaged:
            return
        try:
            into[path] = reader(path, self.identity)
        except DamagedPartError as err:
            self.damaged[path] = str(err)

    def scan(self, store_path: Path) -> StoreContents:
        folder = parts_dir(store_path)
        on_disk = {"part": sealed_files(folder, "part"), "meta": sealed_files(folder, "meta")}
        for path in on_disk["part"]:
            self._read(path, self.parts, read_part_index)
        for path in on_disk["meta"]:
            self._read(path, self.metas, read_meta)
        part_paths = [p for p in on_disk["part"] if p in self.parts]
        meta_paths = [p for p in on_disk["meta"] if p in self.metas]
        listed = set(on_disk["part"] + on_disk["meta"])
        models: list[dict] = []
        prompts: list[dict] = []
        tables: dict[str, pd.DataFrame] = {}
        seen_rows: dict[str, set[str]] = {}
        for path in meta_paths:
            meta = self.metas[path]
            models.extend(meta.models)
            prompts.extend(meta.prompts)
            _append_tables(tables, seen_rows, meta.tables)
        return StoreContents(
            [self.parts[p] for p in part_paths],
            meta_paths,
            _first_by_id(models, "model_id"),
            _first_by_id(prompts, "prompt_id"),
            {name: tables[name].reset_index(drop=True) for name in sorted(tables)},
            {path: why for path, why in self.damaged.items() if path in listed},
        )


def array_schemas(parts: list[PartIndex]) -> dict[str, ArraySchema]:
    """name -> schema over all parts (sorted by name); StoreError if two parts disagree."""
    schemas: dict[str, ArraySchema] = {}
    origin: dict[str, Path] = {}
    for part in parts:
        for name, schema in part.schemas.items():
            known = schemas.setdefault(name, schema)
            origin.setdefault(name, part.path)
            if known != schema:
                raise StoreError(
                    f"{part.path}: array {name!r} has trailing shape {list(schema.trailing)} "
                    f"{schema.dtype} axes {list(schema.axes)} but {origin[name].name} has "
                    f"{list(known.trailing)} {known.dtype} axes {list(known.axes)}"
                )
    return dict(sorted(schemas.items()))


def record_table(parts: list[PartIndex]) -> RecordTable:
    keys: list[RecordKey] = []
    part_of: list[int] = []
    row_of: list[int] = []
    seen: set[RecordKey] = set()
    duplicates = 0
    for index, part in enumerate(parts):
        for row, key in enumerate(part.keys):
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            keys.append(key)
            part_of.append(index)
            row_of.append(row)
    frame = pd.DataFrame(
        {
            "record": np.arange(len(keys), dtype=np.int64),
            "model_id": pd.Series([k[0] for k in keys], dtype="str"),
            "prompt_id": pd.Series([k[1] for k in keys], dtype="str"),
            "seed": np.array([k[2] for k in keys], dtype=np.int64),
        }
    )
    return RecordTable(frame, np.array(part_of, dtype=np.int64), np.array(row_of, dtype=np.int64), duplicates)
