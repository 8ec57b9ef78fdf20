"""Loading a checked LoRA into a pipeline with diffusers' readers and peft, and verifying what peft built.

The loading is ``load_lora_weights(path)``'s (``lora_state_dict``, ``load_lora_into_unet``,
``load_lora_into_text_encoder``) with three differences:

- kohya files are converted by cemaps with diffusers' converters, one module at a time
  (:mod:`cemaps.models.personalized.lora_kohya`);
- the file's diffusers adapter metadata is passed along (a state dict in memory has none);
- each text encoder (``text_encoder``; SDXL's ``text_encoder_2``) gets its adapter from peft's
  ``inject_adapter_in_model`` and ``set_peft_model_state_dict`` with the ``LoraConfig`` diffusers
  would build (``_create_lora_config``: the file's metadata, else ranks and alphas of its keys),
  where diffusers' ``_load_lora_into_text_encoder`` first infers the key type from attention keys
  (an MLP-only file fails with "Could not automatically infer state dict type") and then hands
  the adapter to transformers' ``load_adapter``, which with transformers 5 / peft 0.21 leaves a
  DoRA magnitude vector at its initial value ``||W||`` instead of the file's.

The verification compares every wrapped module of the family's LoRA components with cemaps'
own reading of the file (:mod:`cemaps.models.personalized.lora_parse`,
:mod:`cemaps.models.personalized.lora_scaling`), never with the config the load was given.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cemaps.models.families import family_of
from cemaps.models.personalized.lora_kohya import kohya_to_peft
from cemaps.models.personalized.lora_scaling import kohya_alpha_tensors
from cemaps.models.personalized.spec import PersonalizedSpec

if TYPE_CHECKING:
    from cemaps.models.personalized.lora_parse import LoraMatrices

_TEXT_MODEL = "text_model."


def lora_wrapped_modules(pipe: Any, adapter: str) -> dict[tuple[str, str], torch.nn.Module]:
    """(component, module path) -> peft layer holding ``adapter``, over the family's LoRA components."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = {}
    for component in family_of(pipe).lora_components():
        module = getattr(pipe, component, None)
        if module is not None:
            wrapped |= {
                (component, path): m
                for path, m in module.named_modules()
                if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {})
            }
    return wrapped


def verify_loaded(pipe: Any, entries: list[LoraMatrices], spec: PersonalizedSpec, what: str) -> dict:
    """Every named module wrapped with exactly the file's factors and scaling, and nothing else wrapped.

    peft applies ``scaling * B @ A`` (DoRA: rescaled to magnitude ``m`` per output row); checking
    A, B, m (bit-exact after the cast to the adapter's dtype) and ``scaling == scale * alpha / r``
    against cemaps' own reading of the file (tensors and header, never the loader's config) pins
    that update down at the cost of reading the factors, not of forming every ``B @ A``.

    Returns:
        (component, module path) -> the peft layer, for every module the file names.

    Raises:
        ModelLoadError: a module wrapped that the file does not name, one it names left plain, or
            other factors, scaling or magnitudes than the file's (naming the versions that did it).
    """
    import diffusers
    import peft

    from cemaps.errors import ModelLoadError

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
    pipe: Any,
    source: Path,
    state: Mapping[str, torch.Tensor],
    entries: list[LoraMatrices],
    layout: str,
    installed: Mapping[str, Collection[str]],
    adapter: str,
    what: str,
) -> None:
    """What ``load_lora_weights(path)`` does, with the kohya conversion and the text encoders owned by cemaps.

    Args:
        pipe: the base pipeline (an SD 1.x/2.x or SDXL family); gains adapter ``adapter``.
        source: the file (its safetensors header holds diffusers' adapter metadata, if any).
        state: the file's tensors as cemaps read them (SGM names renamed, Tucker factors composed).
        entries: cemaps' reading of ``state`` (kohya alphas from the header are added as tensors).
        layout: ``"kohya"``, ``"diffusers"`` or ``"legacy"``.
        installed: each component's module names.
        adapter: the adapter name.
        what: how errors name the file.

    Raises:
        ValueError, KeyError, RuntimeError, TypeError: diffusers or peft could not load it (the
            caller reports the first line).
    """
    if layout == "kohya":
        peft_state, configs, _ = kohya_to_peft(kohya_alpha_tensors(entries, state), installed, what)
        unet_metadata: dict | None = {f"unet.{k}": v for k, v in configs.get("unet", {}).items()}
        network_alphas = None
    else:
        from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata

        peft_state, network_alphas = type(pipe).lora_state_dict(dict(state))
        unet_metadata = _load_sft_state_dict_metadata(str(source)) if source.suffix == ".safetensors" else None
        configs = _text_encoder_configs(peft_state, network_alphas, unet_metadata, installed)
    if any(key.startswith("unet.") for key in peft_state):
        pipe.load_lora_into_unet(
            peft_state,
            network_alphas=network_alphas,
            unet=pipe.unet,
            adapter_name=adapter,
            metadata=unet_metadata or None,
            _pipeline=pipe,
        )
    for component in family_of(pipe).lora_components():
        if component != "unet" and component in configs:
            inner = _component_state(peft_state, component, layout)
            inject_text_encoder_adapter(getattr(pipe, component), inner, configs[component], adapter)


