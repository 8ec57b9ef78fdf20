"""The one open part file of a writer: append records in memory, then seal (write + atomic rename).

The open part lives in memory (``layout.in_memory_h5``) and reaches the disk only when sealed,
as one image written to ``part-<tag>-<seq>.h5.tmp`` and renamed: a SIGKILL or a full disk loses
only the records of the open part, and never leaves HDF5 with a half-flushed file.

Arrays and images go to the file as records arrive; the small ``records`` and ``offsets``
tables are kept in memory and written at seal time (an unsealed part is discarded after a
crash anyway), which halves the HDF5 calls per record. A record is all-or-nothing: if
writing one of its arrays fails, every array is cut back to its previous length.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from cemaps.store.integrity import DIGEST_ATTR, FLETCHER32, LIBVER, identity_attrs
from cemaps.store.layout import in_memory_h5, write_image
from cemaps.store.part_index import RECORD_DTYPE, RecordKey, array_path, digest_of_part, offsets_path
from cemaps.store.schema import CHUNK_BYTES, CODEC_OF_VERSION, PART_FORMAT, SCHEMA_VERSION, array_compression

_IMAGE_DTYPE = h5py.vlen_dtype(np.uint8)


class OpenPart:
    """A part file being filled in memory.

    Args:
        tmp_path: where its image is written when sealed, before the rename (``part-<tag>-<seq>.h5.tmp``).
        final_path: its sealed name (``part-<tag>-<seq>.h5``).
        writer_tag: the writer that owns it.
        provenance_json: the writer's provenance, kept as a part attribute.
        identity: the store's settings and base (``integrity.identity``), recorded with their fingerprint.
        schema_version: the store's version, which fixes the arrays' codec (schema.CODEC_OF_VERSION).
    """

    def __init__(
        self,
        tmp_path: Path,
        final_path: Path,
        *,
        writer_tag: str,
        provenance_json: str,
        identity: dict,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        self.tmp_path = tmp_path
        self.final_path = final_path
        self._keys: list[RecordKey] = []
        # name -> (start, count) per record; (-1, 0) where a record lacks the array
        self._spans: dict[str, list[tuple[int, int]]] = {}
        # Dataset objects stay open: closing one flushes its chunk cache, which would
        # compress, write and later re-read the partly filled chunk on every record.
        self._arrays: dict[str, h5py.Dataset] = {}
        self._file = in_memory_h5(libver=LIBVER)
        self._compression = {**array_compression(CODEC_OF_VERSION[schema_version]), **FLETCHER32}
        self._file.attrs.update(
            {
                "format": PART_FORMAT,
                "schema_version": schema_version,
                "writer_tag": writer_tag,
                "provenance": provenance_json,
                **identity_attrs(identity),
            }
        )
        self._images = self._file.create_dataset(
            "images", shape=(0,), maxshape=(None,), dtype=_IMAGE_DTYPE, chunks=(16,)
        )

    @property
    def keys(self) -> list[RecordKey]:
        return list(self._keys)

    @property
    def n_records(self) -> int:
        return len(self._keys)

    def _create_array(self, name: str, array: np.ndarray, axes: tuple[str, ...]) -> h5py.Dataset:
        trailing = array.shape[1:]
        row_bytes = max(1, int(np.prod(trailing, dtype=np.int64)) * array.dtype.itemsize)
        rows_per_chunk = max(1, CHUNK_BYTES // row_bytes)
        dataset = self._file.create_dataset(
            array_path(name),
            shape=(0, *trailing),
            maxshape=(None, *trailing),
            dtype=array.dtype,
            chunks=(rows_per_chunk, *trailing),
            **self._compression,
        )
        dataset.attrs["axes"] = json.dumps(list(axes))
        dataset.attrs["name"] = name
        return dataset

    def append(
        self, key: RecordKey, arrays: dict[str, np.ndarray], axes: dict[str, tuple[str, ...]], png: bytes | None
    ) -> None:
        """Appends one validated record; on any failure the part is left as before the call."""
        n = self.n_records
        lengths = {name: dataset.shape[0] for name, dataset in self._arrays.items()}
        created: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        try:
            for name, array in arrays.items():
                if name not in self._arrays:
                    self._arrays[name] = self._create_array(name, array, axes[name])
                    created.append(name)
                dataset = self._arrays[name]
                start = dataset.shape[0]
                dataset.resize(start + array.shape[0], axis=0)
                dataset[start:] = array
                spans[name] = (start, array.shape[0])
            self._images.resize(n + 1, axis=0)
            self._images[n] = np.frombuffer(png or b"", dtype=np.uint8)
        except BaseException:
            for name, length in lengths.items():
                self._arrays[name].resize(length, axis=0)
            for name in created:
                self._arrays.pop(name)
                del self._file[array_path(name)]
            self._images.resize(n, axis=0)
            raise
        for name in created:
            self._spans[name] = [(-1, 0)] * n  # earlier records of this part lack it
        for name, record_spans in self._spans.items():
            record_spans.append(spans.get(name, (-1, 0)))
        self._keys.append(key)

    def seal(self) -> Path:
        """Writes the records and offsets tables, closes the file and renames it to its sealed name."""
        self._file.create_dataset("records", data=np.array(self._keys, dtype=RECORD_DTYPE))
        self._file.create_group("offsets")
        for name, record_spans in self._spans.items():
            self._file.create_dataset(offsets_path(name), data=np.array(record_spans, dtype=np.int64).reshape(-1, 2))
        self._file.attrs["array_names"] = json.dumps(list(self._spans))
        self._file.attrs[DIGEST_ATTR] = digest_of_part(self._file, list(self._spans), self._keys)
        self._arrays.clear()
        write_image(self._file, self.final_path, self.tmp_path)
        return self.final_path

    def discard(self) -> None:
        """Drops the open part (its records are lost; nothing is on disk)."""
        self._arrays.clear()
        if self._file.id.valid:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)
