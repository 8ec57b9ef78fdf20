"""Loading a base pipeline of any registered model family, offline, and identifying its weights.

The family (:mod:`cemaps.models.families`) decides the pipeline class: a folder's
``model_index.json`` names it, a single file's keys do (diffusers' ``infer_diffusers_model_type``),
or its ``config`` folder does. ``load_pipeline`` accepts a diffusers folder, a Hugging Face hub id that is
already in the local cache, a single-file ``.safetensors`` checkpoint, or
a registered alias (:mod:`cemaps.models.aliases`: ``"cemaps/tiny-sd"`` or ``"tiny"`` for the
embedded tiny pipeline, ``"cemaps/tiny-sdxl"`` or ``"tiny-sdxl"`` for the tiny SDXL at diffusers'
dummy sizes, ``"cemaps/tiny-sd3"``, ``"cemaps/tiny-sd3.5"``, ``"cemaps/tiny-flux"`` and
``"cemaps/tiny-pixart-sigma"`` for the tiny transformer models; ``"cemaps/toyworld"`` once :func:`cemaps.toyworld.register` ran). It never
touches the network: a model that is not on disk fails within a second with a
message saying how to provide it.

Example:
    >>> pipe = load_pipeline("tiny", device="cpu")
    >>> pipe.safety_checker is None
    True
    >>> len(weights_fingerprint(pipe.unet))
    64
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from cemaps.errors import ModelLoadError
from cemaps.models.aliases import TINY, TINY_SDXL, pipeline_alias
from cemaps.models.families import family_of, family_of_folder, family_of_single_file_type
from cemaps.models.hashing import file_sha256, weights_fingerprint
from cemaps.models.safety import SAFETENSORS_SUFFIX, WEIGHT_SUFFIXES, check_pickle_allowed, is_pickle_file
from cemaps.models.tiny import tiny_pipeline, tiny_sdxl_pipeline
from cemaps.models.tiny_dit import TINY_DIT_BUILDERS

__all__ = ["default_device_and_dtype", "file_sha256", "load_pipeline", "weights_fingerprint"]


def default_device_and_dtype(
    device: str | None = None, dtype: torch.dtype | str | None = None
) -> tuple[torch.device, torch.dtype]:
    """CUDA + float16 when a GPU is present, else CPU + float32; explicit arguments win.

    Args:
        device: e.g. ``"cuda:1"`` or ``"cpu"``; None picks one.
        dtype: a torch dtype or its name (``"float16"``, ``"bfloat16"``, ``"fp32"``); None picks one.
    """
    resolved_device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if dtype is None:
        return resolved_device, torch.float16 if resolved_device.type == "cuda" else torch.float32
    return resolved_device, _parse_dtype(dtype)


def _parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32", "bf16": "bfloat16"}
    name = aliases.get(dtype.lower(), dtype.lower())
    parsed = getattr(torch, name, None)
    if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
        raise ModelLoadError(
            f"dtype {dtype!r} is not a floating-point torch dtype; expected float16, bfloat16 or float32"
        )
    return parsed


def load_pipeline(
    path_or_id: str,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    allow_pickle: bool = False,
    config: str | None = None,
) -> Any:
    """Loads a pipeline of a registered model family (SD 1.x/2.x, SDXL, ...) from local files only.

    Args:
        path_or_id: a diffusers folder (with ``model_index.json``), a hub id in the local
            Hugging Face cache, a single-file ``.safetensors`` checkpoint, or a registered alias
            (:func:`cemaps.models.aliases.pipeline_alias`: ``"cemaps/tiny-sd"``, ``"cemaps/tiny-sdxl"``;
            ``"cemaps/toyworld"`` after :func:`cemaps.toyworld.register`).
        device: target device; default CUDA when available, else CPU.
        dtype: target dtype; default float16 on CUDA, float32 on CPU.
        allow_pickle: also read ``.ckpt/.bin`` weights (with ``torch.load(weights_only=True)``).
        config: for a single-file checkpoint, a local diffusers folder of the same family whose
            component configs describe it (needed when the hub config is not in the local cache);
            its ``model_index.json`` then names the family.

    Returns:
        The pipeline on ``device`` in ``dtype``, with the safety checker off and the
        progress bar disabled.

    Raises:
        ModelLoadError: the model is not on disk, its files are unsafe or unreadable, or its
            pipeline class is not a supported model family (the message lists the supported ones).
    """
    resolved_device, resolved_dtype = default_device_and_dtype(device, dtype)
    alias = pipeline_alias(path_or_id)
    if alias is TINY:
        pipe = tiny_pipeline(seed=0)
    elif alias is TINY_SDXL:
        pipe = tiny_sdxl_pipeline(seed=0)
    elif alias is not None and alias.model_id in TINY_DIT_BUILDERS:
        pipe = TINY_DIT_BUILDERS[alias.model_id](seed=0)
    elif alias is not None:
        pipe = alias.load()
    else:
        path = Path(path_or_id).expanduser()
        if path.is_dir():
            pipe = _from_diffusers_folder(path, allow_pickle)
        elif path.is_file():
            pipe = _from_single_file(path, allow_pickle, config)
        elif _looks_like_path(path_or_id):
            raise ModelLoadError(
                f"model path {path_or_id!r} does not exist; expected a diffusers folder or a checkpoint file"
            )
        else:
            pipe = _from_diffusers_folder(Path(_cached_snapshot(path_or_id)), allow_pickle)
    # Casting an already-float32 model warns about "modules to keep in float32"; cast only when needed.
    family = family_of(pipe)
    if any(getattr(pipe, part).dtype != resolved_dtype for part in (family.denoiser, "vae", *family.encoders)):
        pipe = pipe.to(dtype=resolved_dtype)
    if pipe.device != resolved_device:
        pipe = pipe.to(resolved_device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _looks_like_path(text: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that is not on disk is a missing path."""
    return (
        Path(text).suffix.lower() in WEIGHT_SUFFIXES
        or text.startswith((".", "~", os.sep))
        or text.count("/") > 1
        or (os.altsep is not None and os.altsep in text)
    )