def _component_state(state: Mapping[str, torch.Tensor], component: str, layout: str) -> dict[str, torch.Tensor]:
    """``component``'s tensors under peft names (``<module>.lora_A.weight``), converted with diffusers' mappings.

    diffusers' own text-encoder loader infers the source type from attention keys; here it is
    stated: legacy attention processors (``to_q_lora``) -> ``DIFFUSERS_OLD``, ``lora_linear_layer``
    -> ``DIFFUSERS``, everything else is already peft (old ``.lora.down`` keys renamed as diffusers
    renames the UNet's).
    """
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    inner = {k.removeprefix(component + "."): v for k, v in state.items() if k.startswith(component + ".")}
    if layout == "legacy" or any("_lora." in k for k in inner):
        return convert_state_dict_to_peft(inner, original_type=StateDictType.DIFFUSERS_OLD)
    if any(".lora_linear_layer." in k for k in inner):
        return convert_state_dict_to_peft(inner, original_type=StateDictType.DIFFUSERS)
    return convert_unet_state_dict_to_peft(inner)


def _text_encoder_configs(
    state: Mapping[str, torch.Tensor],
    network_alphas: Mapping[str, float] | None,
    metadata: Mapping[str, object] | None,
    installed: Mapping[str, Collection[str]],
) -> dict[str, dict[str, object]]:
    """``LoraConfig`` kwargs of each text encoder the file holds, as diffusers' ``_create_lora_config`` builds them.

    From the file's ``lora_adapter_metadata`` when it has the component's config; otherwise
    diffusers' ``get_peft_kwargs`` on the ranks of the ``lora_B`` keys and the component's alphas.
    """
    from diffusers.utils.peft_utils import get_peft_kwargs

    configs: dict[str, dict[str, object]] = {}
    for component in installed:
        if component == "unet" or not any(k.startswith(component + ".") for k in state):
            continue
        prefix = component + "."
        own = {k.removeprefix(prefix): v for k, v in (metadata or {}).items() if k.startswith(prefix)}
        if own:
            configs[component] = own
            continue
        inner = _component_state(state, component, "diffusers")
        ranks = {k: v.shape[1] for k, v in inner.items() if k.endswith(".lora_B.weight")}
        alphas = {k.removeprefix(prefix): v for k, v in (network_alphas or {}).items() if k.startswith(prefix)}
        configs[component] = get_peft_kwargs(ranks, alphas or None, inner, is_unet=False)
    return configs


def inject_text_encoder_adapter(
    text_encoder: torch.nn.Module, state: Mapping[str, torch.Tensor], config: Mapping[str, object], adapter: str
) -> None:
    """Adds adapter ``adapter`` to a transformers text encoder with peft, as transformers' ``load_adapter`` would.

    Args:
        text_encoder: a ``PreTrainedModel`` (CLIP); gains LoRA layers, ``peft_config[adapter]`` and
            ``_hf_peft_config_loaded``, so that diffusers' ``set_adapters``/``delete_adapters``/
            ``unload_lora_weights`` handle it as one transformers loaded.
        state: peft keys ``<module>.lora_A.weight``/``.lora_B.weight``/``.lora_magnitude_vector``;
            CLIP's ``text_model.`` prefix is dropped where the installed model lacks it.
        config: ``LoraConfig`` keyword arguments.
        adapter: the adapter name.

    Raises:
        ValueError: peft left a LoRA tensor of the file unloaded (its module missing or misnamed).
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    if not hasattr(text_encoder, "text_model"):
        state = {k.removeprefix(_TEXT_MODEL): v for k, v in state.items()}
        config = {**config, "target_modules": _without_text_model(config.get("target_modules"))}
    lora_config = LoraConfig(**config)
    inject_adapter_in_model(lora_config, text_encoder, adapter_name=adapter)
    result = set_peft_model_state_dict(text_encoder, dict(state), adapter_name=adapter)
    unexpected = [k for k in getattr(result, "unexpected_keys", ()) if "lora_" in k]
    if unexpected:
        raise ValueError(f"peft found no place for {unexpected[0]!r} in the {type(text_encoder).__name__}")
    existing = getattr(text_encoder, "peft_config", None) if text_encoder._hf_peft_config_loaded else None
    text_encoder.peft_config = {**(existing or {}), adapter: lora_config}
    text_encoder._hf_peft_config_loaded = True


def _without_text_model(targets: object) -> object:
    if isinstance(targets, (list, tuple, set)):
        return sorted({t.removeprefix(_TEXT_MODEL) for t in targets})
    return targets
