"""DreamBooth: copy a fully fine-tuned UNet (and text encoder) into the base modules in place, copy the base back.

Layouts read (rows of the "Input forms" table of docs/conformance.md):

- a diffusers pipeline folder (``model_index.json``, ``unet/``, optional ``text_encoder/``),
  sharded or not;
- a diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``);
- a single file with ``unet.*`` / ``text_encoder.*`` keys, or a bare UNet state dict;
- an original Stable Diffusion (CompVis ``ldm``) single file: ``model.diffusion_model.*`` (UNet),
  ``cond_stage_model.transformer.*`` (CLIP text model), ``first_stage_model.*`` (VAE, not
  swapped: DreamBooth tunes UNet and text encoder), converted with diffusers' own
  ``convert_ldm_unet_checkpoint`` / ``convert_ldm_clip_checkpoint``;
- an SDXL (Stability SGM) single file: the same UNet keys, ``conditioner.embedders.0.transformer.*``
  (CLIP ViT-L) and ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG, converted with diffusers'
  ``convert_open_clip_checkpoint``).

Which components may be swapped is the base's family's (denoiser and text encoders,
:attr:`ModelFamily.swappable_components`); weights of another family are refused naming both.

The base comes back bit-exactly from a CPU snapshot (:class:`BaseWeights`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.families import family_of
from cemaps.models.hashing import source_sha256
from cemaps.models.personalized.spec import (
    AppliedModel,
    BaseWeights,
    PersonalizedSpec,
    check_family,
    check_finite,
    copy_into,
    family_hint,
    refuse_adapters,
    refuse_other_kind,
)
from cemaps.models.safety import SAFETENSORS_SUFFIX, load_weights

# Non-persistent buffers that older transformers versions saved; they carry no weights.
_IGNORED_SUFFIXES = ("position_ids",)
_FULL_MODEL_KINDS = ("a full model", "a full original-SD checkpoint", "unrecognised weights")


def _component_weight_file(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Reads a diffusers/transformers component folder's weights, sharded or not."""
    for stem in ("diffusion_pytorch_model", "model"):
        index = folder / f"{stem}{SAFETENSORS_SUFFIX}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_weights(folder / shard).items()}
        for suffix in (SAFETENSORS_SUFFIX, ".bin"):
            if (folder / f"{stem}{suffix}").is_file():
                return load_weights(folder / f"{stem}{suffix}", allow_pickle)
    raise ModelLoadError(f"folder {str(folder)!r} has no diffusion_pytorch_model.safetensors or model.safetensors")


def split_single_file(
    checkpoint: dict[str, torch.Tensor], pipe: StableDiffusionPipeline, what: str
) -> tuple[dict[str, dict[str, torch.Tensor]], str]:
    """Splits a single-file checkpoint into diffusers-named component state dicts; returns (states, layout)."""
    refuse_other_kind(checkpoint, _FULL_MODEL_KINDS, what, pipe)
    family = family_of(pipe)
    if any(key.startswith("model.diffusion_model.") for key in checkpoint):
        from diffusers.loaders.single_file_utils import (
            convert_ldm_clip_checkpoint,
            convert_ldm_unet_checkpoint,
            convert_open_clip_checkpoint,
        )

        try:
            states = {family.denoiser: convert_ldm_unet_checkpoint(checkpoint, dict(family.denoiser_of(pipe).config))}
        except (KeyError, IndexError, RuntimeError) as error:
            raise ModelLoadError(
                f"{what}: cannot convert its original-SD UNet keys ({error!r}); another architecture?"
            ) from error
        if any(
            key.startswith(("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."))
            for key in checkpoint
        ):
            states["text_encoder"] = convert_ldm_clip_checkpoint(checkpoint)
        open_clip = "conditioner.embedders.1.model."
        if "text_encoder_2" in family.encoders and any(key.startswith(open_clip) for key in checkpoint):
            states["text_encoder_2"] = convert_open_clip_checkpoint(pipe.text_encoder_2, checkpoint, prefix=open_clip)
        return states, "ldm"
    prefixed = {
        c: {k[len(c) + 1 :]: v for k, v in checkpoint.items() if k.startswith(c + ".")}
        for c in family.swappable_components
    }
    if any(prefixed.values()):
        return {c: s for c, s in prefixed.items() if s}, "diffusers-single-file"
    return {family.denoiser: checkpoint}, "unet-state-dict"


