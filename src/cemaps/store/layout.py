"""File names inside a store and the atomic-write primitives.

Every store file is built in memory (HDF5's core driver, :func:`in_memory_h5`) and reaches the
disk only as one finished image written by :func:`write_image`: plain ``os.write`` calls into a
temporary name, fsync, ``os.replace``. So a full disk or a read-only folder is one clean
OSError in Python (never HDF5 failing to flush a half-written file, which crashed the process
with a segmentation fault), and the temporary file is removed.

A store ``study.h5`` owns the sibling folder ``study.h5.parts/`` holding
``part-<writer_tag>-<seq:05d>.h5`` (sealed records), ``meta-<writer_tag>-<seq:05d>.h5``
(sealed models/prompts/table rows) and, while a writer runs, its open ``*.h5.tmp`` files.
Sealed files are never modified; a sealed name is only ever created by ``os.replace``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py

from cemaps.errors import StoreError

_TAG = re.compile(r"^[A-Za-z0-9_.+]+(?:-[A-Za-z0-9_.+]+)*$")
_SEALED = re.compile(r"^(?P<kind>part|meta)-(?P<tag>.+)-(?P<seq>\d{5,})\.h5$")
_OPEN = re.compile(r"^(?P<kind>part|meta)-(?P<tag>.+)-(?P<seq>\d{5,})\.h5\.tmp$")


def parts_dir(store_path: Path) -> Path:
    """The folder of part files that belongs to the manifest ``store_path``."""
    return store_path.with_name(store_path.name + ".parts")


def damaged_dir(store_path: Path) -> Path:
    """Where ``--set-aside-damaged`` moves damaged sealed files: ``study.h5.damaged/``."""
    return store_path.with_name(store_path.name + ".damaged")


def write_error_reason(err: OSError) -> str:
    """The system's reason for a failed write, also when HDF5 wrapped it in its own text."""
    text = str(err)
    if err.errno == errno.ENOSPC or "No space left on device" in text or "errno = 28" in text:
        return "no space left on device"
    if err.errno == errno.EDQUOT or "Disk quota exceeded" in text:
        return "disk quota exceeded"
    if err.strerror:
        return err.strerror
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def write_failure(store: Path, path: Path, on_failure: Callable[[], None] | None = None) -> Iterator[None]:
    """Turns an OSError while writing ``path`` (a full disk, a read-only folder) into one StoreError line.

    The line names ``path`` and says that the sealed records are kept, which they are: sealed
    files are never written again, and ``on_failure`` (e.g. dropping the open part) runs first.
    """
    try:
        yield
    except OSError as err:
        if on_failure is not None:
            on_failure()
        path = Path(err.filename) if err.filename else path
        raise StoreError(
            f"{path}: cannot write ({write_error_reason(err)}); the store {store.name} keeps every sealed "
            "record: free space (or fix the folder) and rerun to resume"
        ) from None


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


_MEMORY_FILES = itertools.count()


def in_memory_h5(**kwargs) -> h5py.File:
    """A new HDF5 file held in memory only (core driver, no backing store); see :func:`write_image`."""
    name = f"cemaps-memory-{os.getpid()}-{next(_MEMORY_FILES)}.h5"
    return h5py.File(name, "w", driver="core", backing_store=False, **kwargs)


def write_image(memory_file: h5py.File, final_path: Path, tmp_path: Path | None = None) -> None:
    """Closes an in-memory HDF5 file and makes its image ``final_path``, atomically and durably.

    Args:
        memory_file: from :func:`in_memory_h5`; closed on return, also on failure.
        final_path: the file's name on disk (replaced if present).
        tmp_path: where the image is written first (default: a hidden name beside ``final_path``).

    Raises:
        OSError: the write failed (a full disk, a read-only folder); its filename is ``final_path``
            (the temporary file is removed and never named).
    """
    try:
        memory_file.flush()
        image = memory_file.id.get_file_image()
    finally:
        memory_file.close()
    tmp_path = tmp_path or final_path.with_name(f".{final_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp_path, "wb") as handle:
            handle.write(image)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, final_path)
        fsync_dir(final_path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(final_path)) from None
