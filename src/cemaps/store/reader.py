"""StoreReader: lazy, read-only access to a store; numpy and pandas out."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np
import pandas as pd

from cemaps.errors import StoreError
from cemaps.store.contents import ContentsCache, array_schemas, record_table
from cemaps.store.frames import rows_to_frame
from cemaps.store.images import decode_png
from cemaps.store.integrity import identity
from cemaps.store.layout import parts_dir
from cemaps.store.manifest import read_header
from cemaps.store.part_index import array_path

# Open part handles are cached; bounded so that thousands of parts do not exhaust file descriptors.
_MAX_OPEN_PARTS = 64
# Each open Dataset keeps its own chunk cache; bounding how many stay open bounds the memory
# (at most _MAX_OPEN_DATASETS x _CHUNK_CACHE_BYTES of decompressed chunks, whatever the store size).
_MAX_OPEN_DATASETS = 64
# Holds a few 256 KiB chunks: enough for neighbouring records and ranged reads to share
# decompression of the chunk they straddle.
_CHUNK_CACHE_BYTES = 1024 * 1024


class StoreReader:
    """A store opened read-only. Reads one record's array by slicing its part file.

    Records are the unique (model_id, prompt_id, seed) keys of all sealed parts, numbered
    0..n-1 by part name then row; if two parts hold the same key the first one wins.

    Damage stays inside its part: a sealed file whose index fails its checks is left out with
    one warning naming it (``damaged_parts``), and a record whose chunks fail their checksum is
    a StoreError naming the part and the record; every other record reads. A sealed file written
    under other settings or another base model is a StoreError naming it. A ``path`` that is a
    symbolic link is followed.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from cemaps.store import StoreWriter
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "study.h5"
        >>> with StoreWriter(path, settings={}, base={"model": "tiny"}) as writer:
        ...     writer.write_record("base", "p0", 0, {"attn": np.ones((3, 2), np.float16)},
        ...                         axes={"attn": ("token", "x")})
        >>> with open_store(path) as store:
        ...     store.read_one("attn", 0).shape, store.axes("attn")
        ((3, 2), ('token', 'x'))
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_symlink():
            self.path = Path(os.path.realpath(self.path))
        header = read_header(self.path)
        self.schema_version: int = header.schema_version
        self.settings: dict = header.settings
        self.base: dict = header.base
        self.provenance: dict = header.provenance
        _require_listed_parts(self.path)
        self._contents = ContentsCache(identity=identity(header.settings, header.base)).scan(self.path)
        self.damaged_parts: dict[Path, str] = dict(self._contents.damaged)
        if self.damaged_parts:
            names = ", ".join(p.name for p in self.damaged_parts)
            warnings.warn(
                f"{self.path}: {len(self.damaged_parts)} damaged part file(s) left out ({names}); their records "
                "are not read; `cemaps inspect --verify` names them, `cemaps capture --set-aside-damaged` remakes them",
                stacklevel=2,
            )
        self._schemas = array_schemas(self._contents.parts)
        self._records = record_table(self._contents.parts)
        self._handles: OrderedDict[int, h5py.File] = OrderedDict()
        # open Dataset objects keep their chunk cache, so neighbouring records share decompression
        self._datasets: OrderedDict[tuple[int, str], h5py.Dataset] = OrderedDict()
        self._closed = False

    # ---- tables ----------------------------------------------------------------------------
    @property
    def models(self) -> pd.DataFrame:
        """One row per model, index 'model_id'."""
        return rows_to_frame(self._contents.models, "model_id")

    @property
    def prompts(self) -> pd.DataFrame:
        """One row per prompt, index 'prompt_id'; 'tokens' / 'token_ids' are python lists."""
        return rows_to_frame(self._contents.prompts, "prompt_id")

    @property
    def records(self) -> pd.DataFrame:
        """Columns record (0..n-1), model_id, prompt_id, seed; one row per unique key."""
        return self._records.frame.copy()

    def iter_records(self, chunk_size: int = 64) -> Iterator[pd.DataFrame]:
        """The records table in consecutive chunks of ``chunk_size`` rows."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise StoreError(f"{self.path}: chunk_size {chunk_size!r}; expected an integer >= 1")
        frame = self._records.frame
        for start in range(0, len(frame), chunk_size):
            yield frame.iloc[start : start + chunk_size].copy()

    def table(self, name: str) -> pd.DataFrame:
        """A model-level table (e.g. "weight_deltas")."""
        if name not in self._contents.tables:
            available = ", ".join(self._contents.tables) or "none"
            raise StoreError(f"{self.path}: no table {name!r}; available: {available}")
        return self._contents.tables[name].copy()

    # ---- arrays ----------------------------------------------------------------------------
    @property
    def array_names(self) -> list[str]:
        return list(self._schemas)

    def _schema(self, name: str):
        if name not in self._schemas:
            raise StoreError(f"{self.path}: no array {name!r}; available: {', '.join(self._schemas) or 'none'}")
        return self._schemas[name]

    def axes(self, name: str) -> tuple[str, ...]:
        """Axis names of array ``name``, first (ragged) axis included."""
        return self._schema(name).axes

    def dtype(self, name: str) -> np.dtype:
        """The numpy dtype array ``name`` was written with (float16 stays float16)."""
        return self._schema(name).dtype

    def trailing_shape(self, name: str) -> tuple[int, ...]:
        """Shape of array ``name`` without its ragged first axis."""
        return self._schema(name).trailing

    def _record_ints(self, records: Iterable[int] | pd.DataFrame | pd.Series | int) -> list[int]:
        if isinstance(records, pd.DataFrame):
            if "record" not in records.columns:
                raise StoreError(f"{self.path}: records frame has no 'record' column; pass a slice of store.records")
            values = records["record"].tolist()
        elif isinstance(records, int | np.integer):
            values = [records]
        else:
            values = list(records)
        count = len(self._records.part)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < count:
                raise StoreError(f"{self.path}: record {value!r}; expected an integer in 0..{count - 1}")
        return [int(v) for v in values]

    def _part_file(self, index: int) -> h5py.File:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        handle = self._handles.get(index)
        if handle is None:
            path = self._contents.parts[index].path
            try:
                handle = h5py.File(path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
            except OSError as err:
                raise StoreError(f"{path}: cannot open store part ({str(err).splitlines()[0]})") from None
            self._handles[index] = handle
            if len(self._handles) > _MAX_OPEN_PARTS:
                evicted, old = self._handles.popitem(last=False)
                for key in [k for k in self._datasets if k[0] == evicted]:
                    del self._datasets[key]
                old.close()
        else:
            self._handles.move_to_end(index)
        return handle

    def _dataset(self, part_index: int, name: str) -> h5py.Dataset:
        key = (part_index, name)
        dataset = self._datasets.get(key)
        if dataset is None or part_index not in self._handles:
            dataset = self._datasets[key] = self._part_file(part_index)[array_path(name)]
            if len(self._datasets) > _MAX_OPEN_DATASETS:
                self._datasets.popitem(last=False)  # dropping the object frees its chunk cache
        else:
            self._datasets.move_to_end(key)
            self._handles.move_to_end(part_index)
        return dataset

    def _span(self, name: str, record: int) -> tuple[int, int, int]:
        """(part index, first row, row count) of one record's array ``name``."""
        part_index, row = int(self._records.part[record]), int(self._records.row[record])
        spans = self._contents.parts[part_index].offsets.get(name)
        if spans is None or spans[row, 0] < 0:
            raise StoreError(f"{self.path}: record {record} has no array {name!r}")
        return part_index, int(spans[row, 0]), int(spans[row, 1])

    def read_one(self, name: str, record: int) -> np.ndarray:
        """Array ``name`` of one record, [rows, *trailing shape]; reads only that record's rows."""
        self._schema(name)
        (record,) = self._record_ints([record])
        part_index, start, count = self._span(name, record)
        try:
            return self._dataset(part_index, name)[start : start + count]
        except (OSError, RuntimeError) as err:
            raise self._damaged(part_index, name, [record], err) from None

    def _damaged(self, part_index: int, name: str, records: list[int], err: BaseException) -> StoreError:
        """The one-line error of a read that failed its checksum (or found a truncated file)."""
        keys = self._records.frame.iloc[records[:3]]
        named = "; ".join(f"({r.model_id}, {r.prompt_id}, seed {r.seed})" for r in keys.itertuples())
        more = f" and {len(records) - 3} more" if len(records) > 3 else ""
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return StoreError(
            f"{self._contents.parts[part_index].path}: damaged store part: array {name!r} of record(s) "
            f"{named}{more} cannot be read ({reason}); `cemaps inspect --verify` lists all damage"
        )

    def read(self, name: str, records: Iterable[int] | pd.DataFrame) -> list[np.ndarray]:
        """Array ``name`` for each record, in the order given (one [rows, *trailing] array each).

        Records are grouped by part and sorted by row; rows that lie together (gaps shorter
        than one HDF5 chunk included) are read with one slice, so a run of neighbouring
        records costs one read and one decompression of each chunk.
        """
        self._schema(name)
        wanted = [self._span(name, record) for record in self._record_ints(records)]
        out: list[np.ndarray | None] = [None] * len(wanted)
        order = sorted(range(len(wanted)), key=lambda i: wanted[i])
        run: list[int] = []
        for i in order:
            if run and not self._joins(name, wanted[run[-1]], wanted[i]):
                self._read_run(name, wanted, run, out)
                run = []
            run.append(i)
        if run:
            self._read_run(name, wanted, run, out)
        return out  # type: ignore[return-value]

    def _joins(self, name: str, previous: tuple[int, int, int], span: tuple[int, int, int]) -> bool:
        if span[0] != previous[0]:
            return False
        gap = span[1] - (previous[1] + previous[2])
        return gap <= self._dataset(span[0], name).chunks[0]

    def _read_run(
        self, name: str, wanted: list[tuple[int, int, int]], run: list[int], out: list[np.ndarray | None]
    ) -> None:
        part_index, first = wanted[run[0]][0], wanted[run[0]][1]
        last = max(wanted[i][1] + wanted[i][2] for i in run)
        try:
            block = self._dataset(part_index, name)[first:last]
        except (OSError, RuntimeError) as err:
            records = [self._record_of(part_index, wanted[i][1], name) for i in run]
            raise self._damaged(part_index, name, records, err) from None
        for i in run:
            start, count = wanted[i][1] - first, wanted[i][2]
            out[i] = block[start : start + count].copy() if len(run) > 1 else block[start : start + count]

    def _record_of(self, part_index: int, start: int, name: str) -> int:
        rows = self._contents.parts[part_index].offsets[name][:, 0]
        row = int(np.flatnonzero(rows == start)[0])
        matches = np.flatnonzero((self._records.part == part_index) & (self._records.row == row))
        return int(matches[0]) if len(matches) else 0

    def images(self, records: Iterable[int] | pd.DataFrame) -> np.ndarray:
        """Generated images of ``records``: uint8 [n, H, W, 3]."""
        decoded = []
        for record in self._record_ints(records):
            part_index, row = int(self._records.part[record]), int(self._records.row[record])
            if not self._contents.parts[part_index].has_image[row]:
                raise StoreError(f"{self.path}: record {record} has no image")
            decoded.append(decode_png(self._part_file(part_index)["images"][row]))
        if not decoded:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        shapes = {image.shape for image in decoded}
        if len(shapes) > 1:
            raise StoreError(
                f"{self.path}: images have different shapes {sorted(shapes)}; read them one record at a time"
            )
        return np.stack(decoded)

    def size_on_disk(self) -> int:
        """Bytes of the manifest plus every file in the parts folder."""
        folder = parts_dir(self.path)
        files = [folder / name for name in os.listdir(folder)] if folder.is_dir() else []
        return self.path.stat().st_size + sum(p.stat().st_size for p in files if p.is_file())

    # ---- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        self._datasets.clear()
        while self._handles:
            self._handles.popitem()[1].close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_store(path: str | os.PathLike) -> StoreReader:
    """Opens a store read-only (lazy: arrays are read on demand)."""
    return StoreReader(path)


def _require_listed_parts(path: Path) -> None:
    """Every part file the manifest lists is on disk (a manifest copied without its folder holds no data)."""
    try:
        with h5py.File(path, "r") as manifest:
            listed = (
                [p.decode() if isinstance(p, bytes) else str(p) for p in manifest["parts"][()]]
                if "parts" in manifest
                else []
            )
    except OSError:
        return  # read_header already read this file; a failure here is reported where the data is read
    missing = [p for p in listed if not (path.parent / p).is_file()]
    if missing:
        folder = parts_dir(path)
        what = (
            f"its parts folder {folder.name}/ is missing ({len(listed)} part files listed)"
            if not folder.is_dir()
            else f"{len(missing)} of the {len(listed)} part files it lists are missing from {folder.name}/ "
            f"(e.g. {Path(missing[0]).name})"
        )
        raise StoreError(f"{path}: {what}; a store is the .h5 manifest plus that folder: copy or restore both")
