"""LoRA on the transformer families (SD3 / SD3.5, Flux), through diffusers' own loaders and converters.

A file is read by cemaps (safetensors; pickle only with ``allow_pickle``), converted to diffusers'
layout by the pipeline class's own ``lora_state_dict`` (which reads diffusers/peft files and, for
Flux, kohya sd-scripts, XLabs and BFL-control files), checked against the modules it targets
(present, ``Linear``, widths, rank, finite), loaded with ``load_lora_weights`` as adapter
``spec.model_id`` at ``spec.scale``, and then verified: every module the converted file names is
wrapped with exactly its ``A`` and ``B`` and ``scaling = scale * lora_alpha / r`` (``lora_alpha``
from the file's ``lora_adapter_metadata``, as diffusers writes it; ``r`` otherwise, kohya's alpha
being folded into the converted factors; ``lora_alpha / sqrt(r)`` where the metadata sets
``use_rslora``), a DoRA file's modules (peft ``lora_magnitude_vector`` keys) with exactly its
magnitudes, and no other module is wrapped. On exit the adapter is
deleted and, when it was the last one, ``unload_lora_weights`` makes the modules plain again.

A family whose pipeline class has no LoRA loader in diffusers (PixArt-Sigma) is refused in one line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cemaps.errors import ModelLoadError
from cemaps.models.families import family_of
from cemaps.models.hashing import source_sha256
from cemaps.models.personalized.lora_scaling import file_header, kohya_header_alphas, scaling
from cemaps.models.personalized.spec import AppliedModel, PersonalizedSpec, adapter_names, check_finite
from cemaps.models.personalized.spec import resolve_weight_file as _resolve
from cemaps.models.safety import load_weights

PREFERRED_FILES = ("pytorch_lora_weights.safetensors",)
_KEY = re.compile(r"^(?P<component>[a-z_0-9]+)\.(?P<path>.+)\.lora_(?P<role>A|B)\.weight$")
_MAGNITUDE = ".lora_magnitude_vector"  # peft's DoRA magnitude, [out]
_TEXT_MODEL = "text_model."


def refuse_without_loader(pipe: Any, what: str) -> None:
    """Raises when the pipeline's family has no diffusers LoRA loader (PixArt-Sigma)."""
    family = family_of(pipe)
    if not family.lora_components():
        raise ModelLoadError(
            f"{what}: {family.name} ({type(pipe).__name__}) has no LoRA loader in diffusers; "
            "LoRA is not supported for this family"
        )


def read_dit_lora(
    pipe: Any, spec: PersonalizedSpec
) -> tuple[Path, dict[str, torch.Tensor], str, dict, dict[str, torch.Tensor]]:
    """(file, converted tensors, layout, adapter metadata, file tensors) of a LoRA for ``pipe``; ``pipe`` is not changed.

    The file tensors are as read, with a kohya file's header alpha (``ss_network_alpha``) added as
    ``.alpha`` tensors where it has none (:func:`~cemaps.models.personalized.lora_scaling.kohya_header_alphas`).

    Raises:
        ModelLoadError: no loader for the family, an unreadable or unsafe file, a key for a component
            the family's LoRA does not touch, a module that does not exist or is not ``Linear``,
            mismatched widths or ranks, non-finite values.
    """
    refuse_without_loader(pipe, f"model {spec.model_id!r}")
    source = _resolve(spec, PREFERRED_FILES)
    what = f"LoRA file {str(source)!r}"
    raw = load_weights(source, allow_pickle=spec.allow_pickle)
    check_finite(raw, what)
    layout = _layout(raw)
    if layout == "kohya":  # kohya alphas only in the header: as tensors, so that diffusers' converter folds them in
        raw = kohya_header_alphas(raw, file_header(source), what)
    try:
        converted = type(pipe).lora_state_dict(dict(raw))
    except (ValueError, KeyError, RuntimeError, IndexError) as error:
        raise ModelLoadError(
            f"{what}: diffusers cannot read it as a {family_of(pipe).name} LoRA: {_first(error)}"
        ) from error
    converted = converted[0] if isinstance(converted, tuple) else converted
    _check(converted, pipe, what)
    return source, converted, layout, _metadata(source), raw


def _layout(raw: Mapping[str, torch.Tensor]) -> str:
    if any(".lora_down.weight" in k for k in raw):
        return "kohya"
    if any("processor" in k for k in raw):
        return "xlabs"
    return "diffusers"


