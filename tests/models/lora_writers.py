"""LoRA files written by the tools that make them, from a peft-wrapped "source" pipeline, for tests.

Imported as ``lora_writers`` (tests/models is on sys.path). A source pipeline is the tiny SD 1.x or
tiny SDXL pipeline with peft adapters as a trainer leaves them (random ``B``, DoRA magnitudes moved
off ``||W||``). It is saved with diffusers' own writers: ``save_lora_weights`` with
``training_utils._collate_lora_metadata`` (what diffusers' training scripts do since PR #11324),
and ``state_dict_utils.convert_state_dict_to_kohya`` (their ``--output_kohya_format``), with CLIP
module names and DoRA scales as kohya sd-scripts / LyCORIS write them.

The ground truth of a test is the source model's own output, and each module's update computed
here from its factors and the config the test chose (``alpha / r * B @ A``; DoRA:
``m / ||W + d||_row * (W + d) - W``, Liu et al. 2024), never from what cemaps read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.training_utils import _collate_lora_metadata
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from cemaps.models.personalized import PersonalizedSpec, applied, check
from cemaps.models.tiny import tiny_pipeline
from cemaps.models.weight_deltas import lora_delta_state

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")
# kohya's names of the text encoders: one (SD 1.x/2.x) or SDXL's two
_KOHYA_TE = {1: {"text_encoder": "lora_te_"}, 2: {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}


def source_pipe(configs: dict[str, LoraConfig], make: Callable = tiny_pipeline, seed: int = 1):
    """``make(seed=0)`` with a peft adapter on each component of ``configs``: random B, DoRA magnitudes off ||W||."""
    pipe = make(seed=0)
    generator = torch.Generator().manual_seed(seed)
    for component, config in configs.items():
        model = getattr(pipe, component)
        if component in ("unet", "transformer"):  # diffusers ModelMixin.add_adapter
            model.add_adapter(config)
        else:  # transformers' add_adapter needs peft >= 0.22; peft's own injection is what it calls
            inject_adapter_in_model(config, model)
            model.peft_config = {"default": config}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
                elif "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.5 * torch.rand(param.shape, generator=generator))
    return pipe


def _adapted(pipe) -> dict[str, torch.nn.Module]:
    return {c: getattr(pipe, c) for c in COMPONENTS if getattr(getattr(pipe, c, None), "peft_config", None)}


def save_diffusers(pipe, folder: Path, metadata: bool = True) -> Path:
    """diffusers' training-script save: factors plus, with ``metadata``, each LoraConfig in the header."""
    modules = _adapted(pipe)
    layers = {f"{c}_lora_layers": get_peft_model_state_dict(m) for c, m in modules.items()}
    extra = _collate_lora_metadata(modules) if metadata else {}
    type(pipe).save_lora_weights(folder, **layers, **extra)
    return folder / "pytorch_lora_weights.safetensors"


def save_kohya(
    pipe,
    path: Path,
    header: dict[str, str] | None = None,
    alphas: bool = True,
    unet_names: Callable[[str], str] | None = None,
) -> Path:
    """diffusers' ``--output_kohya_format``, with CLIP names as kohya writes them and LyCORIS' ``dora_scale`` ``[out, 1]``.

    ``unet_names`` renames UNet module paths first (e.g. to SGM block names, as kohya writes SDXL files).
    """
    peft_state = {}
    for component, model in _adapted(pipe).items():
        rename = unet_names if component == "unet" and unet_names is not None else (lambda key: key)
        peft_state |= {f"{component}.{rename(k)}": v for k, v in get_peft_model_state_dict(model).items()}
    magnitudes = {k: peft_state.pop(k) for k in [k for k in peft_state if k.endswith(".lora_magnitude_vector")]}
    kohya = convert_state_dict_to_kohya(peft_state)
    prefixes = _KOHYA_TE[2 if getattr(pipe, "text_encoder_2", None) is not None else 1]
    # diffusers names the first encoder lora_te1_ and drops CLIP's text_model_; kohya sd-scripts keeps it
    renames = {"lora_te1_": prefixes["text_encoder"] + "text_model_", "lora_te2_": "lora_te2_text_model_"}
    for old, new in renames.items():
        kohya = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in kohya.items()}
    kohya = {k: v.contiguous() for k, v in kohya.items()}
    for key, magnitude in magnitudes.items():  # LyCORIS' DoRA: dora_scale [out, 1] (wd_on_out=True)
        component, module = key.removesuffix(".lora_magnitude_vector").split(".", 1)
        prefix = "lora_unet_" if component == "unet" else prefixes[component] + "text_model_"
        kohya[prefix + module.replace(".", "_") + ".dora_scale"] = magnitude[:, None].contiguous()
    if not alphas:
        kohya = {k: v for k, v in kohya.items() if not k.endswith(".alpha")}
    save_file(kohya, path, metadata=header)
    return path


