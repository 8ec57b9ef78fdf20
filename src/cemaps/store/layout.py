"""File names inside a store and the atomic-write primitives.

A store ``study.h5`` owns the sibling folder ``study.h5.parts/`` holding
``part-<writer_tag>-<seq:05d>.h5`` (sealed records), ``meta-<writer_tag>-<seq:05d>.h5``
(sealed models/prompts/table rows) and, while a writer runs, its open ``*.h5.tmp`` files.
Sealed files are never modified; a sealed name is only ever created by ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cemaps.errors import StoreError

_TAG = re.compile(r"^[A-Za-z0-9_.+]+(?:-[A-Za-z0-9_.+]+)*$")
_SEALED = re.compile(r"^(?P<kind>part|meta)-(?P<tag>.+)-(?P<seq>\d{5,})\.h5$")
_OPEN = re.compile(r"^(?P<kind>part|meta)-(?P<tag>.+)-(?P<seq>\d{5,})\.h5\.tmp$")


def parts_dir(store_path: Path) -> Path:
    """The folder of part files that belongs to the manifest ``store_path``."""
    return store_path.with_name(store_path.name + ".parts")


def check_writer_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise StoreError(f"writer_tag {tag!r}: expected letters, digits, '_', '.', '+' or inner '-' (e.g. 'gpu0')")
    return tag


def sealed_name(kind: str, tag: str, seq: int) -> str:
    return f"{kind}-{tag}-{seq:05d}.h5"


def sealed_files(folder: Path, kind: str) -> list[Path]:
    """Sealed files of one kind ('part' or 'meta'), sorted by name (the store's stable order)."""
    if not folder.is_dir():
        return []
    names = [name for name in os.listdir(folder) if (m := _SEALED.match(name)) and m["kind"] == kind]
    return [folder / name for name in sorted(names)]


def split_name(name: str) -> tuple[str, str, int]:
    """(kind, writer_tag, seq) of a sealed or open file name."""
    match = _SEALED.match(name) or _OPEN.match(name)
    if match is None:
        raise StoreError(f"{name}: not a store part name; expected 'part-<tag>-<seq>.h5'")
    return match["kind"], match["tag"], int(match["seq"])


def next_seq(folder: Path, kind: str, tag: str) -> int:
    """One past the highest sequence number this tag used for ``kind`` (sealed or open)."""
    seqs = [-1]
    for name in os.listdir(folder):
        match = _SEALED.match(name) or _OPEN.match(name)
        if match and match["kind"] == kind and match["tag"] == tag:
            seqs.append(int(match["seq"]))
    return max(seqs) + 1


def remove_open_files(folder: Path, tag: str) -> list[Path]:
    """Deletes the ``*.tmp`` files a killed writer with this tag left; returns what it removed."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _OPEN.match(name)
        if match and match["tag"] == tag:
            (folder / name).unlink(missing_ok=True)
            removed.append(folder / name)
    return removed


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        fsync_file(folder)


def seal(tmp_path: Path, final_path: Path) -> None:
    """Makes a fully written file durable and visible under its final name, atomically."""
    fsync_file(tmp_path)
    os.replace(tmp_path, final_path)
    fsync_dir(final_path.parent)


@contextlib.contextmanager
def atomic_path(final_path: Path) -> Iterator[Path]:
    """Yields a temporary path in the same folder; on success it replaces ``final_path``.

    On an exception the temporary file is removed and ``final_path`` is untouched.
    """
    tmp_path = final_path.with_name(f".{final_path.name}.{os.getpid()}.{id(final_path):x}.tmp")
    try:
        yield tmp_path
        seal(tmp_path, final_path)
    finally:
        tmp_path.unlink(missing_ok=True)