def dreambooth_states(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec
) -> tuple[dict[str, dict[str, torch.Tensor]], str, str]:
    """Returns (component states, source, format) for a DreamBooth folder or file."""
    path = Path(spec.path).expanduser()  # type: ignore[arg-type]
    what = f"DreamBooth model {spec.model_id!r} at {str(path)!r}"
    if path.is_file():
        states, layout = split_single_file(load_weights(path, spec.allow_pickle), pipe, what)
        return states, str(path), layout
    if not path.is_dir():
        raise ModelLoadError(f"{what}: path does not exist")
    family = family_of(pipe)
    if (path / "model_index.json").is_file():
        folders = {c: path / c for c in family.swappable_components if (path / c).is_dir()}
        if family.denoiser not in folders:
            raise ModelLoadError(f"{what}: pipeline folder has no {family.denoiser}/ subfolder")
        layout = "diffusers-pipeline"
    elif (path / "config.json").is_file():
        folders, layout = {family.denoiser: path}, "diffusers-unet"
    else:
        raise ModelLoadError(f"{what}: folder has neither model_index.json (pipeline) nor config.json (UNet only)")
    return {c: _component_weight_file(folder, spec.allow_pickle) for c, folder in folders.items()}, str(path), layout


def check_state_matches(
    component: str, module: torch.nn.Module, state: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Returns ``state`` without ignorable buffers; raises on the first key, shape or non-finite mismatch."""
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith(_IGNORED_SUFFIXES)}
    state = _align_text_model_prefix(state, set(expected))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ModelLoadError(
            f"{what}: {component} key {unexpected[0]!r} does not exist in the base {component} (another architecture?)"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(f"{what}: {component} key {missing[0]!r} is missing from the checkpoint")
    for name in sorted(expected):
        if state[name].shape != expected[name].shape:
            widths = [a for a, b in zip(state[name].shape, expected[name].shape, strict=False) if a != b]
            hint = (
                family_hint(
                    widths[0], [b for a, b in zip(state[name].shape, expected[name].shape, strict=False) if a != b][0]
                )
                if widths
                else ""
            )
            raise ModelLoadError(
                f"{what}: {component} parameter {name!r} has shape {tuple(state[name].shape)}, "
                f"the base has {tuple(expected[name].shape)}{hint}"
            )
    check_finite({f"{component}.{k}": v for k, v in state.items()}, what)
    return state


def _align_text_model_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Bridges CLIP checkpoints saved with ``text_model.`` key prefixes and modules without them.

    transformers 5 names CLIPTextModel parameters without the prefix that SD v1.5 files
    (and transformers 4) use; it renames at load time, so an in-place copy must too.
    """
    prefix = "text_model."
    if set(state) == expected:
        return state
    if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        return {k[len(prefix) :]: v for k, v in state.items()}
    if all(k.startswith(prefix) for k in expected) and not any(k.startswith(prefix) for k in state):
        return {prefix + k: v for k, v in state.items()}
    return state


def read_dreambooth(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec
) -> tuple[dict[str, dict[str, torch.Tensor]], str, str]:
    """(checked component states, source, layout) of a DreamBooth spec; ``pipe`` is not changed."""
    states, source, layout = dreambooth_states(pipe, spec)
    what = f"DreamBooth model {spec.model_id!r} at {source!r}"
    check_family([f"{c}.{key}" for c, state in states.items() for key in state], pipe, what)
    return {c: check_state_matches(c, getattr(pipe, c), s, what) for c, s in states.items()}, source, layout


def check_dreambooth(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> str:
    """Everything :func:`applied_dreambooth` checks, without changing ``pipe``; returns the layout."""
    refuse_adapters(pipe, f"a DreamBooth swap to {spec.model_id!r}")
    return read_dreambooth(pipe, spec)[2]


@contextmanager
def applied_dreambooth(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec, base: BaseWeights | None
) -> Iterator[AppliedModel]:
    """Copies the tuned components in; on exit copies ``base`` (or a snapshot taken here) back."""
    refuse_adapters(pipe, f"a DreamBooth swap to {spec.model_id!r}")
    states, source, layout = read_dreambooth(pipe, spec)
    what = f"DreamBooth model {spec.model_id!r} at {source!r}"
    snapshot = base if base is not None else BaseWeights(pipe, tuple(states))
    missing = [c for c in states if c not in snapshot.components]
    if missing:
        raise ModelLoadError(f"{what}: the base snapshot has no {missing[0]!r}; take BaseWeights with that component")
    changed = [
        (c, name)
        for c, state in states.items()
        for name, tensor in state.items()
        if not torch.equal(tensor.to(snapshot.components[c][name].dtype), snapshot.components[c][name])
    ]
    swapped = tuple(states)
    try:
        for component in swapped:
            copy_into(getattr(pipe, component), states.pop(component))
        yield AppliedModel(
            spec=spec,
            sha256=source_sha256(spec.path),  # type: ignore[arg-type]
            source=source,
            format=layout,
            n_tensors_changed=len(changed),
            n_params_changed=sum(snapshot.components[c][name].numel() for c, name in changed),
        )
    finally:
        snapshot.restore(pipe, swapped)
