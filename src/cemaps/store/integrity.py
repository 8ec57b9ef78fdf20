"""How a store knows it has been damaged or mixed: checksums, digests and identities of sealed files.

Three checks, each on what it protects best:

- **Array chunks** carry HDF5's Fletcher-32 checksum (``FLETCHER32``): HDF5 verifies it whenever a
  chunk is read, so a flipped bit in a compressed map is a read error, never a wrong number. Only
  the chunks a read touches are checked (the cost on read throughput is in ``docs/reliability.md``).
- **HDF5's own metadata** (object headers, B-trees, heaps) carries checksums when a file is written
  with file-format bounds ``LIBVER`` (HDF5 1.10's format: superblock v3, object headers v2); the
  library verifies them when it loads the metadata.
- **Everything else in a part** (the records table, offsets, PNG bytes, the attributes) is hashed
  into one SHA-256, ``index_sha256``, when the part is sealed; every read of a part's index (which
  reads those bytes anyway) recomputes and compares it (:func:`index_digest`).

Every sealed file also carries the **identity** it was written under (the store's settings and
base model as JSON, and their SHA-256 ``fingerprint``): a file copied in from another study is
refused by name (:func:`check_identity`). Parts sealed before these checks existed carry none of
this and are read as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cemaps.errors import StoreError
from cemaps.store.schema import first_difference, to_json

# h5py create_dataset keywords of every chunked dataset of a part
FLETCHER32: dict[str, Any] = {"fletcher32": True}
# HDF5 1.10 file format: checksummed metadata; readable by any HDF5 >= 1.10 (h5py >= 2.8)
LIBVER = ("v110", "v110")
IDENTITY_ATTR = "identity"
FINGERPRINT_ATTR = "fingerprint"
DIGEST_ATTR = "index_sha256"
# attributes hashed into the index digest (those the digest itself and h5py's own are not)
_HASHED_ATTRS = ("format", "schema_version", "writer_tag", "provenance", "array_names", IDENTITY_ATTR)


def identity(settings: dict, base: dict) -> dict:
    """The identity a sealed file is written under: the store's settings and base model."""
    return {"settings": settings, "base": base}


def fingerprint(value: dict) -> str:
    """SHA-256 (hex) of an identity's canonical JSON (sorted keys)."""
    return hashlib.sha256(to_json(value, what="identity").encode("utf-8")).hexdigest()


def identity_attrs(value: dict) -> dict[str, str]:
    """The attributes that record ``value`` on a sealed file."""
    return {IDENTITY_ATTR: to_json(value, what="identity"), FINGERPRINT_ATTR: fingerprint(value)}


def check_identity(path: Path, stored_json: Any, expected: dict | None) -> None:
    """StoreError naming ``path`` and the first setting where its identity differs from ``expected``.

    A file without an identity (sealed before cemaps recorded one) is accepted.
    """
    if expected is None or stored_json is None:
        return
    try:
        stored = json.loads(stored_json)
    except (TypeError, ValueError):
        raise StoreError(f"{path}: its identity attribute is not JSON; the file is damaged") from None
    difference = first_difference(stored, expected)
    if difference is not None:
        key, old, new = difference
        raise StoreError(
            f"{path.name}: written under another study ({key} is {old} there but {new} in this store); "
            f"move it out of {path.parent} (it belongs to the store it came from)"
        )


def _update(digest: Any, value: Any) -> None:
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":  # vlen rows (PNG bytes)
        digest.update(len(value).to_bytes(8, "little"))
        for item in value:
            _update(digest, np.asarray(item))
    elif isinstance(value, np.ndarray):
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    else:
        text = value if isinstance(value, bytes) else str(value).encode("utf-8")
        digest.update(len(text).to_bytes(8, "little") + text)


def index_digest(attrs: dict[str, Any], keys: list[tuple[str, str, int]], tables: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 (hex) of a part's hashed attributes, record keys and small tables (offsets, images).

    Args:
        attrs: the part's root attributes (only ``_HASHED_ATTRS`` are hashed).
        keys: the records' (model_id, prompt_id, seed), in row order.
        tables: (name, array) pairs in a fixed order: numeric arrays, or vlen rows (object arrays of
            uint8 arrays) hashed item by item.
    """
    digest = hashlib.sha256()
    for name in _HASHED_ATTRS:
        if name in attrs:
            value = attrs[name]
            _update(digest, name)
            _update(digest, value.decode("utf-8") if isinstance(value, bytes) else value)
    _update(digest, json.dumps([list(key) for key in keys]))
    for name, value in tables:
        _update(digest, name)
        _update(digest, value)
    return digest.hexdigest()
