"""Reading weight files without executing them: safetensors first, pickle only on request.

A ``.safetensors`` file is plain tensors and is always read. Pickle-based files
(``.ckpt``, ``.bin``, ``.pt``, ``.pth``) can run arbitrary code when unpickled, so
they are refused unless the caller opts in with ``allow_pickle=True``; even then
they go through ``torch.load(weights_only=True)``, which only rebuilds tensors,
containers and primitive values and rejects every other global.

Example:
    >>> import tempfile, os, torch
    >>> from safetensors.torch import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": torch.zeros(2)}, path)
    >>> list(load_weights(path))
    ['w']
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cemaps.errors import ModelLoadError

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = frozenset({".ckpt", ".bin", ".pt", ".pth"})
WEIGHT_SUFFIXES = PICKLE_SUFFIXES | {SAFETENSORS_SUFFIX}


def is_pickle_file(path: str | Path) -> bool:
    """Whether ``path`` names a pickle-based weight file (by its suffix)."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def check_pickle_allowed(path: str | Path, allow_pickle: bool) -> None:
    """Raises ModelLoadError for a pickle-based file unless the caller opted in.

    Args:
        path: the weight file about to be read.
        allow_pickle: the caller's explicit opt-in.
    """
    if is_pickle_file(path) and not allow_pickle:
        raise ModelLoadError(
            f"refusing to read pickle-based weights {str(path)!r}: pickle files can run code when loaded; "
            "convert them to .safetensors, or opt in with `allow_pickle: true` on the model's entry under "
            "`personalized:` in study.yaml (Python: allow_pickle=True), "
            "which reads them with torch.load(weights_only=True)"
        )


def check_weights_file(path: str | Path, allow_pickle: bool = False, *, role: str = "weight file") -> Path:
    """The one check every weight file passes before a library reads it (cheap: headers only).

    A ``.safetensors`` file's header is parsed and its tensors' extents checked against the file
    size (``safetensors.safe_open``); a pickle-based file needs ``allow_pickle`` (and is then read
    by ``torch.load(weights_only=True)`` wherever it is loaded).

    Raises:
        ModelLoadError: one line naming ``role`` and the path: missing, unknown suffix, corrupt
            safetensors, or pickle without opt-in.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{role} {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(f"{role} {str(path)!r} has suffix {suffix!r}; expected one of {sorted(WEIGHT_SUFFIXES)}")
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"{role} {str(path)!r} is not a readable safetensors file: {error}") from None
        return path
    check_pickle_allowed(path, allow_pickle)
    return path


def load_weights(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Reads a weight file onto the CPU without executing code from it.

    Args:
        path: a ``.safetensors`` file, or (with ``allow_pickle``) a ``.ckpt/.bin/.pt/.pth`` file.
        allow_pickle: opt in to pickle-based files, read with ``torch.load(weights_only=True)``.

    Returns:
        The file's mapping of names to tensors. Pickle files may hold nested containers
        (an A1111 embedding's ``string_to_param``); a top-level ``"state_dict"`` entry, as in
        original Stable Diffusion ``.ckpt`` files, is unwrapped.

    Raises:
        ModelLoadError: the file is missing, has an unknown suffix, is pickle-based without
            opt-in, contains objects other than tensors and plain values, or is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weight file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(
            f"weight file {str(path)!r} has suffix {suffix!r}; expected one of {sorted(WEIGHT_SUFFIXES)}"
        )
    if suffix == SAFETENSORS_SUFFIX:
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"weight file {str(path)!r} is not a readable safetensors file: {error}") from error
    check_pickle_allowed(path, allow_pickle)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as error:
        text = str(error).strip()
        # torch's message is several sentences of advice on weights_only=False, which cemaps never uses
        first_line = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
        raise ModelLoadError(
            f"weight file {str(path)!r} holds more than tensors and plain values, so torch.load(weights_only=True) "
            f"refused it ({first_line}); only load it if you trust its author, after converting it to .safetensors"
        ) from error
    if isinstance(loaded, torch.Tensor):
        return {"": loaded}
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"weight file {str(path)!r} holds a {type(loaded).__name__}; expected a dict of tensors")
    if isinstance(loaded.get("state_dict"), dict):
        return loaded["state_dict"]
    return loaded
