"""What a sealed part file holds, read once (parts are immutable) without touching arrays.

Part file layout (schema v1)::

    /                  attrs: format="cemaps-store-part", schema_version, writer_tag,
                              provenance (JSON), array_names (JSON list)
    /records           compound [n]: model_id (str), prompt_id (str), seed (int64)
    /arrays/<name>     [rows, *trailing] extendable, chunked; v1: gzip-4 + shuffle, v2: Blosc2-Zstd-5 +
                       shuffle (hdf5plugin); dtype as given;
                       attrs: axes (JSON list), name. '/' in a name makes groups; dots are kept.
    /offsets/<name>    int64 [n, 2]: (start, count) rows of record i in /arrays/<name>;
                       (-1, 0) where record i has no such array
    /images            vlen uint8 [n]: PNG bytes, empty where a record has no image

Since cemaps 0.x (same schema versions; older cemaps read these parts unchanged) a part also has
the root attributes identity, fingerprint and index_sha256, Fletcher-32 on its chunked datasets
and HDF5 1.10 metadata checksums (see ``integrity.py``); parts without them are read as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cemaps.errors import StoreError
from cemaps.store.integrity import DIGEST_ATTR, IDENTITY_ATTR, check_identity, index_digest
from cemaps.store.schema import PART_FORMAT, check_version

RecordKey = tuple[str, str, int]

RECORD_DTYPE = np.dtype(
    [("model_id", h5py.string_dtype("utf-8")), ("prompt_id", h5py.string_dtype("utf-8")), ("seed", np.int64)]
)


@dataclass(frozen=True)
class ArraySchema:
    """The fixed part of one named array: everything but the ragged first axis."""

    name: str
    trailing: tuple[int, ...]
    dtype: np.dtype
    axes: tuple[str, ...]


@dataclass(frozen=True)
class PartIndex:
    """Keys, offsets and array schemas of one sealed part (n records)."""

    path: Path
    keys: list[RecordKey]
    offsets: dict[str, np.ndarray]  # name -> int64 [n, 2] (start, count)
    rows: dict[str, int]  # name -> length of /arrays/<name>
    schemas: dict[str, ArraySchema]
    has_image: np.ndarray  # bool [n]


def array_path(name: str) -> str:
    return f"arrays/{name}"


def offsets_path(name: str) -> str:
    return f"offsets/{name}"


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_keys(table: np.ndarray) -> list[RecordKey]:
    return [(_text(row["model_id"]), _text(row["prompt_id"]), int(row["seed"])) for row in table]


class DamagedPartError(StoreError):
    """A sealed part whose bytes are not what was sealed (truncated, checksum or digest mismatch)."""


def digest_of_part(part: h5py.File, names: list[str], keys: list[RecordKey], images: np.ndarray | None = None) -> str:
    """The ``index_sha256`` of an open part: its attributes, keys, offsets and PNG bytes."""
    tables = [(f"offsets/{name}", part[offsets_path(name)][()]) for name in names]
    tables.append(("images", part["images"][()] if images is None else images))
    return index_digest(dict(part.attrs), keys, tables)


def read_part_index(path: Path, expected_identity: dict | None = None) -> PartIndex:
    """Reads the index of a sealed part and checks its digest and identity.

    Raises:
        StoreError: not a cemaps part, a schema this cemaps cannot read, or written under another
            identity than ``expected_identity`` (settings + base; None skips the check).
        DamagedPartError: unreadable, truncated, or its bytes differ from those sealed.
    """
    try:
        with h5py.File(path, "r") as part:
            if part.attrs.get("format") != PART_FORMAT:
                raise StoreError(f"{path}: not a cemaps store part (format attribute missing or wrong)")
            check_version(int(part.attrs["schema_version"]), what=f"{path} (part)")
            check_identity(path, part.attrs.get(IDENTITY_ATTR), expected_identity)
            names = json.loads(part.attrs["array_names"])
            keys = decode_keys(part["records"][()])
            offsets, rows, schemas = {}, {}, {}
            for name in names:
                dataset = part[array_path(name)]
                offsets[name] = part[offsets_path(name)][()]
                rows[name] = int(dataset.shape[0])
                schemas[name] = ArraySchema(
                    name,
                    tuple(int(d) for d in dataset.shape[1:]),
                    dataset.dtype,
                    tuple(json.loads(dataset.attrs["axes"])),
                )
            images = part["images"][()]
            image_lengths = np.array([len(v) for v in images], dtype=np.int64)
            stored_digest = part.attrs.get(DIGEST_ATTR)
            if stored_digest is not None and digest_of_part(part, names, keys, images) != stored_digest:
                raise DamagedPartError(f"{path}: damaged store part (its index differs from the one sealed)")
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedPartError(f"{path}: damaged store part ({message})") from None
    return PartIndex(path, keys, offsets, rows, schemas, image_lengths > 0)
