"""LoRA personalization of SD3 / SD3.5 and Flux transformers, as diffusers' DreamBooth-LoRA scripts do it.

Follows ``examples/dreambooth/train_dreambooth_lora_sd3.py`` and ``train_dreambooth_lora_flux.py``:
a peft adapter (``r = lora_alpha = rank``, Gaussian init) on the transformer's attention
projections: ``lora_targets="attention"``: ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (the scripts'
default); ``"cross_attention"``: the joint blocks' text key and value projections ``add_k_proj``,
``add_v_proj``, the counterpart of a UNet's ``attn2.to_k``/``to_v`` (the projections applied to text;
Flux's single-stream blocks project text and image with the same ``to_k``/``to_v`` and get none), frozen text encoders
(the instance prompt encoded once with the pipeline's own ``encode_prompt``), latents
``(vae(x) - shift_factor) * scaling_factor``, the rectified-flow interpolation
``x_t = (1 - sigma) x_0 + sigma noise`` at ``sigma`` drawn from the scheduler's training sigmas
(the scripts' ``weighting_scheme="none"``), and the MSE to the velocity ``noise - x_0`` (the Flux
script's target; the SD3 script's default ``precondition_outputs`` regresses ``x_0`` instead,
the same minimiser with a per-sample weight ``sigma^2``). Flux's latents are packed 2x2 into
tokens with the pipeline's ``_pack_latents`` / ``_prepare_latent_image_ids`` and, for a
guidance-distilled transformer, given ``guidance = 1`` as the Flux script does by default.
The adapter is saved with the pipeline class's ``save_lora_weights`` (with its ``lora_adapter_metadata``)
and removed, so the caller's transformer is unchanged. Prior preservation is not offered here.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, get_peft_model_state_dict

from cemaps.errors import ConfigError
from cemaps.models.families import family_of
from cemaps.models.train.common import TrainingData, TrainSettings, adapter_metadata
from cemaps.models.train.loop import _index_stream, make_optimizer

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "cemaps_personalize"
TARGETS = {"attention": ["to_q", "to_k", "to_v", "to_out.0"], "cross_attention": ["add_k_proj", "add_v_proj"]}


def check_inputs(pipe: Any, token: str, class_word: str, settings: TrainSettings) -> TrainSettings:
    family = family_of(pipe)
    if settings.prior_preservation:
        raise ConfigError(f"prior preservation is not offered for {family.name} LoRA training; turn it off")
    if getattr(pipe.transformer, "peft_config", None):
        raise ConfigError("pipe.transformer already has LoRA adapters; expected a base pipeline without adapters")
    return settings


def default_resolution(pipe: Any) -> int:
    """The pipeline's default image side (diffusers' ``default_sample_size * vae_scale_factor``)."""
    return int(pipe.default_sample_size) * int(pipe.vae_scale_factor)


def _conditioning(pipe: Any, prompt: str) -> dict[str, torch.Tensor]:
    """The frozen encoders' transformer inputs for ``prompt`` (the pipeline's own ``encode_prompt``)."""
    device = pipe.transformer.device
    with torch.no_grad():
        if family_of(pipe).key == "flux":
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _predict(pipe: Any, noisy: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
    """The transformer's velocity prediction, in ``noisy``'s layout."""
    transformer = pipe.transformer
    batch = noisy.shape[0]
    text = {k: (v.expand(batch, *v.shape[1:]) if k != "txt_ids" else v) for k, v in text.items()}
    if family_of(pipe).key != "flux":
        return transformer(hidden_states=noisy, timestep=sigmas * 1000, return_dict=False, **text)[0]
    _, channels, height, width = noisy.shape
    packed = pipe._pack_latents(noisy, batch, channels, height, width)
    ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype)
    guidance = torch.ones(batch, device=noisy.device) if transformer.config.guidance_embeds else None
    out = transformer(hidden_states=packed, timestep=sigmas, guidance=guidance, img_ids=ids, return_dict=False, **text)[
        0
    ]
    scale = pipe.vae_scale_factor
    return pipe._unpack_latents(out, height * scale, width * scale, scale)


def train(pipe: Any, data: TrainingData, settings: TrainSettings, save_dir: Path, progress: bool) -> list[float]:
    """Trains a LoRA adapter, writes ``save_dir/pytorch_lora_weights.safetensors``, removes the adapter.

    Returns:
        The loss of every step.
    """
    transformer, vae = pipe.transformer, pipe.vae
    device = transformer.device
    training = {name: m.training for name, m in transformer.named_modules()}
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    order = _index_stream(data.instance_pixels.shape[0], torch.Generator().manual_seed(settings.seed))
    sigmas = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config).sigmas.to(device)
    with torch.no_grad():
        posterior = vae.encode(data.instance_pixels.to(device, vae.dtype)).latent_dist
        shift = vae.config.shift_factor or 0.0
    text = _conditioning(pipe, data.instance_prompt)
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.rank,
            init_lora_weights="gaussian",
            target_modules=TARGETS[settings.lora_targets],
        ),
        adapter_name=ADAPTER_NAME,
    )
    losses: list[float] = []
    try:
        cast_training_params(transformer, dtype=torch.float32)
        transformer.train()
        parameters = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = make_optimizer(parameters, settings)
        for _ in range(settings.steps):
            batch = torch.tensor(list(islice(order, settings.batch_size)), device=device)
            mean, std = posterior.mean[batch], posterior.std[batch]
            latents = mean + std * torch.randn(mean.shape, generator=generator, device=device) - shift
            latents = latents * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            index = torch.randint(0, len(sigmas) - 1, (latents.shape[0],), generator=generator, device=device)
            sigma = sigmas[index].to(latents.dtype)
            noisy = (1 - sigma[:, None, None, None]) * latents + sigma[:, None, None, None] * noise
            prediction = _predict(pipe, noisy.to(transformer.dtype), sigma, text)
            loss = F.mse_loss(prediction.float(), (noise - latents).float())
            loss.backward()
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        type(pipe).save_lora_weights(
            save_directory=save_dir,
            transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME),
            transformer_lora_adapter_metadata=adapter_metadata(transformer.peft_config[ADAPTER_NAME]),
            weight_name=LORA_WEIGHTS_NAME,
            safe_serialization=True,
        )
    finally:
        transformer.delete_adapters(ADAPTER_NAME)
        pipe.unload_lora_weights()
        for name, module in transformer.named_modules():
            module.training = training.get(name, module.training)
    return losses
