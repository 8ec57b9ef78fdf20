"""LoRA personalization of the UNet, as diffusers' ``examples/dreambooth/train_dreambooth_lora.py``.

A peft adapter (``r = lora_alpha = rank``, Gaussian init) is added to the UNet's attention
projections, trained, saved with ``StableDiffusionPipeline.save_lora_weights`` to
``pytorch_lora_weights.safetensors`` (what ``pipe.load_lora_weights(folder)`` reads), and
removed again, so the caller's UNet has its original module tree and weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from cemaps.errors import ConfigError
from cemaps.models.families import family_of
from cemaps.models.train.common import (
    TrainingData,
    TrainSettings,
    adapter_metadata,
    enable_gradient_checkpointing,
    frozen_text_conditioning,
    preserved_pipeline_state,
)
from cemaps.models.train.loop import run_denoising_training

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "cemaps_personalize"
# peft matches a string target as a full regex over module paths, a list by name suffix.
LORA_TARGET_MODULES: dict[str, str | list[str]] = {
    "cross_attention": r".*attn2\.(to_k|to_v)",
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
}


def check_inputs(pipe: StableDiffusionPipeline, token: str, class_word: str, settings: TrainSettings) -> TrainSettings:
    """Refuses a UNet that already carries adapters (removing ours would remove them too)."""
    if getattr(pipe.unet, "peft_config", None):
        loaded = ", ".join(sorted(pipe.unet.peft_config))
        raise ConfigError(
            f"pipe.unet already has LoRA adapters ({loaded}); expected a base pipeline without adapters "
            "(call pipe.unload_lora_weights() first)"
        )
    return settings


def lora_config(settings: TrainSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.rank,
        init_lora_weights="gaussian",
        target_modules=LORA_TARGET_MODULES[settings.lora_targets],
    )


def train(
    pipe: StableDiffusionPipeline, data: TrainingData, settings: TrainSettings, save_dir: Path, progress: bool
) -> list[float]:
    """Trains a LoRA adapter, writes ``save_dir/pytorch_lora_weights.safetensors``, removes the adapter.

    Returns:
        The loss of every step.
    """
    unet = pipe.unet
    with preserved_pipeline_state(pipe, settings.seed):
        pipe.vae.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        unet.requires_grad_(False)
        unet.add_adapter(lora_config(settings), adapter_name=ADAPTER_NAME)
        try:
            # The base may be half precision; trainable LoRA weights stay float32 (as in the script).
            cast_training_params(unet, dtype=torch.float32)
            if settings.gradient_checkpointing:
                enable_gradient_checkpointing(pipe, text_encoder_too=False)
            parameters = [p for p in unet.parameters() if p.requires_grad]
            losses = run_denoising_training(
                pipe,
                parameters,
                data,
                frozen_text_conditioning(pipe, data.instance_prompt),
                None,
                settings,
                progress,
            )
            adapter_weights = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
            )
            family_of(pipe).pipeline_class().save_lora_weights(
                save_directory=save_dir,
                unet_lora_layers=adapter_weights,
                unet_lora_adapter_metadata=adapter_metadata(unet.peft_config[ADAPTER_NAME]),
                weight_name=LORA_WEIGHTS_NAME,
                safe_serialization=True,
            )
        finally:
            unet.unload_lora()
    return losses
