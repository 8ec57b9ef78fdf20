"""Constants of the on-disk schema and the JSON helpers every store file uses.

Schema v1 (see ``store/__init__.py`` for the full layout): a manifest ``study.h5`` beside
a folder ``study.h5.parts/`` of immutable part files (``part-*.h5``, records and arrays)
and meta files (``meta-*.h5``, models / prompts / model-level tables); arrays gzip-4 + shuffle.

Schema v2: the same layout; arrays are compressed with Blosc2 (Zstandard, byte shuffle),
an HDF5 filter that ``hdf5plugin`` registers (plain h5py reads them after
``import hdf5plugin``). Blosc2-Zstd decompresses these float16 maps ~10x faster than gzip
at 1-2 % more bytes (``benchmarks/analysis_throughput.py`` prints both side by side).
This cemaps reads v1 and v2; a v1 store stays v1 when appended to (new parts use gzip), so
the cemaps that wrote it can still read it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from cemaps.errors import StoreError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
STORE_FORMAT = "cemaps-store"
PART_FORMAT = "cemaps-store-part"
META_FORMAT = "cemaps-store-meta"

# gzip 4 + byte shuffle (schema v1): on softmax-like float16 attention maps it saved 30% (smooth maps)
# where lzf+shuffle saved 17% and plain lzf nothing; gzip 1 was only 3% larger. See the report.
COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
# The codec of each schema version's array datasets.
CODEC_OF_VERSION = {1: "gzip", 2: "blosc2-zstd"}
# ~256 KiB chunks: one record's rows touch a few chunks, so reading a record stays O(record).
CHUNK_BYTES = 256 * 1024


def register_filters() -> None:
    """Registers hdf5plugin's HDF5 filters (Blosc2, Zstd, ...) with h5py; idempotent."""
    import hdf5plugin  # noqa: F401  (registering the filters is the import's effect)


def array_compression(codec: str) -> dict[str, Any]:
    """``h5py.create_dataset`` keyword arguments of ``codec`` ("gzip" or "blosc2-zstd").

    Blosc2-Zstd at level 5 with byte shuffle, one thread: on the analysis benchmark's
    256 KiB chunks two Blosc threads decompressed slower than one (the analysis already
    keeps both cores busy), and levels 1-5 differed by 2 % in size.
    """
    if codec == "gzip":
        return dict(COMPRESSION)
    if codec == "blosc2-zstd":
        register_filters()
        import hdf5plugin

        return dict(hdf5plugin.Blosc2(cname="zstd", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE))
    raise StoreError(f"codec {codec!r}: expected one of {sorted(set(CODEC_OF_VERSION.values()))}")


def check_version(version: int, *, what: str) -> int:
    """``version`` if this cemaps reads it, else a StoreError naming ``what``."""
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{what}: schema_version is {version} but this cemaps reads "
            f"{', '.join(map(str, READABLE_VERSIONS))} and writes {SCHEMA_VERSION}; "
            "use the cemaps release that wrote it or a new store path"
        )
    return version


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def to_json(value: Any, *, what: str) -> str:
    """Serialises ``value`` canonically (sorted keys); StoreError naming ``what`` if impossible."""
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise StoreError(f"{what}: {err}; expected JSON-able values (str, int, float, bool, list, dict)") from None


def normalise(value: Any, *, what: str) -> Any:
    """Round-trips through JSON so that tuples/np scalars compare equal to what is read back."""
    return json.loads(to_json(value, what=what))


def format_value(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True)


_ABSENT = object()


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def first_difference(stored: Any, current: Any, prefix: str = "") -> tuple[str, str, str] | None:
    """The first (dotted key, stored value, current value) where two JSON trees differ, or None.

    Example:
        >>> first_difference({"capture": {"spatial": 16}}, {"capture": {"spatial": 32}})
        ('capture.spatial', '16', '32')
    """
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored or key not in current:
                return name, format_value(stored.get(key, _ABSENT)), format_value(current.get(key, _ABSENT))
            found = first_difference(stored[key], current[key], name)
            if found is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for index, (a, b) in enumerate(zip(stored, current, strict=True)):
            found = first_difference(a, b, f"{prefix}[{index}]")
            if found is not None:
                return found
        return None
    if type(stored) is type(current) and _equal(stored, current):
        return None
    if (
        isinstance(stored, int | float)
        and isinstance(current, int | float)
        and not isinstance(stored, bool)
        and not isinstance(current, bool)
        and stored == current
    ):
        return None
    return prefix or "<root>", format_value(stored), format_value(current)
