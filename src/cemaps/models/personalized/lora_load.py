"""Loading a checked LoRA into a pipeline with diffusers, and verifying what peft built against the file.

The loading is ``load_lora_weights(path)``'s (``lora_state_dict``, ``load_lora_into_unet``,
``load_lora_into_text_encoder``) with two differences: kohya files are converted by cemaps with
diffusers' converters (:mod:`cemaps.models.personalized.lora_kohya`), and the file's diffusers
adapter metadata is passed along (a state dict in memory has none). The verification compares
every wrapped module with cemaps' own reading of the file (:mod:`cemaps.models.personalized.lora`,
:mod:`cemaps.models.personalized.lora_scaling`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.personalized.lora_kohya import kohya_to_peft
from cemaps.models.personalized.lora_scaling import kohya_alpha_tensors
from cemaps.models.personalized.spec import SWAPPABLE_COMPONENTS, PersonalizedSpec

if TYPE_CHECKING:
    from cemaps.models.personalized.lora import LoraMatrices


def lora_wrapped_modules(pipe: StableDiffusionPipeline, adapter: str) -> dict[tuple[str, str], torch.nn.Module]:
    """(component, module path) -> peft layer holding ``adapter``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = {}
    for component in SWAPPABLE_COMPONENTS:
        module = getattr(pipe, component, None)
        if module is not None:
            wrapped |= {
                (component, path): m
                for path, m in module.named_modules()
                if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {})
            }
    return wrapped


def verify_loaded(
    pipe: StableDiffusionPipeline, entries: list[LoraMatrices], spec: PersonalizedSpec, what: str
) -> dict:
    """Every named module wrapped with exactly the file's factors and scaling, and nothing else wrapped.

    peft applies ``scaling * B @ A`` (DoRA: rescaled to magnitude ``m`` per output row); checking
    A, B, m (bit-exact after the cast to the adapter's dtype) and ``scaling == scale * alpha / r``
    against cemaps' own reading of the file (tensors and header, never the loader's config) pins
    that update down at the cost of reading the factors, not of forming every ``B @ A``.
    """
    import math

    import diffusers
    import peft

    versions = f"diffusers {diffusers.__version__}, peft {peft.__version__}"
    wrapped = lora_wrapped_modules(pipe, spec.model_id)
    expected = {(e.component, e.module): e for e in entries}
    extra = sorted(set(wrapped) - set(expected))
    if extra:
        raise ModelLoadError(
            f"{what}: {versions} wrapped {'.'.join(extra[0])}, which the file does not name; cemaps refuses an unverified load"
        )
    adapter = spec.model_id
    for target, entry in sorted(expected.items()):
        layer = wrapped.get(target)
        if layer is None:
            raise ModelLoadError(f"{what}: {versions} did not load {entry.down_key!r} into {'.'.join(target)}")
        down, up = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        factor = entry.scaling(spec.scale)
        dora = bool(layer.use_dora.get(adapter, False))
        same = (
            torch.equal(down.detach().cpu(), entry.down.to(down.dtype))
            and torch.equal(up.detach().cpu(), entry.up.to(up.dtype))
            and math.isclose(float(layer.scaling[adapter]), factor, rel_tol=1e-6, abs_tol=1e-12)
            and dora == (entry.magnitude is not None)
            and not getattr(layer, "fan_in_fan_out", False)
        )
        if same and dora:
            magnitude = layer.lora_magnitude_vector[adapter].weight.detach().cpu()
            same = torch.equal(magnitude, entry.magnitude.to(magnitude.dtype))  # type: ignore[union-attr]
        if not same:
            raise ModelLoadError(
                f"{what}: {versions} loaded {'.'.join(target)} with other factors or scaling than "
                f"{entry.down_key!r} (expected scale*alpha/r = {factor:g}); cemaps refuses an unverified load"
            )
    return wrapped


def load_adapter(
    pipe: StableDiffusionPipeline,
    source: Path,
    state: Mapping[str, torch.Tensor],
    entries: list[LoraMatrices],
    layout: str,
    installed: Mapping[str, Collection[str]],
    adapter: str,
    what: str,
) -> None:
    """What ``load_lora_weights(path)`` does, with the kohya conversion owned by cemaps.

    kohya files go through diffusers' converters key by key (:func:`lora_kohya.kohya_to_peft`), with
    the alphas the file records (tensors, else its header) in a peft ``LoraConfig``; other layouts go
    through ``lora_state_dict`` with diffusers' own reading of the file's ``lora_adapter_metadata``.
    """
    if layout == "kohya":
        peft_state, configs, _ = kohya_to_peft(kohya_alpha_tensors(entries, state), installed, what)
        metadata: dict | None = {f"{c}.{k}": v for c, config in configs.items() for k, v in config.items()}
        network_alphas = None
    else:
        from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata

        peft_state, network_alphas = pipe.lora_state_dict(dict(state))
        metadata = _load_sft_state_dict_metadata(str(source)) if source.suffix == ".safetensors" else None
    pipe.load_lora_into_unet(
        peft_state,
        network_alphas=network_alphas,
        unet=pipe.unet,
        adapter_name=adapter,
        metadata=metadata,
        _pipeline=pipe,
    )
    pipe.load_lora_into_text_encoder(
        peft_state,
        network_alphas=network_alphas,
        text_encoder=pipe.text_encoder,
        lora_scale=pipe.lora_scale,
        adapter_name=adapter,
        metadata=metadata,
        _pipeline=pipe,
    )
