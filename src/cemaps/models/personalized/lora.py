"""LoRA on the UNet families (SD 1.x/2.x, SDXL): read the file, check it against the pipeline, load it, verify.

cemaps parses every layout into :class:`~cemaps.models.personalized.lora_parse.LoraMatrices`
(component, module path in the installed model, down ``A``, up ``B``, alpha, DoRA magnitude;
:mod:`~cemaps.models.personalized.lora_parse`), takes the scaling the file records in tensors or in
its header (:mod:`~cemaps.models.personalized.lora_scaling`), checks each matrix against the module
it targets (exists, widths, rank, kernel, finite), loads the file with diffusers' readers and
peft (:mod:`~cemaps.models.personalized.lora_load`; kohya keys through diffusers' converters,
:mod:`~cemaps.models.personalized.lora_kohya`), and then checks that every module it names was
wrapped with exactly the file's ``A``, ``B``, magnitude and ``scaling = scale * alpha / r`` (so
peft adds ``delta W = scale * alpha / r * B @ A``, DoRA rescaled to its magnitudes) and nothing
else was wrapped — so a diffusers/peft/transformers version that maps keys or scalings
differently fails loudly instead of silently changing other weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.hashing import source_sha256
from cemaps.models.personalized.lora_kohya import compose_tucker_keys, is_kohya
from cemaps.models.personalized.lora_load import load_adapter
from cemaps.models.personalized.lora_load import verify_loaded as _verify_loaded  # benchmarks/model_checks.py times it
from cemaps.models.personalized.lora_parse import LoraMatrices, lora_components, module_names, parse_lora
from cemaps.models.personalized.lora_scaling import apply_file_scaling, file_header
from cemaps.models.personalized.lora_sgm import sgm_block_names
from cemaps.models.personalized.spec import (
    AppliedModel,
    PersonalizedSpec,
    adapter_names,
    check_finite,
    family_hint,
    resolve_weight_file,
)
from cemaps.models.safety import load_weights

__all__ = ["LoraMatrices", "applied_lora", "check_lora", "check_matrices", "parse_lora", "read_lora", "remove_lora"]

PREFERRED_FILES = ("pytorch_lora_weights.safetensors",)


def check_matrices(entries: list[LoraMatrices], pipe: StableDiffusionPipeline, what: str) -> None:
    """Widths, rank, kernel and finiteness of every matrix against the module it targets.

    Raises:
        ModelLoadError: naming the key, its shape and the module's width (with the model family
            a width belongs to, e.g. 1024 for SD 2.x).
    """
    modules = module_names(pipe)
    for entry in entries:
        layer = modules[entry.component][entry.module]
        layer = getattr(layer, "base_layer", layer)
        conv = isinstance(layer, torch.nn.Conv2d)
        in_dim = layer.in_channels if conv else getattr(layer, "in_features", None)
        out_dim = layer.out_channels if conv else getattr(layer, "out_features", None)
        if in_dim is None:
            raise ModelLoadError(
                f"{what} has key {entry.down_key!r} for {entry.component}.{entry.module}, a {type(layer).__name__}; LoRA targets Linear and Conv2d layers"
            )
        target = f"{entry.component}.{entry.module}"
        if entry.down.ndim != (4 if conv else 2) or entry.up.ndim != entry.down.ndim:
            raise ModelLoadError(
                f"{what} has key {entry.down_key!r} of shape {tuple(entry.down.shape)} with up {tuple(entry.up.shape)}; "
                f"{target} is a {'Conv2d' if conv else 'Linear'} layer"
            )
        if entry.down.shape[1] != in_dim:
            raise ModelLoadError(
                f"{what} has key {entry.down_key!r} of shape {tuple(entry.down.shape)}, but {target} has input width "
                f"{in_dim}, not {entry.down.shape[1]}{family_hint(entry.down.shape[1], in_dim)} (another architecture?)"
            )
        if entry.up.shape[0] != out_dim:
            raise ModelLoadError(
                f"{what}: the up matrix of {entry.down_key!r} has shape {tuple(entry.up.shape)}, but {target} has output width "
                f"{out_dim}, not {entry.up.shape[0]}{family_hint(entry.up.shape[0], out_dim)} (another architecture?)"
            )
        if entry.up.shape[1] != entry.down.shape[0]:
            raise ModelLoadError(
                f"{what}: {entry.down_key!r} has rank {entry.down.shape[0]} but its up matrix rank {entry.up.shape[1]}"
            )
        if conv and (tuple(entry.down.shape[2:]) != tuple(layer.kernel_size) or tuple(entry.up.shape[2:]) != (1, 1)):
            raise ModelLoadError(
                f"{what}: {entry.down_key!r} has kernel {tuple(entry.down.shape[2:])} (up {tuple(entry.up.shape[2:])}); "
                f"{target} has kernel {tuple(layer.kernel_size)} (expected up kernel (1, 1))"
            )


def read_lora(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec
) -> tuple[Path, dict[str, torch.Tensor], list[LoraMatrices], str]:
    """(file, tensors to load, parsed and checked matrices, layout) of a LoRA spec; the pipeline is not changed.

    The tensors are the file's, with a kohya Tucker LoCon's ``lora_mid`` composed into its
    ``lora_down``; each matrix carries the scaling the file records, in tensors or in its header
    (:func:`~cemaps.models.personalized.lora_scaling.apply_file_scaling`).
    """
    source = resolve_weight_file(spec, PREFERRED_FILES)
    raw = load_weights(source, allow_pickle=spec.allow_pickle)
    what = f"LoRA file {str(source)!r}"
    check_finite(raw, what)
    state = sgm_block_names(raw, pipe, what)
    state = compose_tucker_keys(state, what) if is_kohya(state) else state
    entries, layout = parse_lora(state, pipe, what)
    entries = apply_file_scaling(entries, layout, file_header(source), what)
    check_matrices(entries, pipe, what)
    return source, state, entries, layout


def check_lora(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> str:
    """Everything :func:`applied_lora` checks before loading, without changing ``pipe``; returns the layout."""
    if spec.model_id in adapter_names(pipe):
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    return read_lora(pipe, spec)[3]


@contextmanager
def applied_lora(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    """Loads a LoRA as adapter ``spec.model_id`` at ``spec.scale``; deletes it (and unloads peft) on exit."""
    if spec.model_id in adapter_names(pipe):
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    source, state, entries, layout = read_lora(pipe, spec)
    what = f"LoRA file {str(source)!r}"
    try:
        try:
            installed = {c: set(names) for c, names in module_names(pipe).items()}
            load_adapter(pipe, source, state, entries, layout, installed, spec.model_id, what)
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise ModelLoadError(
                f"{what}: diffusers could not load it: {str(error).strip().splitlines()[0]}"
            ) from error
        pipe.set_adapters([spec.model_id], adapter_weights=[spec.scale])
        wrapped = _verify_loaded(pipe, entries, spec, what)
        yield AppliedModel(
            spec=spec,
            sha256=source_sha256(spec.path),  # type: ignore[arg-type]
            source=str(source),
            format=layout,
            n_tensors_changed=len(wrapped),
            n_params_changed=sum(m.base_layer.weight.numel() for m in wrapped.values()),
        )
    finally:
        remove_lora(pipe, spec.model_id)


def remove_lora(pipe: StableDiffusionPipeline, adapter: str) -> None:
    """Deletes ``adapter``; when it was the last one, makes the modules plain ``nn.Linear``/``nn.Conv2d`` again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    present = adapter_names(pipe)
    if adapter in present:
        pipe.delete_adapters(adapter)
    wrappers = any(
        isinstance(m, BaseTunerLayer)
        for c in lora_components(pipe)
        if getattr(pipe, c, None) is not None
        for m in getattr(pipe, c).modules()
    )
    if wrappers and not present - {adapter}:
        # delete_adapters leaves empty peft wrappers; unloading makes the modules plain again
        pipe.unload_lora_weights()
