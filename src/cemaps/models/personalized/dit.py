"""Personalized transformer-family models (SD3 / SD3.5, Flux, PixArt-Sigma): what loads and what is refused.

- LoRA: :mod:`cemaps.models.personalized.lora_dit` (diffusers' loaders and converters, verified).
- DreamBooth: a fully fine-tuned transformer, copied into the base transformer in place and copied
  back from a CPU snapshot (:class:`~cemaps.models.personalized.spec.BaseWeights`), as for UNets.
  Read from a diffusers pipeline folder (``model_index.json`` + ``transformer/``; fine-tuned text
  encoders in it are swapped too) or a transformer folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``, sharded or not). Every tensor must match the base's
  names and shapes.
- Textual Inversion: refused in one line. SD3 and PixArt pipelines have no
  ``load_textual_inversion`` in diffusers; Flux's puts the vectors into CLIP only, whose pooled
  vector is all Flux reads from it, so the T5 tokens that the attention maps are over would not
  carry the new token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cemaps.errors import ModelLoadError
from cemaps.models.families import family_of
from cemaps.models.hashing import source_sha256
from cemaps.models.personalized.lora_dit import applied_dit_lora, check_dit_lora
from cemaps.models.personalized.spec import (
    AppliedModel,
    BaseWeights,
    PersonalizedSpec,
    check_finite,
    copy_into,
    refuse_adapters,
)

_IGNORED_SUFFIXES = ("position_ids",)


def refuse_textual_inversion(pipe: Any, spec: PersonalizedSpec) -> None:
    family = family_of(pipe)
    why = (
        "diffusers' loader puts it into CLIP only, whose pooled vector is all Flux reads from it (the T5 tokens "
        "the maps are over would not carry the token)"
        if hasattr(pipe, "load_textual_inversion")
        else f"diffusers' {type(pipe).__name__} has no Textual Inversion loader"
    )
    raise ModelLoadError(f"model {spec.model_id!r}: Textual Inversion on {family.name} is not supported: {why}")


def _dreambooth_states(pipe: Any, spec: PersonalizedSpec) -> dict[str, dict[str, torch.Tensor]]:
    """component -> tuned state dict, checked against the base's names and shapes."""
    from cemaps.models.personalized.dreambooth import _component_weight_file

    family = family_of(pipe)
    path = Path(spec.path).expanduser()  # type: ignore[arg-type]
    if not path.is_dir():
        raise ModelLoadError(
            f"model {spec.model_id!r}: {str(path)!r} is not a folder; a {family.name} DreamBooth model is a "
            f"diffusers pipeline folder or a {family.denoiser} folder"
        )
    if (path / "model_index.json").is_file():
        folders = {c: path / c for c in family.swappable_components if (path / c / "config.json").is_file()}
        if family.denoiser not in folders:
            raise ModelLoadError(f"model {spec.model_id!r}: pipeline folder {str(path)!r} has no {family.denoiser}/")
    elif (path / "config.json").is_file():
        folders = {family.denoiser: path}
    else:
        raise ModelLoadError(
            f"model {spec.model_id!r}: folder {str(path)!r} has neither model_index.json nor config.json; "
            f"expected a diffusers pipeline folder or a {family.denoiser} folder"
        )
    states = {}
    for component, folder in folders.items():
        expected = json.loads((folder / "config.json").read_text()).get("_class_name")
        module = getattr(pipe, component)
        if expected is not None and expected != type(module).__name__ and component == family.denoiser:
            raise ModelLoadError(
                f"model {spec.model_id!r}: {str(folder)!r} holds a {expected}; the base's {component} is a "
                f"{type(module).__name__} (another family?)"
            )
        state = {
            k: v
            for k, v in _component_weight_file(folder, spec.allow_pickle).items()
            if not k.endswith(_IGNORED_SUFFIXES)
        }
        what = f"DreamBooth {component} {str(folder)!r}"
        check_finite(state, what)
        base = {k: v for k, v in module.state_dict().items() if not k.endswith(_IGNORED_SUFFIXES)}
        missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
        if missing or extra:
            name = (missing or extra)[0]
            raise ModelLoadError(
                f"{what}: {'lacks' if missing else 'has extra'} tensor {name!r} "
                f"({len(missing)} missing, {len(extra)} extra; another architecture?)"
            )
        for name, tensor in state.items():
            if tensor.shape != base[name].shape:
                raise ModelLoadError(
                    f"{what}: tensor {name!r} has shape {tuple(tensor.shape)}, the base's {tuple(base[name].shape)}"
                )
        states[component] = state
    return states


@contextmanager
def applied_dit_dreambooth(pipe: Any, spec: PersonalizedSpec, base: BaseWeights | None) -> Iterator[AppliedModel]:
    """Copies the tuned transformer (and encoders) into ``pipe`` in place; copies the base back on exit."""
    refuse_adapters(pipe, f"applying DreamBooth model {spec.model_id!r}")
    states = _dreambooth_states(pipe, spec)
    snapshot = base if base is not None else BaseWeights(pipe, tuple(states))
    changed = sum(
        not torch.equal(t.to(snapshot.components[c][n].dtype), snapshot.components[c][n])
        for c, state in states.items()
        for n, t in state.items()
    )
    try:
        for component, state in states.items():
            copy_into(getattr(pipe, component), state)
        yield AppliedModel(
            spec=spec,
            sha256=source_sha256(spec.path),  # type: ignore[arg-type]
            source=str(spec.path),
            format="diffusers",
            n_tensors_changed=changed,
            n_params_changed=sum(t.numel() for state in states.values() for t in state.values()),
        )
    finally:
        snapshot.restore(pipe, tuple(states))


@contextmanager
def applied_dit(pipe: Any, spec: PersonalizedSpec, base: BaseWeights | None) -> Iterator[AppliedModel]:
    """:func:`cemaps.models.personalized.applied` for a transformer family."""
    if spec.method == "lora":
        context = applied_dit_lora(pipe, spec)
    elif spec.method == "dreambooth":
        context = applied_dit_dreambooth(pipe, spec, base)
    else:
        refuse_textual_inversion(pipe, spec)
    with context as model:
        yield model


def check_dit(pipe: Any, spec: PersonalizedSpec) -> str:
    """:func:`cemaps.models.personalized.check` for a transformer family."""
    if spec.method == "lora":
        return check_dit_lora(pipe, spec)
    if spec.method == "dreambooth":
        _dreambooth_states(pipe, spec)
        return "diffusers"
    refuse_textual_inversion(pipe, spec)
    raise AssertionError("unreachable")  # refuse_textual_inversion always raises


def is_dit(pipe: Any) -> bool:
    """Whether ``pipe``'s family denoises with a transformer (its personalizations are read here)."""
    return getattr(pipe, "unet", None) is None and family_of(pipe).denoiser == "transformer"
