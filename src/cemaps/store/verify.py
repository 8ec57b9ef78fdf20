"""``verify_store``: read every byte of every sealed file and name what is damaged.

Reading a store checks only what it reads (the index of each part when the store is opened,
the chunks of the records asked for). Verifying reads everything: each part's index (digest,
identity), every chunk of every array (Fletcher-32 and HDF5 metadata checksums) and each meta
file. A part whose index cannot be read is damaged as a whole (its records are unknown); a
part whose index reads but some chunks do not is named with the records whose rows those
chunks hold.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from cemaps.store import StoreWriter
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "study.h5"
    >>> with StoreWriter(path, settings={}, base={"model": "tiny"}) as writer:
    ...     writer.write_record("base", "p0", 0, {"attn": np.ones((3, 2), np.float16)}, axes={"attn": ("t", "x")})
    >>> verify_store(path).ok
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from cemaps.errors import StoreError
from cemaps.store.contents import read_meta
from cemaps.store.integrity import identity
from cemaps.store.layout import parts_dir, sealed_files
from cemaps.store.manifest import read_header
from cemaps.store.part_index import DamagedPartError, RecordKey, array_path, read_part_index


@dataclass(frozen=True)
class FileReport:
    """What verification found in one sealed file.

    Attributes:
        path: the part or meta file.
        problem: '' when the file is whole, else one line (a damaged index, a foreign identity, ...).
        records: damaged records of a part whose index is readable: (key, array name) pairs.
    """

    path: Path
    problem: str = ""
    records: tuple[tuple[RecordKey, str], ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problem and not self.records


@dataclass(frozen=True)
class StoreVerification:
    store: Path
    files: tuple[FileReport, ...]

    @property
    def ok(self) -> bool:
        return all(report.ok for report in self.files)

    @property
    def damaged(self) -> list[FileReport]:
        return [report for report in self.files if not report.ok]

    def lines(self) -> list[str]:
        """One line per damaged file and one per damaged record, naming them."""
        out = []
        for report in self.damaged:
            if report.problem:
                out.append(f"{report.path.name}: {report.problem}")
            for (model_id, prompt_id, seed), name in report.records:
                out.append(
                    f"{report.path.name}: record ({model_id}, {prompt_id}, seed {seed}): array {name!r} fails its checksum"
                )
        return out


def _damaged_records(path: Path, index) -> tuple[tuple[RecordKey, str], ...]:
    found: list[tuple[RecordKey, str]] = []
    with h5py.File(path, "r") as part:
        for name, spans in index.offsets.items():
            dataset = part[array_path(name)]
            try:
                dataset[()]  # every chunk at once: the fast path when the part is whole
                continue
            except (OSError, RuntimeError):
                pass
            for row, (start, count) in enumerate(spans.tolist()):
                if start < 0:
                    continue
                try:
                    dataset[start : start + count]
                except (OSError, RuntimeError):
                    found.append((index.keys[row], name))
    return tuple(found)


def _check_part(path: Path, expected: dict | None) -> FileReport:
    try:
        index = read_part_index(path, expected)
    except DamagedPartError as err:
        return FileReport(path, str(err).removeprefix(f"{path}: "))
    except StoreError as err:
        return FileReport(path, str(err).removeprefix(f"{path}: ").removeprefix(f"{path.name}: "))
    try:
        return FileReport(path, records=_damaged_records(path, index))
    except (OSError, KeyError, RuntimeError) as err:
        return FileReport(path, f"damaged store part ({str(err).splitlines()[0]})")


def _check_meta(path: Path, expected: dict | None) -> FileReport:
    try:
        read_meta(path, expected)
    except StoreError as err:
        return FileReport(path, str(err).removeprefix(f"{path}: ").removeprefix(f"{path.name}: "))
    return FileReport(path)


def verify_files(folder: Path, expected: dict | None) -> list[FileReport]:
    """A report per sealed file in a parts folder (``expected``: the store's identity, or None)."""
    reports = [_check_part(path, expected) for path in sealed_files(folder, "part")]
    return reports + [_check_meta(path, expected) for path in sealed_files(folder, "meta")]


def verify_store(path: str | os.PathLike) -> StoreVerification:
    """Reads every sealed file of the store at ``path`` in full and reports each damaged one.

    Raises:
        StoreError: the manifest itself cannot be read (nothing to verify against).
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    header = read_header(path)
    files = verify_files(parts_dir(path), identity(header.settings, header.base))
    return StoreVerification(path, tuple(files))