def outputs(pipe) -> dict[str, torch.Tensor]:
    """Each text encoder's hidden states and the UNet's output, on fixed inputs (the UNet's context is random)."""
    ids = pipe.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    config = pipe.unet.config
    sample = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, ids.shape[1], config.cross_attention_dim, generator=generator)
    added = None
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and six size/crop ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(1, pooled, generator=generator), "time_ids": torch.ones(1, 6)}
    result = {}
    with torch.no_grad():
        for component in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, component, None) is not None:
                result[component] = getattr(pipe, component)(ids)[0]
        result["unet"] = pipe.unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample
    return result


def assert_reproduces(source, path: Path, expected_format: str, make: Callable = tiny_pipeline):
    """cemaps' applied model gives the source model's outputs; the base comes back; returns the measured deltas."""
    base = make(seed=0)
    before = outputs(base)
    spec = PersonalizedSpec("m", "lora", str(path))
    assert check(base, spec) == expected_format
    with applied(base, spec) as model:
        during = outputs(base)
        deltas = lora_delta_state(base, "m")
        assert model.n_tensors_changed == len(deltas)
    expected = outputs(source)
    for name, value in expected.items():
        torch.testing.assert_close(during[name], value, rtol=1e-5, atol=1e-5)
    changed = [name for name in expected if not torch.allclose(during[name], before[name], atol=1e-4)]
    assert changed == [c for c in expected if c in _adapted(source)]
    after = outputs(base)
    assert all(torch.equal(after[name], before[name]) for name in before)
    return deltas


def formula_deltas(source) -> dict[str, torch.Tensor]:
    """Each adapted module's update from its factors and its config, computed here (not by peft).

    ``alpha / r * B @ A`` (``alpha / sqrt(r)`` with rsLoRA); DoRA: ``m / ||W + d||_row * (W + d) - W``
    with ``d`` that product and the norm over each output row (Liu et al. 2024, peft's ``DoraLinearLayer``).
    """
    deltas = {}
    for component, model in _adapted(source).items():
        for path, module in model.named_modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            config = model.peft_config["default"]
            rank = module.r["default"]
            alpha = _pattern(config.alpha_pattern, path, config.lora_alpha)
            scaling = alpha / rank**0.5 if config.use_rslora else alpha / rank
            down = module.lora_A["default"].weight.detach().float()
            up = module.lora_B["default"].weight.detach().float()
            weight = module.get_base_layer().weight.detach().float()
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scaling
            if config.use_dora:
                magnitude = module.lora_magnitude_vector["default"].weight.detach().float()
                adapted = weight + delta
                norm = adapted.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.ndim - 1))
                delta = magnitude.reshape(norm.shape) / norm * adapted - weight
            deltas[f"{component}.{path}.weight"] = delta
    return deltas


def _pattern(patterns: dict, path: str, default: float) -> float:
    for key, value in patterns.items():
        if path == key or path.endswith("." + key):
            return value
    return default


def assert_formula(source, deltas: dict[str, torch.Tensor]) -> None:
    """cemaps' measured deltas equal :func:`formula_deltas` module by module (the same modules, no others)."""
    expected = formula_deltas(source)
    assert deltas.keys() == expected.keys()
    for name, delta in expected.items():
        torch.testing.assert_close(deltas[name], delta, rtol=1e-4, atol=1e-5)
