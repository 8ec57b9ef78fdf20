"""Writing a study config that reads the same from any working directory.

:func:`~cemaps.study.config.load_config` resolves every relative path in ``study.yaml``
against the folder holding the file. A program that writes a config must therefore write
its paths relative to *that* folder, never relative to the directory the program happens
to run in: ``str(out / "prompts.csv")`` with a relative ``out`` names the file twice over
once the config is read (``demo-out/demo-out/prompts.csv``, issue 25). Here file values are
given as :class:`pathlib.Path` objects and converted in one place.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "prompts.csv").write_text("prompt_id,text\\np0,a red circle\\n")
    >>> path = write_config(folder / "study.yaml", {"base": "cemaps/tiny-sd", "prompts": folder / "prompts.csv"})
    >>> path.read_text()
    'base: cemaps/tiny-sd\\nprompts: prompts.csv\\n'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def config_path_value(path: Path, folder: Path) -> str:
    """``path`` as the config in ``folder`` must spell it: relative (POSIX) when inside ``folder``, else absolute.

    Both are resolved first, so a relative ``path`` means relative to the current directory
    (what the writing program meant), whatever ``folder`` is. Paths outside ``folder`` are
    written absolute rather than with ``..``, so a config copied elsewhere still names them.
    """
    target = Path(path).expanduser().resolve()
    base = Path(folder).expanduser().resolve()
    if target.is_relative_to(base):
        return target.relative_to(base).as_posix() or "."
    return str(target)


def config_values(raw: Any, folder: Path) -> Any:
    """``raw`` with every :class:`~pathlib.Path` (in mappings, lists and tuples, at any depth) as
    :func:`config_path_value` spells it; strings (hub ids, named lists such as ``demo24``) are kept."""
    if isinstance(raw, Path):
        return config_path_value(raw, folder)
    if isinstance(raw, Mapping):
        return {key: config_values(value, folder) for key, value in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [config_values(value, folder) for value in raw]
    return raw


def write_config(path: str | Path, raw: Mapping[str, Any]) -> Path:
    """Writes ``raw`` as YAML to ``path`` (keys in the given order); file values given as
    :class:`~pathlib.Path` are written relative to ``path``'s folder. Returns ``path``.

    Raises:
        OSError: when the file cannot be written.
    """
    path = Path(path)
    path.write_text(yaml.safe_dump(config_values(raw, path.parent), sort_keys=False), encoding="utf-8")
    return path
