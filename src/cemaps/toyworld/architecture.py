"""The toy world's model architectures: SD v1.5's module tree at toy width, and a toy CLIP.

The UNet keeps SD v1.5's block types and two layers per block (CrossAttnDownBlock2D x3 +
DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D + CrossAttnUpBlock2D x3), so its 16
``attn2`` module paths are SD v1.5's; the VAE downsamples 32x32 RGB to 16x16x4 latents;
the text encoder is a CLIPTextModel over OpenAI's CLIP tokenizer (77 tokens). The toy
CLIP is an open_clip ``CLIP`` described by an open_clip model config, so the scorer loads
it exactly as it loads ViT-B-32.

Example:
    >>> pipe = build_pipeline(seed=0)
    >>> sum(name.endswith("attn2") for name, _ in pipe.unet.named_modules())
    16
    >>> pipe.vae_scale_factor, pipe.unet.config.sample_size
    (2, 16)
"""

from __future__ import annotations

import copy

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cemaps.models.tiny import clip_tokenizer, sd15_scheduler
from cemaps.toyworld.world import IMAGE_SIZE

TEXT_WIDTH = 64
UNET_CHANNELS = (16, 32, 64, 64)  # the shipped UNet's block_out_channels
LATENT_SIZE = IMAGE_SIZE // 2
# open_clip model-config format (what open_clip.add_model_config reads from a .json file).
TOY_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 3, "width": 64, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_unet(channels: tuple[int, ...] = UNET_CHANNELS, text_width: int = TEXT_WIDTH) -> UNet2DConditionModel:
    """SD v1.5's block types at ``channels`` (4 widths, each a multiple of 8: GroupNorm's 8 groups)."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        block_out_channels=tuple(channels),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=text_width,
        attention_head_dim=(2, 4, 8, 8),
    )


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=IMAGE_SIZE,
    )


def build_text_encoder(tokenizer, width: int = TEXT_WIDTH) -> CLIPTextModel:
    """A 2-layer CLIPTextModel of ``width`` (a multiple of its 4 heads)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_pipeline(
    seed: int = 0, unet_channels: tuple[int, ...] = UNET_CHANNELS, text_width: int = TEXT_WIDTH
) -> StableDiffusionPipeline:
    """An untrained toy-world pipeline (random weights from ``seed``), CPU float32.

    ``unet_channels`` and ``text_width`` widen the UNet and text encoder (the defaults are the shipped
    widths; a GPU trains wider ones in the same time, ``cemaps toyworld train --unet-channels``).
    """
    tokenizer = clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(unet_channels, text_width)
        vae, text_encoder = build_vae(), build_text_encoder(tokenizer, text_width)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def toy_clip_config() -> dict:
    return copy.deepcopy(TOY_CLIP_CONFIG)