def _cached_snapshot(repo_id: str) -> str:
    """The local folder of a hub model already in the cache; never downloads."""
    download_hint = (
        f"model {repo_id!r} is not a local path and not in the Hugging Face cache (offline); "
        f"download it once with `huggingface-cli download {repo_id}` or pass a local folder"
    )
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as error:
        raise ModelLoadError(download_hint) from error


def _no_safety_checker(pipeline_class: type) -> dict[str, Any]:
    """``safety_checker=None`` for the pipeline classes that have one (SD 1.x/2.x); nothing for the others."""
    parameters = inspect.signature(pipeline_class.__init__).parameters
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in parameters else {}


def _from_diffusers_folder(folder: Path, allow_pickle: bool) -> Any:
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"folder {str(folder)!r} has no model_index.json; expected a diffusers pipeline folder "
            "(for a UNet-only DreamBooth folder use a PersonalizedSpec with method='dreambooth')"
        )
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        pickled = sorted(p for p in component.iterdir() if is_pickle_file(p))
        if pickled and not any(component.glob(f"*{SAFETENSORS_SUFFIX}")):
            check_pickle_allowed(pickled[0], allow_pickle)
    pipeline_class = family_of_folder(folder).pipeline_class()
    try:
        # diffusers reads .bin files with torch.load(weights_only=True); use_safetensors=True
        # forbids them outright when the caller has not opted in.
        return pipeline_class.from_pretrained(
            folder,
            **_no_safety_checker(pipeline_class),
            local_files_only=True,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load diffusers folder {str(folder)!r}: {_first_line(error)}") from error


def _from_single_file(path: Path, allow_pickle: bool, config: str | None) -> Any:
    check_pickle_allowed(path, allow_pickle)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} has suffix {path.suffix!r}; expected .safetensors (or .ckpt with allow_pickle)"
        )
    config_folder = config if config is not None else _cached_config_for_checkpoint(path, allow_pickle)
    if not (Path(config_folder) / "model_index.json").is_file():
        raise ModelLoadError(
            f"config folder {config_folder!r} has no model_index.json; set `base_config:` in study.yaml "
            "(Python: config=DIR) to a diffusers folder of the checkpoint's model family"
        )
    pipeline_class = family_of_folder(config_folder).pipeline_class()
    try:
        return pipeline_class.from_single_file(
            str(path),
            config=str(config_folder),
            local_files_only=True,
            **_no_safety_checker(pipeline_class),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(
            f"cannot load checkpoint {str(path)!r} with config {config_folder!r}: {_first_line(error)}"
        ) from error


def _cached_config_for_checkpoint(path: Path, allow_pickle: bool) -> str:
    """The local diffusers config folder matching a single-file checkpoint, from the HF cache.

    diffusers would fall back to downloading the config when it is not cached, even
    with ``local_files_only=True``; resolving it here keeps loading offline.
    """
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, infer_diffusers_model_type

    from cemaps.models.safety import load_weights

    checkpoint = load_weights(path, allow_pickle=allow_pickle)
    family = family_of_single_file_type(infer_diffusers_model_type(checkpoint))
    repo_id = fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"]
    try:
        return snapshot_download(
            repo_id, local_files_only=True, allow_patterns=["*.json", "*/*.json", "*.txt", "*/*.txt"]
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError) as error:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} looks like {repo_id!r}, whose diffusers config is not in the local "
            "Hugging Face cache (offline); set `base_config:` in study.yaml (Python: config=DIR) to a diffusers "
            f"{family.name} folder"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
