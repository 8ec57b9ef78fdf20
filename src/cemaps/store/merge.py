"""merge_stores: combine stores written separately (e.g. one per machine) without copying maps."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np

from cemaps.errors import StoreError
from cemaps.store.contents import ContentsCache, StoreContents
from cemaps.store.layout import atomic_path, parts_dir, sealed_name, split_name
from cemaps.store.manifest import Header, check_compatible, read_header, rebuild_manifest
from cemaps.store.part_index import PartIndex, RecordKey, array_path
from cemaps.store.schema import first_difference


def _payload(part: PartIndex, row: int) -> tuple[dict[str, np.ndarray], bytes]:
    with h5py.File(part.path, "r") as handle:
        arrays = {}
        for name, spans in part.offsets.items():
            start, count = (int(v) for v in spans[row])
            if start >= 0:
                arrays[name] = handle[array_path(name)][start : start + count]
        return arrays, bytes(handle["images"][row])


def _same_payload(a: tuple[dict[str, np.ndarray], bytes], b: tuple[dict[str, np.ndarray], bytes]) -> bool:
    arrays_a, image_a = a
    arrays_b, image_b = b
    return (
        image_a == image_b
        and arrays_a.keys() == arrays_b.keys()
        and all(
            arrays_a[n].dtype == arrays_b[n].dtype and np.array_equal(arrays_a[n], arrays_b[n], equal_nan=True)
            for n in arrays_a
        )
    )


def _check_rows(stores: list[tuple[Path, StoreContents]], kind: str, key: str) -> None:
    seen: dict[str, tuple[Path, dict]] = {}
    for path, contents in stores:
        for row in getattr(contents, kind):
            first = seen.setdefault(row[key], (path, row))
            difference = first_difference(first[1], row)
            if difference is not None:
                column, old, new = difference
                raise StoreError(
                    f"{path}: {key} {row[key]!r} has {column!r} = {new} but {first[0]} has {old}; "
                    "stores with conflicting rows cannot be merged"
                )


def _check_records(stores: list[tuple[Path, StoreContents]]) -> int:
    """Number of duplicate keys with identical content; StoreError if any differ."""
    first: dict[RecordKey, tuple[Path, PartIndex, int]] = {}
    duplicates = 0
    for path, contents in stores:
        for part in contents.parts:
            for row, key in enumerate(part.keys):
                if key not in first:
                    first[key] = (path, part, row)
                    continue
                other_path, other_part, other_row = first[key]
                if os.path.samefile(other_part.path, part.path):  # already merged: a hard link
                    continue
                if not _same_payload(_payload(other_part, other_row), _payload(part, row)):
                    raise StoreError(
                        f"{path}: record {key} differs from the one in {other_path}; remove one of them before merging"
                    )
                duplicates += 1
    return duplicates


def _target_name(folder: Path, source: Path) -> Path | None:
    """Where ``source`` goes in ``folder``; None if an identical file is already there."""
    kind, tag, seq = split_name(source.name)
    candidate, suffix = folder / source.name, 0
    while candidate.exists():
        if os.path.samefile(candidate, source) or filecmp.cmp(candidate, source, shallow=False):
            return None
        suffix += 1
        candidate = folder / sealed_name(kind, f"{tag}+m{suffix}", seq)
    return candidate


def _link(source: Path, target: Path) -> bool:
    """Hard-links ``source`` to ``target``; copies (atomically) across filesystems. True if linked."""
    try:
        os.link(source, target)
        return True
    except OSError:
        with atomic_path(target) as tmp_path:
            shutil.copy2(source, tmp_path)
        return False


def merge_stores(sources: list[str | os.PathLike], out: str | os.PathLike) -> None:
    """Combines stores made with identical settings and base into ``out`` without copying maps.

    Sealed part and meta files are hard-linked into ``out``'s parts folder (copied only
    when ``out`` is on another filesystem, with a warning), renamed ``<tag>+m<k>`` when a
    different file already has their name; then the manifest is rebuilt. Merging again is
    a no-op for files already there. Everything is checked before anything is linked:
    settings/base must be equal, rows of the same model_id / prompt_id must be equal, and a
    (model, prompt, seed) key in several sources must have identical arrays and image
    (then one is kept and a warning says how many duplicates there were) — else StoreError.

    Args:
        sources: manifests (``study.h5``) of the stores to merge.
        out: the merged store's manifest; created if absent, else must be compatible.
    """
    paths = [Path(s) for s in sources]
    out_path = Path(out)
    if not paths:
        raise StoreError(f"{out_path}: merge_stores got no sources; expected at least one store path")
    if any(p.resolve() == out_path.resolve() for p in paths):
        raise StoreError(f"{out_path}: is also a source; expected a different output path")
    headers = [read_header(p) for p in paths]
    for path, header in zip(paths[1:], headers[1:], strict=True):
        check_compatible(path, header, settings=headers[0].settings, base=headers[0].base, now=f"in {paths[0]}")
    if out_path.exists():
        out_header = read_header(out_path)
        check_compatible(out_path, out_header, settings=headers[0].settings, base=headers[0].base, now=f"in {paths[0]}")
    else:
        if not out_path.parent.is_dir():
            raise StoreError(f"{out_path}: folder {out_path.parent} does not exist; create it first")
        out_header = Header(
            headers[0].schema_version,
            headers[0].settings,
            headers[0].base,
            {**headers[0].provenance, "merged_from": [str(p) for p in paths]},
        )
    # a merged store holds every source's parts, so it needs the newest of their schema versions
    version = max(header.schema_version for header in [*headers, out_header])
    out_header = dataclasses.replace(out_header, schema_version=version)
    stores = [(p, ContentsCache().scan(p)) for p in paths]
    if out_path.exists():
        stores.insert(0, (out_path, ContentsCache().scan(out_path)))
    _check_rows(stores, "models", "model_id")
    _check_rows(stores, "prompts", "prompt_id")
    duplicates = _check_records(stores)

    folder = parts_dir(out_path)
    folder.mkdir(exist_ok=True)
    copied = 0
    for _, contents in stores:
        for source in [part.path for part in contents.parts] + contents.metas:
            if source.parent.resolve() == folder.resolve():
                continue
            target = _target_name(folder, source)
            if target is not None and not _link(source, target):
                copied += 1
    rebuild_manifest(out_path, out_header, ContentsCache())
    if copied:
        warnings.warn(
            f"{out_path}: {copied} part files were copied, not hard-linked (another filesystem)", stacklevel=2
        )
    if duplicates:
        warnings.warn(
            f"{out_path}: {duplicates} records were in several sources with identical content; each is kept once",
            stacklevel=2,
        )
