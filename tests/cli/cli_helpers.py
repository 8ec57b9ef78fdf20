"""Helpers shared by the CLI tests (imported as ``cli_helpers``; tests/cli is on sys.path)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest


def assert_refused(code: int, err: str, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line (``error: ...``) holding every fragment, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (path -> bytes), to show that a refused command changed nothing."""
    files: dict[str, bytes] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        files.update({str(p): p.read_bytes() for p in paths})
    return files


def write(folder: Path, text: str, name: str = "study.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


SMALL = """
base: cemaps/tiny-sd
prompts: [a red mug, freedom]
seeds: [0]
generation: {steps: 2, batch_size: 2}
capture: {timesteps: 2}
"""


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """``folder`` made unwritable for this process, or the test is skipped saying why.

    chmod is tried first; root ignores permission bits, so then the folder is made immutable
    (``chattr +i``, which binds root too on ext4/xfs/btrfs). Without either, the test skips.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK) and not _can_write(folder):
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    folder.chmod(0o755)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root, and chattr +i is not available here: no way to make a folder read-only")
    try:
        if _can_write(folder):
            pytest.skip("running as root, and an immutable folder is still writable here")
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], capture_output=True, check=False)


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True
