"""Output folders that never destroy a user's files and always describe one run.

Every command that writes a folder (``analyze``, ``report``, ``personalize``, ``demo``)
goes through this module:

- a path that is an existing file, or a folder holding files that the same command did
  not write, is refused up front with one line naming it (nothing is deleted or overwritten);
- a folder is "written by a command" when it holds the marker file :data:`MARKER`, which
  names the command and lists every file the command wrote; a folder whose files are all
  listed may be replaced by a new run of that command;
- :func:`staged_output` writes into a fresh hidden sibling folder and moves it into place
  only when the run succeeded, so a failed run leaves the old folder untouched and never a
  half-written one, and a successful run leaves no stale files from an earlier one.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "results"
    >>> with staged_output(out, "analyze") as staging:
    ...     _ = (staging / "summary.json").write_text("{}")
    >>> sorted(p.name for p in out.iterdir())
    ['.cemaps-output.json', 'summary.json']
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cemaps.errors import OutputError

MARKER = ".cemaps-output.json"


def os_error_message(error: OSError, path: str | Path | None = None) -> str:
    """One line for an operating-system error: the path it concerns and the system's reason."""
    from cemaps.errors import one_line

    where = error.filename if error.filename is not None else path
    reason = error.strerror or one_line(error)
    if isinstance(error, PermissionError) or error.errno in (13, 30):  # EACCES, EROFS
        reason += "; expected a folder this user can write to"
    return f"{where}: {reason}" if where is not None else reason


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative POSIX paths, sorted), the marker excluded."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() and p.name != MARKER)


def _marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def followed(path: str | Path) -> Path:
    """``path`` with a symbolic link at its end followed: output goes where the link points, the link stays."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_output_folder(path: str | Path, command: str, *, option: str = "--out", whole_folder: bool = False) -> None:
    """Refuses, before any work, an output path this command may not write.

    Args:
        path: the output folder (created later if missing).
        command: the CLI command writing it, e.g. ``"analyze"``.
        option: how the user gave the path, named in the message.
        whole_folder: the command claims the folder as a whole (the demo, which resumes in it):
            any folder with its marker is accepted, whatever files were added since.

    Raises:
        OutputError: ``path`` is a file, or a non-empty folder that ``command`` did not write
            (a file in it is not listed in its marker).
    """
    path = followed(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is an existing file; expected a folder path")
    check_writable(path, option)
    if not path.is_dir():
        return
    try:
        present = files_in(path)
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot list the folder ({os_error_message(error)})") from None
    if not present:
        return
    marker = _marker(path)
    if marker is None or marker.get("command") != command:
        raise OutputError(
            f"{option} {path}: folder is not empty and was not written by `cemaps {command}` "
            f"(it holds {_some(present)}); choose a new folder, nothing was changed"
        )
    if whole_folder:
        return
    foreign = [f for f in present if f not in set(marker.get("files") or ())]
    if foreign:
        raise OutputError(
            f"{option} {path}: holds files that `cemaps {command}` did not write ({_some(foreign)}); "
            "move them or choose a new folder, nothing was changed"
        )


def check_writable(path: str | Path, option: str) -> None:
    """Refuses, before any work, a path whose folder (or nearest existing ancestor) this user cannot write.

    The check writes and removes a probe file: permission bits alone mislead (root ignores
    them; read-only mounts and immutable folders ignore the bits).

    Raises:
        OutputError: naming ``path``, the folder that refused, and the system's reason.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: {folder} is a file; expected a folder there")
    try:
        handle, probe = tempfile.mkstemp(prefix=".cemaps-write-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"{option} {path}: cannot write in {folder} ({error.strerror or type(error).__name__}); "
            "expected a folder this user can write to"
        ) from None


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def write_marker(folder: str | Path, command: str, *, whole_folder: bool = False) -> None:
    """Marks ``folder`` as written by ``command``, listing the files in it now."""
    from cemaps.version import __version__

    folder = Path(folder)
    marker = {"command": command, "cemaps_version": __version__, "files": None if whole_folder else files_in(folder)}
    (folder / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")


def claim_output_folder(path: str | Path, command: str, *, option: str = "--out") -> Path:
    """Checks, creates and marks a folder that ``command`` fills incrementally (the demo).

    Raises:
        OutputError: as :func:`check_output_folder`, or the folder cannot be created or written.
    """
    path = Path(path)
    check_output_folder(path, command, option=option, whole_folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path, command, whole_folder=True)
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write ({os_error_message(error)})") from None
    return path


@contextmanager
def staged_output(path: str | Path, command: str, *, option: str = "--out") -> Iterator[Path]:
    """Yields a fresh hidden sibling folder; on success it replaces ``path`` (marked as ``command``'s).

    ``path`` is checked with :func:`check_output_folder` first and again just before the
    swap. On an exception the staging folder is removed and ``path`` is untouched. What a killed
    earlier run left beside ``path`` is cleared first (:func:`recover_leftovers`).

    Raises:
        OutputError: ``path`` may not be written (see :func:`check_output_folder`), or the
            operating system refuses to create or move the folders.
    """
    path = followed(path)
    parent = path.absolute().parent
    recover_leftovers(path)
    check_output_folder(path, command, option=option)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write ({os_error_message(error)})") from None
    try:
        try:
            yield staging
            write_marker(staging, command)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OutputError(
                f"{option} {path}: cannot write ({error.strerror or 'no space left on device'}); "
                "nothing was changed there: free space and run it again"
            ) from None
        check_output_folder(path, command, option=option)  # the user may have added files meanwhile
        _replace(staging, path, option)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, path: Path, option: str) -> None:
    """Moves ``staging`` to ``path``; an earlier output there is moved aside first, then deleted."""
    old = None
    try:
        if path.is_dir():
            if any(path.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=staging.parent))
                os.replace(path, old / path.name)
            else:
                path.rmdir()
        os.replace(staging, path)
    except OSError as error:
        if old is not None and not path.exists():
            os.replace(old / path.name, path)  # put the earlier output back
        raise OutputError(
            f"{option} {path}: cannot move the new output into place ({os_error_message(error)})"
        ) from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _dead(pid: int) -> bool:
    """True when no process ``pid`` exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_leftovers(path: str | Path) -> list[Path]:
    """Clears what a killed :func:`staged_output` left beside ``path``; returns the folders it removed.

    A run names its hidden siblings with its process id: ``.<name>.partial-<pid>-*`` (the output being
    written) and ``.<name>.old-<pid>-*`` (the earlier output, moved aside for the swap). For a process
    that no longer exists, a partial folder is deleted, and an earlier output is moved back to ``path``
    when ``path`` is missing (the run died between moving it aside and moving the new one in), else
    deleted. Folders of live processes, and unnamed ones from older versions, are left alone.
    """
    path = Path(path).absolute()
    removed = []
    for kind in ("old", "partial"):  # an earlier output first: it may be all the user has
        for folder in sorted(path.parent.glob(f".{path.name}.{kind}-*")):
            pid = folder.name.removeprefix(f".{path.name}.{kind}-").split("-", 1)[0]
            if not folder.is_dir() or not pid.isdigit() or not _dead(int(pid)):
                continue
            earlier = folder / path.name
            if kind == "old" and earlier.is_dir() and not path.exists():
                os.replace(earlier, path)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