def _metadata(source: Path) -> dict:
    """diffusers' ``lora_adapter_metadata`` (``{"transformer.r": ..., "transformer.lora_alpha": ...}``), if any."""
    if source.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("lora_adapter_metadata")
    return json.loads(raw) if raw else {}


def _entries(state: Mapping[str, torch.Tensor], pipe: Any, what: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(component, installed module path) -> (A key, B key) of every module the converted file names."""
    family = family_of(pipe)
    allowed = family.lora_components()
    entries: dict[tuple[str, str], dict[str, str]] = {}
    for key in state:
        match = _KEY.match(key)
        if match is None:
            if key.endswith((".alpha", _MAGNITUDE)):
                continue
            raise ModelLoadError(f"{what}: key {key!r} is not a LoRA factor (<component>.<module>.lora_A/B.weight)")
        component = match["component"]
        if component not in allowed:
            raise ModelLoadError(
                f"{what}: key {key!r} targets {component!r}; {family.name} LoRA files hold {', '.join(allowed)}"
            )
        model = getattr(pipe, component, None)
        if model is None:
            raise ModelLoadError(f"{what}: key {key!r} targets {component!r}, which this pipeline does not have")
        path = _installed(match["path"], model)
        if path is None:
            raise ModelLoadError(f"{what}: key {key!r} names no module of the {component} (another architecture?)")
        entries.setdefault((component, path), {})[match["role"]] = key
    for target, roles in entries.items():
        if set(roles) != {"A", "B"}:
            raise ModelLoadError(f"{what}: {'.'.join(target)} has lora_{next(iter(roles))} but not both factors")
    return {target: (roles["A"], roles["B"]) for target, roles in entries.items()}


def _installed(path: str, model: torch.nn.Module) -> str | None:
    names = dict(model.named_modules())
    for candidate in (path, path.removeprefix(_TEXT_MODEL), _TEXT_MODEL + path):
        if candidate in names:
            return candidate
    return None


def _check(state: Mapping[str, torch.Tensor], pipe: Any, what: str) -> None:
    for (component, path), (a_key, b_key) in _entries(state, pipe, what).items():
        layer = getattr(pipe, component).get_submodule(path)
        layer = getattr(layer, "base_layer", layer)
        down, up = state[a_key], state[b_key]
        if not isinstance(layer, torch.nn.Linear):
            raise ModelLoadError(f"{what}: {a_key!r} targets {component}.{path}, a {type(layer).__name__}, not Linear")
        if down.ndim != 2 or up.ndim != 2 or down.shape[1] != layer.in_features or up.shape[0] != layer.out_features:
            raise ModelLoadError(
                f"{what}: {a_key!r} {tuple(down.shape)} / up {tuple(up.shape)} do not fit {component}.{path} "
                f"({layer.in_features} -> {layer.out_features}; another architecture?)"
            )
        if up.shape[1] != down.shape[0]:
            raise ModelLoadError(f"{what}: {a_key!r} has rank {down.shape[0]} but its up matrix rank {up.shape[1]}")
        magnitude = state.get(f"{component}.{path}{_MAGNITUDE}")
        if magnitude is not None and tuple(magnitude.shape) != (layer.out_features,):
            raise ModelLoadError(
                f"{what}: DoRA magnitude of {component}.{path} has shape {tuple(magnitude.shape)}; "
                f"expected [{layer.out_features}] (one per output row)"
            )
    named = {f"{c}.{p}{_MAGNITUDE}" for c, p in _entries(state, pipe, what)}
    stray = sorted(k for k in state if k.endswith(_MAGNITUDE) and k not in named)
    if stray:
        raise ModelLoadError(f"{what} has DoRA magnitude {stray[0]!r} without its LoRA matrices")


def check_dit_lora(pipe: Any, spec: PersonalizedSpec) -> str:
    """Everything :func:`applied_dit_lora` checks before loading, without changing ``pipe``; returns the layout."""
    refuse_without_loader(pipe, f"model {spec.model_id!r}")
    if spec.model_id in adapter_names(pipe):
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    return read_dit_lora(pipe, spec)[2]


@contextmanager
def applied_dit_lora(pipe: Any, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    """Loads a SD3/Flux LoRA as adapter ``spec.model_id`` at ``spec.scale``, verified; removes it on exit."""
    refuse_without_loader(pipe, f"model {spec.model_id!r}")
    if spec.model_id in adapter_names(pipe):
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    source, state, layout, metadata, raw = read_dit_lora(pipe, spec)
    what = f"LoRA file {str(source)!r}"
    try:
        try:
            if source.suffix == ".safetensors" and layout != "kohya":  # the file, so diffusers reads its metadata
                pipe.load_lora_weights(
                    str(source.parent), weight_name=source.name, adapter_name=spec.model_id, local_files_only=True
                )
            else:  # kohya (header alphas added) or a pickle file the caller opted into: the tensors cemaps read
                pipe.load_lora_weights(dict(raw), adapter_name=spec.model_id)
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            raise ModelLoadError(f"{what}: diffusers could not load it: {_first(error)}") from error
        pipe.set_adapters([spec.model_id], adapter_weights=[spec.scale])
        wrapped = _verify(pipe, state, spec, metadata, what)
        yield AppliedModel(
            spec=spec,
            sha256=source_sha256(spec.path),  # type: ignore[arg-type]
            source=str(source),
            format=layout,
            n_tensors_changed=len(wrapped),
            n_params_changed=sum(m.base_layer.weight.numel() for m in wrapped.values()),
        )
    finally:
        remove_dit_lora(pipe, spec.model_id)


def remove_dit_lora(pipe: Any, adapter: str) -> None:
    """Deletes ``adapter``; when none is left, makes the wrapped modules plain ``nn.Linear`` again."""
    if adapter in adapter_names(pipe):
        pipe.delete_adapters(adapter)
    if not adapter_names(pipe) and _wrapped(pipe, None):
        pipe.unload_lora_weights()  # delete_adapters leaves empty peft wrappers


def _wrapped(pipe: Any, adapter: str | None) -> dict[tuple[str, str], torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for component in family_of(pipe).lora_components():
        model = getattr(pipe, component, None)
        if model is not None:
            out |= {
                (component, path): m
                for path, m in model.named_modules()
                if isinstance(m, BaseTunerLayer) and (adapter is None or adapter in getattr(m, "lora_A", {}))
            }
    return out


def _verify(pipe: Any, state: Mapping[str, torch.Tensor], spec: PersonalizedSpec, metadata: dict, what: str) -> dict:
    import diffusers
    import peft

    versions = f"diffusers {diffusers.__version__}, peft {peft.__version__}"
    expected = _entries(state, pipe, what)
    wrapped = _wrapped(pipe, spec.model_id)
    extra = sorted(set(wrapped) - set(expected))
    if extra:
        raise ModelLoadError(f"{what}: {versions} wrapped {'.'.join(extra[0])}, which the file does not name")
    for target, (a_key, b_key) in sorted(expected.items()):
        layer = wrapped.get(target)
        if layer is None:
            raise ModelLoadError(f"{what}: {versions} did not load {a_key!r} into {'.'.join(target)}")
        down, up = layer.lora_A[spec.model_id].weight, layer.lora_B[spec.model_id].weight
        rank = state[a_key].shape[0]
        alpha = _alpha(metadata, target, rank)
        factor = spec.scale * scaling(alpha, rank, bool(metadata.get(f"{target[0]}.use_rslora", False)))
        magnitude = state.get(f"{'.'.join(target)}{_MAGNITUDE}")
        dora = bool(getattr(layer, "use_dora", {}).get(spec.model_id, False))
        same = (
            torch.equal(down.detach().cpu(), state[a_key].to(down.dtype))
            and torch.equal(up.detach().cpu(), state[b_key].to(up.dtype))
            and math.isclose(float(layer.scaling[spec.model_id]), factor, rel_tol=1e-6, abs_tol=1e-12)
            and dora == (magnitude is not None)
        )
        if same and magnitude is not None:
            loaded = layer.lora_magnitude_vector[spec.model_id].weight.detach().cpu()
            same = torch.equal(loaded, magnitude.to(loaded.dtype))
        if not same:
            raise ModelLoadError(
                f"{what}: {versions} loaded {'.'.join(target)} with other factors or scaling than {a_key!r} "
                f"(expected scale*alpha/r = {factor:g}); cemaps refuses an unverified load"
            )
    return wrapped


def _alpha(metadata: dict, target: tuple[str, str], rank: int) -> float:
    """The ``lora_alpha`` diffusers gives the module: the metadata's pattern or default, else the rank."""
    component, path = target
    pattern = metadata.get(f"{component}.alpha_pattern") or {}
    for key, value in pattern.items():
        if path == key or path.endswith("." + key):
            return float(value)
    return float(metadata.get(f"{component}.lora_alpha", rank))


def _first(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
