"""Tiny random-weight SD3 / SD3.5, Flux and PixArt-Sigma pipelines, built in-process.

Sizes follow diffusers' own dummy components (``get_dummy_components`` in
``tests/pipelines/{stable_diffusion_3,flux,pixart_sigma}/test_*.py``), with two
transformer layers of each kind so that layer order and the block kinds (SD3's
joint blocks, Flux's double- and single-stream blocks, PixArt's ``attn2``) can be
tested. Tokenizers are built offline: OpenAI's CLIP BPE for the CLIP streams
(:func:`cemaps.models.tiny.clip_tokenizer`) and a T5-style Unigram vocabulary for the
T5 streams (:func:`cemaps.models.tiny_t5.t5_tokenizer`). Random weights: for tests of
mechanics only, never of meaning.

Example:
    >>> pipe = tiny_flux_pipeline(seed=0)
    >>> type(pipe).__name__, len(pipe.transformer.single_transformer_blocks)
    ('FluxPipeline', 2)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from cemaps.models.tiny import clip_tokenizer
from cemaps.models.tiny_t5 import t5_tokenizer

TINY_SD3_ID = "cemaps/tiny-sd3"
TINY_SD35_ID = "cemaps/tiny-sd3.5"
TINY_FLUX_ID = "cemaps/tiny-flux"
TINY_PIXART_SIGMA_ID = "cemaps/tiny-pixart-sigma"


@contextmanager
def _seeded(seed: int):
    """Seeds torch's global generator for weight initialisation and restores it afterwards."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        torch.random.set_rng_state(state)


def _clip_config(tokenizer: Any, hidden_size: int = 32) -> CLIPTextConfig:
    # diffusers' dummy CLIP sizes, with the real CLIP vocabulary (so prompts tokenize as in SD3/Flux)
    return CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=hidden_size,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )


def _t5_encoder(tokenizer: Any, d_model: int) -> T5EncoderModel:
    # hf-internal-testing/tiny-random-t5's sizes (d_ff 37, 4 heads of 8, 8 relative buckets), 2 layers
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, flow: bool) -> AutoencoderKL:
    # diffusers' dummy VAE widths (4 channels, 1 group), with 4 blocks so that it downsamples by 8 as the real
    # ones do: the pipelines' default sizes (Flux 128 px, PixArt's resolution bins) then give small token grids
    extra = {"shift_factor": 0.0609, "scaling_factor": 1.5035} if flow else {}
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
        **extra,
    )


def tiny_sd3_pipeline(seed: int = 0, *, version: str = "3") -> StableDiffusion3Pipeline:
    """A random-weight ``StableDiffusion3Pipeline``: 2 joint blocks, CLIP-L + CLIP-G + T5.

    Args:
        seed: seeds the weight initialisation.
        version: ``"3"`` (no QK norm, as SD3-medium) or ``"3.5"`` (RMS QK norms and a dual-attention
            first block whose ``attn2`` is image self-attention, as SD3.5-medium).

    Raises:
        ValueError: ``version`` is not "3" or "3.5".
    """
    if version not in ("3", "3.5"):
        raise ValueError(f"version {version!r}: expected '3' or '3.5'")
    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    with _seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=64,
            pooled_projection_dim=64,
            out_channels=4,
            qk_norm="rms_norm" if version == "3.5" else None,
            dual_attention_layers=(0,) if version == "3.5" else (),
        )
        text_encoder = CLIPTextModelWithProjection(_clip_config(clip))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(clip))
        text_encoder_3 = _t5_encoder(t5, d_model=64)
        vae = _vae(latent_channels=4, flow=True)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5,
        transformer=transformer,
    )
    return _finish(pipe, TINY_SD35_ID if version == "3.5" else TINY_SD3_ID)


def tiny_flux_pipeline(seed: int = 0, *, guidance_embeds: bool = True) -> FluxPipeline:
    """A random-weight ``FluxPipeline``: 2 double-stream and 2 single-stream blocks, CLIP (pooled) + T5.

    Args:
        seed: seeds the weight initialisation.
        guidance_embeds: True for a guidance-distilled transformer (as FLUX.1-dev: the guidance
            scale is an input, there is no unconditional half); False as FLUX.1-schnell.
    """
    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=[4, 4, 8],
        )
        text_encoder = CLIPTextModel(_clip_config(clip))
        text_encoder_2 = _t5_encoder(t5, d_model=32)
        vae = _vae(latent_channels=1, flow=True)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5,
        transformer=transformer,
    )
    return _finish(pipe, TINY_FLUX_ID)


def tiny_pixart_sigma_pipeline(seed: int = 0) -> PixArtSigmaPipeline:
    """A random-weight ``PixArtSigmaPipeline``: 2 transformer blocks with ``attn2`` over T5 with its mask.

    ``sample_size`` is 32 so that diffusers' resolution binning (on by default) has its 256 px table:
    a 256 px image has 32x32 latents and a 16x16 attention grid (patch size 2).
    """
    t5 = t5_tokenizer()
    with _seeded(seed):
        transformer = PixArtTransformer2DModel(
            sample_size=32,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
        text_encoder = _t5_encoder(t5, d_model=32)
        vae = _vae(latent_channels=4, flow=False)
    pipe = PixArtSigmaPipeline(
        tokenizer=t5,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer.eval(),
        scheduler=DPMSolverMultistepScheduler(),
    )
    return _finish(pipe, TINY_PIXART_SIGMA_ID)


def _finish(pipe: Any, model_id: str) -> Any:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # built in training mode; T5's dropout would make every call differ
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(_name_or_path=model_id)
    return pipe


TINY_DIT_BUILDERS: dict[str, Callable[..., Any]] = {
    TINY_SD3_ID: tiny_sd3_pipeline,
    TINY_SD35_ID: lambda seed=0: tiny_sd3_pipeline(seed, version="3.5"),
    TINY_FLUX_ID: tiny_flux_pipeline,
    TINY_PIXART_SIGMA_ID: tiny_pixart_sigma_pipeline,
}
