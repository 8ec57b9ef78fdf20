"""A randomly initialised StableDiffusionXLPipeline with SDXL's module tree and grids (no download).

The UNet has SDXL base 1.0's block structure (``unet/config.json``: block types, 2 layers per
block, ``transformer_layers_per_block=(1, 2, 10)``, 5/10/20 heads, linear projections,
``text_time`` conditioning, ``sample_size=128``): its 70 ``attn2`` module paths, their latent grids
at 1024x1024 (64x64 and 32x32) and the 77-token context are SDXL's. The text encoders have CLIP
ViT-L's 12 and OpenCLIP ViT-bigG's 32 layers, the VAE SDXL's four levels (scale factor 8).

Widths are divided by ``width_divisor`` (default 8 in the benchmarks: 2,567M UNet parameters do not
fit beside seven other engineers on a 2-core, 23 GB machine). What cemaps stores does not depend on
widths: maps are averaged over heads, and their shapes come from module paths, grids, tokens and
steps. ``width_divisor=1`` gives SDXL's exact sizes (2,567.5M UNet parameters).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from cemaps.models import clip_tokenizer


def sdxl_pipeline(seed: int = 0, width_divisor: int = 8) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    d = width_divisor
    clip_l, clip_g = 768 // d, 1280 // d
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")

    def text_config(width: int, layers: int, heads: int, act: str, projection: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=projection,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip

    text_encoder = CLIPTextModel(text_config(clip_l, 12, 12, "quick_gelu", clip_l))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(clip_g, 32, 20, "gelu", clip_g))
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320 // d, 640 // d, 1280 // d),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True,
        cross_attention_dim=clip_l + clip_g,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + clip_g,
        norm_num_groups=32 if d == 1 else 8,
    )
    vae = AutoencoderKL(
        block_out_channels=(128 // d, 256 // d, 512 // d, 512 // d),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32 if d == 1 else 8,
        sample_size=1024,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", num_train_timesteps=1000,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe
