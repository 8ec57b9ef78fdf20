"""StoreWriter: append records to a store, crash-safely, beside other writers."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np
import pandas as pd

from cemaps.errors import StoreError
from cemaps.store.contents import ContentsCache, array_schemas
from cemaps.store.frames import check_column_name, frame_row_keys, write_frame
from cemaps.store.images import check_image, encode_png
from cemaps.store.integrity import LIBVER, identity, identity_attrs
from cemaps.store.layout import (
    check_writer_tag,
    damaged_dir,
    in_memory_h5,
    next_seq,
    parts_dir,
    remove_open_files,
    sealed_name,
    write_failure,
    write_image,
)
from cemaps.store.lock import WriterLock
from cemaps.store.manifest import Header, check_compatible, read_header, rebuild_manifest
from cemaps.store.part_index import ArraySchema, RecordKey
from cemaps.store.part_writer import OpenPart
from cemaps.store.provenance import default_provenance
from cemaps.store.record_checks import validate_record
from cemaps.store.schema import META_FORMAT, SCHEMA_VERSION, check_version, first_difference, normalise, to_json

_STR = h5py.string_dtype("utf-8")
_PROMPT_KEYS = ("prompt_id", "text", "tokens", "token_ids")


class StoreWriter:
    """Appends (model, prompt, seed) records of named arrays to a store; one process per writer_tag.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "study.h5"
        >>> with StoreWriter(path, settings={"steps": 2}, base={"model": "tiny"}) as writer:
        ...     writer.write_record("base", "p0", 0, {"attn": np.zeros((3, 2), np.float16)},
        ...                         axes={"attn": ("token", "x")})
        >>> sorted(StoreWriter(path, settings={"steps": 2}, base={"model": "tiny"}).completed())
        [('base', 'p0', 0)]

    Args:
        path: the manifest file (``study.h5``); parts go to ``study.h5.parts/``.
        settings: generation + capture settings (JSON-able); must equal a stored store's.
        base: base model id + weight hash (JSON-able); must equal a stored store's.
        provenance: what produced the data; default :func:`default_provenance`.
        writer_tag: names this writer's part files; concurrent writers need distinct tags.
        records_per_part: records per part file; a crash loses at most this many.
        schema_version: of a new store: 2 (Blosc2-Zstd arrays) or 1 (gzip, for readers of
            older cemaps); an existing store keeps its own version.
        set_aside_damaged: verify every sealed file first (all chunks read) and move damaged ones
            to ``study.h5.damaged/``, so that their records count as missing and are made again;
            without it a damaged file found on opening is a StoreError naming it.

    A ``path`` that is a symbolic link is followed: the store lives where the link points.
    One process at a time may write under one ``writer_tag`` (``lock.py``); a second one is a
    StoreError naming the holder.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        settings: dict,
        base: dict,
        provenance: dict | None = None,
        writer_tag: str = "w0",
        records_per_part: int = 16,
        schema_version: int = SCHEMA_VERSION,
        set_aside_damaged: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.is_symlink():  # a link to a store: write the store it points to, keep the link
            self.path = Path(os.path.realpath(self.path))
        self.writer_tag = check_writer_tag(writer_tag)
        if isinstance(records_per_part, bool) or not isinstance(records_per_part, int) or records_per_part < 1:
            raise StoreError(f"records_per_part {records_per_part!r}: expected an integer >= 1")
        self.records_per_part = records_per_part
        for what, value in (("settings", settings), ("base", base)):
            if not isinstance(value, dict):
                raise StoreError(f"{self.path}: {what} is a {type(value).__name__}; expected a dict")
        settings = normalise(settings, what=f"{self.path}: settings")
        base = normalise(base, what=f"{self.path}: base")
        provenance = normalise(
            default_provenance() if provenance is None else provenance, what=f"{self.path}: provenance"
        )
        self._provenance_json = to_json(provenance, what=f"{self.path}: provenance")
        self._folder = parts_dir(self.path)
        if self.path.exists():
            self._header = read_header(self.path)
            check_compatible(self.path, self._header, settings=settings, base=base)
        else:
            if not self.path.parent.is_dir():
                raise StoreError(f"{self.path}: folder {self.path.parent} does not exist; create it first")
            check_version(schema_version, what=f"{self.path}: new store")
            self._header = Header(schema_version, settings, base, provenance)
        self._identity = identity(self._header.settings, self._header.base)
        self._cache = ContentsCache(identity=self._identity)
        with write_failure(self.path, self._folder):
            self._folder.mkdir(exist_ok=True)
        self._lock = WriterLock(self._folder, self.writer_tag, self.path)  # before touching its files
        self._part: OpenPart | None = None
        self._closed = False
        try:
            if set_aside_damaged:
                self._set_aside_damaged()
            with write_failure(self.path, self._folder):
                remove_open_files(self._folder, self.writer_tag)
                contents = rebuild_manifest(self.path, self._header, self._cache)
            if contents.damaged:
                first, why = next(iter(contents.damaged.items()))
                raise StoreError(
                    f"{self.path}: {len(contents.damaged)} damaged part file(s), e.g. {first.name} "
                    f"({why.removeprefix(str(first) + ': ')}); move them out of {self._folder.name}/ "
                    "(or pass --set-aside-damaged) and rerun capture to make their records again"
                )
        except BaseException:
            self._closed = True
            self._lock.release()
            raise
        self._schemas: dict[str, ArraySchema] = array_schemas(contents.parts)
        self._keys: set[RecordKey] = {key for part in contents.parts for key in part.keys}

    def _set_aside_damaged(self) -> None:
        """Moves every sealed file that fails verification into ``study.h5.damaged/``."""
        from cemaps.store.verify import verify_files

        damaged = [report.path for report in verify_files(self._folder, self._identity) if not report.ok]
        if not damaged:
            return
        aside = damaged_dir(self.path)
        with write_failure(self.path, aside):
            aside.mkdir(exist_ok=True)
            for path in damaged:
                target, suffix = aside / path.name, 0
                while target.exists():
                    suffix += 1
                    target = aside / f"{path.name}.{suffix}"
                shutil.move(path, target)
        self._cache = ContentsCache(identity=self._identity)

    # ---- metadata -------------------------------------------------------------------------
    def _stored_rows(self, kind: str, key: str) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        for path in self._cache.scan(self.path).metas:
            for row in getattr(self._cache.metas[path], kind):
                rows.setdefault(row[key], row)
        return rows

    def _add_rows(self, kind: str, rows: list[dict], key: str, required: tuple[str, ...]) -> None:
        self._check_open()
        if not isinstance(rows, list | tuple):
            raise StoreError(f"{self.path}: {kind} rows are a {type(rows).__name__}; expected a list of dicts")
        stored = self._stored_rows(kind, key)
        fresh: dict[str, dict] = {}
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise StoreError(f"{self.path}: {kind} row {index} is a {type(row).__name__}; expected a dict")
            missing = [k for k in required if k not in row]
            if missing:
                raise StoreError(
                    f"{self.path}: {kind} row {index} lacks {missing[0]!r}; expected keys {', '.join(required)}"
                )
            if not isinstance(row[key], str) or not row[key]:
                raise StoreError(f"{self.path}: {kind} row {index} has {key} {row[key]!r}; expected a non-empty string")
            for name in row:
                check_column_name(name, what=f"{self.path}: {kind} row {index}")
            row = normalise(row, what=f"{self.path}: {kind} row {index} ({row[key]})")
            known = stored.get(row[key]) or fresh.get(row[key])
            if known is None:
                fresh[row[key]] = row
                continue
            difference = first_difference(known, row)
            if difference is not None:
                column, old, new = difference
                raise StoreError(
                    f"{self.path}: {key} {row[key]!r} is already stored with {column!r} = {old}, "
                    f"not {new}; give the new one another {key}"
                )
        if fresh:
            self._write_meta(
                kind,
                lambda meta: meta.create_dataset(
                    kind, data=np.array([to_json(r, what=kind) for r in fresh.values()], dtype=object), dtype=_STR
                ),
            )

    def add_models(self, rows: list[dict]) -> None:
        """Registers models: dicts with 'model_id' + JSON-able columns (method, subject, sha256, ...).

        Idempotent for identical rows; the same model_id with other content is a StoreError.
        """
        self._add_rows("models", rows, "model_id", ("model_id",))

    def add_prompts(self, rows: list[dict]) -> None:
        """Registers prompts: dicts with 'prompt_id', 'text', 'tokens' (list[str]), 'token_ids' (list[int]) + labels."""
        self._add_rows("prompts", rows, "prompt_id", _PROMPT_KEYS)

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        """Appends rows to the model-level table ``name`` (e.g. "weight_deltas").

        Rows equal to rows already in that table are skipped, so a resumed run may re-append.
        """
        self._check_open()
        if not isinstance(name, str) or not name or "/" in name or name in {".", ".."}:
            raise StoreError(f"{self.path}: table name {name!r}; expected a non-empty name without '/'")
        if not isinstance(df, pd.DataFrame):
            raise StoreError(f"{self.path}: table {name!r} is a {type(df).__name__}; expected a pandas DataFrame")
        frame = df.reset_index(drop=True)
        stored = set()
        for path in self._cache.scan(self.path).metas:
            meta = self._cache.metas[path]
            if name in meta.tables:
                stored.update(frame_row_keys(meta.tables[name], what=f"table {name!r}"))
        keys = frame_row_keys(frame, what=f"{self.path}: table {name!r}")
        fresh = frame.iloc[[i for i, key in enumerate(keys) if key not in stored]]
        if len(fresh):
            self._write_meta(
                "table",
                lambda meta: write_frame(
                    meta.create_group(f"tables/{name}"), fresh, what=f"{self.path}: table {name!r}"
                ),
            )

    def _write_meta(self, what: str, fill) -> None:
        seq = next_seq(self._folder, "meta", self.writer_tag)
        final = self._folder / sealed_name("meta", self.writer_tag, seq)
        with write_failure(self.path, final):
            meta = in_memory_h5(libver=LIBVER)
            try:
                meta.attrs.update(
                    {
                        "format": META_FORMAT,
                        "schema_version": self._header.schema_version,
                        "writer_tag": self.writer_tag,
                        **identity_attrs(self._identity),
                    }
                )
                fill(meta)
            except BaseException:
                meta.close()
                raise
            write_image(meta, final)
        with write_failure(self.path, self.path):
            rebuild_manifest(self.path, self._header, self._cache)

    # ---- records ---------------------------------------------------------------------------
    def completed(self) -> set[tuple[str, str, int]]:
        """(model_id, prompt_id, seed) of every record in a sealed part of any writer."""
        contents = self._cache.scan(self.path)
        return {key for part in contents.parts for key in part.keys}

    def write_record(
        self,
        model_id: str,
        prompt_id: str,
        seed: int,
        arrays: dict[str, np.ndarray],
        axes: dict[str, tuple[str, ...]],
        image: np.ndarray | None = None,
    ) -> None:
        """Appends one record (all-or-nothing).

        Args:
            model_id, prompt_id, seed: the record key; a key already stored is a StoreError.
            arrays: name -> array [rows, *trailing]; rows may differ between records, trailing may not.
            axes: name -> axis names, one per array axis, e.g. ("token", "step", "half", "head", "y", "x").
            image: the generated image, uint8 [H, W, 3], or None.
        """
        self._check_open()
        for what, value in (("model_id", model_id), ("prompt_id", prompt_id)):
            if not isinstance(value, str) or not value:
                raise StoreError(f"{self.path}: {what} {value!r}; expected a non-empty string")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise StoreError(f"{self.path}: seed {seed!r}; expected an integer")
        key = (model_id, prompt_id, int(seed))
        if key in self._keys:
            raise StoreError(f"{self.path}: record {key} is already in the store; skip keys in writer.completed()")
        checked = validate_record(f"{self.path}: record {key}", arrays, axes, self._schemas)
        png = encode_png(check_image(image, what=f"{self.path}: record {key}")) if image is not None else None
        if self._part is None:
            seq = next_seq(self._folder, "part", self.writer_tag)
            name = sealed_name("part", self.writer_tag, seq)
            with write_failure(self.path, self._folder / f"{name}.tmp"):
                self._part = OpenPart(
                    self._folder / f"{name}.tmp",
                    self._folder / name,
                    writer_tag=self.writer_tag,
                    provenance_json=self._provenance_json,
                    identity=self._identity,
                    schema_version=self._header.schema_version,
                )
        with write_failure(self.path, self._part.tmp_path, on_failure=self._drop_open_part):
            self._part.append(key, checked, {n: tuple(axes[n]) for n in checked}, png)
        self._keys.add(key)
        for name, array in checked.items():
            self._schemas.setdefault(name, ArraySchema(name, tuple(array.shape[1:]), array.dtype, tuple(axes[name])))
        if self._part.n_records >= self.records_per_part:
            self._seal_part()

    def _seal_part(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return

        def give_up() -> None:
            self._keys.difference_update(part.keys)
            _discard(part)

        with write_failure(self.path, part.tmp_path, on_failure=give_up):
            if part.n_records:
                part.seal()
                rebuild_manifest(self.path, self._header, self._cache)
            else:
                part.discard()

    def _drop_open_part(self) -> None:
        """After a failed write (a full disk) the open part is given up: its records are made again on resume."""
        part, self._part = self._part, None
        if part is not None:
            self._keys.difference_update(part.keys)
            _discard(part)

    # ---- lifetime --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: writer {self.writer_tag!r} is closed")

    def close(self) -> None:
        """Seals the open part and rewrites the manifest. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._seal_part()
            with write_failure(self.path, self.path):
                rebuild_manifest(self.path, self._header, self._cache)
        finally:
            self._lock.release()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # write_record rolls back a half-written record, so what is in the part is whole
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(StoreError):  # the error in flight (e.g. a full disk) is the one to report
            self.close()


def _discard(part: OpenPart) -> None:
    with contextlib.suppress(Exception):  # the file may be unwritable already; it is deleted anyway
        part.discard()
    part.tmp_path.unlink(missing_ok=True)
