"""One writer per writer tag: an advisory lock file in the parts folder.

Two processes writing one store under the same tag would both generate every record and
delete each other's open part (a writer's start removes its tag's ``*.tmp``). The lock is
``fcntl.flock`` on ``writer-<tag>.lock``: the kernel releases it when the holder exits,
also after SIGKILL, so a killed capture never leaves a stale lock (only an unlocked file,
which the next writer takes). The file holds who took it (pid, host, time) so that the
second process can say so in one line. The holder deletes it on release; a process that
locked a file which was deleted meanwhile sees another inode under the name and tries again.

``flock`` is advisory and per open file; it works on local filesystems and on NFS (Linux
emulates it with byte-range locks there). Where ``fcntl`` is missing (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from cemaps.errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_name(tag: str) -> str:
    return f"writer-{tag}.lock"


class WriterLock:
    """Holds the lock of ``tag`` in ``folder`` until :meth:`release` (or the process ends).

    Raises:
        StoreError: another live process holds it (the message names its pid, host and start),
            or the folder cannot be written (named, with the system's reason).
    """

    def __init__(self, folder: Path, tag: str, store: Path) -> None:
        self.path = folder / lock_name(tag)
        self._fd: int | None = None
        for _ in range(100):  # each retry means the holder released (and deleted) the file just now
            fd = self._open(folder, store)
            if fcntl is None:  # pragma: no cover
                self._fd = fd
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(self.path)
                os.close(fd)
                raise StoreError(
                    f"{store}: writer tag {tag!r} is held by {holder}; another capture is writing this store "
                    "under the same tag: wait for it to finish (each process of a launcher gets its own tag)"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        else:
            raise StoreError(f"{store}: could not take the lock {self.path}; expected it to settle")
        try:
            os.ftruncate(self._fd, 0)
            os.write(
                self._fd,
                json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
                ).encode(),
            )
        except OSError as err:
            self.release()
            raise StoreError(f"{store}: cannot write {self.path} ({err.strerror})") from None

    def _open(self, folder: Path, store: Path) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(
                f"{store}: cannot write its parts folder {folder} ({err.strerror}); "
                "capture needs a store folder this user can write to"
            ) from None

    def release(self) -> None:
        """Releases the lock; safe to call twice."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a folder made read-only meanwhile keeps the (unlocked) file
                self.path.unlink(missing_ok=True)  # while still holding it: see the retry in __init__
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
