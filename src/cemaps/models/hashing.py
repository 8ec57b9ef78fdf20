"""Identities of weights: one digest recipe per kind of thing (a file, a folder, tensors in memory).

The store records these digests as the identity of a base or personalized model, and a
resumed run refuses a model whose digest changed, so every caller must use the same
recipe: the study's model table and :class:`~cemaps.models.personalized.AppliedModel`
both call :func:`source_sha256`.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "unet").mkdir(), (folder / "unet" / "w.safetensors").write_bytes(b"abc")
    >>> source_sha256(folder) == folder_sha256(folder) != file_sha256(folder / "unet" / "w.safetensors")
    True
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cemaps.errors import ModelLoadError
from cemaps.models.safety import WEIGHT_SUFFIXES

_HASH_CHUNK_BYTES = 1 << 24


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB chunks (64 hex characters).

    Raises:
        ModelLoadError: ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"cannot hash {str(path)!r}: not a file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: str | Path) -> str:
    """SHA-256 over the weight files under a folder (any depth): ``"<relative path>:<file sha256>\\n"`` lines, sorted.

    Only weight files (``.safetensors``, ``.bin``, ``.ckpt``, ``.pt``, ``.pth``) count, so
    rewriting a config or README does not change a model's identity; the relative path
    counts, so the same UNet file in ``unet/`` or ``text_encoder/`` gives different digests.

    Raises:
        ModelLoadError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"cannot hash {str(folder)!r}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(folder).as_posix()}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def source_sha256(path: str | Path) -> str:
    """The digest of what a model spec points at: :func:`file_sha256` of a file, :func:`folder_sha256` of a folder.

    Raises:
        ModelLoadError: ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return folder_sha256(path)
    if path.is_file():
        return file_sha256(path)
    raise ModelLoadError(f"cannot hash {str(path)!r}: it does not exist")


def weights_fingerprint(module_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over parameter names, dtypes, shapes and bytes, in sorted-name order.

    The same weights give the same digest regardless of device or insertion order;
    the store records it as the identity of a base model in memory.

    Args:
        module_or_state_dict: a module (its ``state_dict()``) or a name -> tensor mapping.

    Returns:
        64 hex characters.
    """
    state = (
        module_or_state_dict.state_dict() if isinstance(module_or_state_dict, torch.nn.Module) else module_or_state_dict
    )
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        # view as bytes: numpy has no bfloat16, and this avoids any dtype conversion
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
