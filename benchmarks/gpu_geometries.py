"""Randomly initialised pipelines with the real geometry of SD v1.5, SDXL, SD3 and Flux (no download).

Each family is built from diffusers' own model classes and the configs of the released models
(``unet/config.json`` / ``transformer/config.json`` of runwayml SD v1.5, SDXL base 1.0,
SD3-medium, SD3.5-large and FLUX.1-dev), or, with ``tiny=True``, at the widths of diffusers'
own pipeline tests (``tests/pipelines/<family>/test_*.py``, ``get_dummy_components``) so that
the same code runs on a CPU in seconds. Weights are random: images mean nothing, but shapes,
module paths, kernels and FLOPs are the real models'.

SD v1.5 and SDXL get their real text encoders (random) and OpenAI's CLIP tokenizer, so capture
sees and labels the prompt's tokens. SD3 and Flux are built without text encoders (T5-XXL's
tokenizer cannot be built offline) and are called with ``prompt_embeds`` of the real shapes
(``max_sequence_length`` T5 tokens, plus CLIP's 77 for SD3); encoding a prompt is one call per
image against ``steps`` denoiser calls, so leaving it out changes a generation's time little.

Example:
    >>> spec = GEOMETRIES["sd15"]
    >>> pipe = build(spec, tiny=True)
    >>> type(pipe).__name__, spec.denoiser
    ('StableDiffusionPipeline', 'unet')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Geometry:
    """A pipeline family at the size a benchmark runs it (``tiny_*``: the CPU smoke sizes).

    Attributes:
        name: key in :data:`GEOMETRIES`.
        family: what the JSON calls it (diffusers' pipeline class).
        denoiser: the pipeline attribute that denoises (``unet`` or ``transformer``).
        size / steps / guidance / batch: the generation (pixels, scheduler steps, guidance scale,
            images per call).
        dtype: ``float16`` or ``bfloat16`` (SD3 and Flux are released in bf16).
        tiny_size / tiny_steps: the smoke test's generation.
        call_kwargs: extra pipeline arguments (Flux: the guidance-distilled call, no CFG batch).
    """

    name: str
    family: str
    denoiser: str
    size: int
    steps: int
    guidance: float
    batch: int
    dtype: str
    tiny_size: int = 32
    tiny_steps: int = 4
    call_kwargs: dict = field(default_factory=dict)
    text_tokens: int = 0  # SD3/Flux: T5 tokens of the prompt_embeds (0: a real text encoder runs)


GEOMETRIES: dict[str, Geometry] = {
    "sd15": Geometry("sd15", "StableDiffusionPipeline", "unet", 512, 50, 7.5, 4, "float16"),
    "sdxl": Geometry("sdxl", "StableDiffusionXLPipeline", "unet", 1024, 30, 7.5, 4, "float16"),
    "sd3-medium": Geometry(
        "sd3-medium", "StableDiffusion3Pipeline", "transformer", 1024, 28, 7.0, 4, "bfloat16", text_tokens=256
    ),
    "sd35-large": Geometry(
        "sd35-large", "StableDiffusion3Pipeline", "transformer", 1024, 28, 3.5, 4, "bfloat16", text_tokens=256
    ),
    # FLUX.1-dev is guidance-distilled: one denoiser call per step, guidance enters as an embedding
    "flux-dev": Geometry("flux-dev", "FluxPipeline", "transformer", 1024, 28, 3.5, 4, "bfloat16", text_tokens=512),
    "flux-dev-512": Geometry(
        "flux-dev-512", "FluxPipeline", "transformer", 512, 28, 3.5, 4, "bfloat16", text_tokens=512
    ),
}
JOINT_CANDIDATES = ("flux-dev", "sd35-large", "flux-dev-512", "sd3-medium")  # largest first


def build(spec: Geometry, *, tiny: bool = False, device: str = "cpu", seed: int = 0) -> Any:
    """The pipeline of ``spec`` with random weights, on ``device`` in ``spec.dtype`` (float32 when tiny).

    Modules are created directly on ``device`` (initialising 12B parameters on a CPU takes minutes).
    """
    torch.manual_seed(seed)
    builder = {
        "StableDiffusionPipeline": _sd15,
        "StableDiffusionXLPipeline": _sdxl,
        "StableDiffusion3Pipeline": _sd3,
        "FluxPipeline": _flux,
    }[spec.family]
    with torch.device(device):
        pipe = builder(spec, tiny)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=torch.float32 if tiny else getattr(torch, spec.dtype))


def call_arguments(spec: Geometry, pipe: Any, *, tiny: bool, device: str) -> dict:
    """Keyword arguments of one generation: prompt (or random prompt embeddings), size, steps, guidance."""
    size, steps = (spec.tiny_size, spec.tiny_steps) if tiny else (spec.size, spec.steps)
    arguments = {"height": size, "width": size, "num_inference_steps": steps, "guidance_scale": spec.guidance}
    prompts = ["an oil painting of a lighthouse on a cliff at dusk"] * spec.batch
    if not spec.text_tokens:
        return {**arguments, "prompt": prompts, "output_type": "np", **spec.call_kwargs}
    config = getattr(pipe, spec.denoiser).config
    width = config.joint_attention_dim
    tokens = 4 if tiny else spec.text_tokens
    dtype = pipe.dtype
    generator = torch.Generator().manual_seed(1)

    def embeds(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    if spec.family == "FluxPipeline":
        pooled = config.pooled_projection_dim
        return {
            **arguments,
            "prompt_embeds": embeds(spec.batch, tokens, width),
            "pooled_prompt_embeds": embeds(spec.batch, pooled),
            "output_type": "np",
            "max_sequence_length": tokens,
        }
    clip_tokens = 4 if tiny else 77  # SD3 pads CLIP-L/G's 77 to T5's width and appends T5's tokens
    pooled = config.pooled_projection_dim
    return {
        **arguments,
        "prompt_embeds": embeds(spec.batch, clip_tokens + tokens, width),
        "pooled_prompt_embeds": embeds(spec.batch, pooled),
        "negative_prompt_embeds": embeds(spec.batch, clip_tokens + tokens, width),
        "negative_pooled_prompt_embeds": embeds(spec.batch, pooled),
        "output_type": "np",
        "max_sequence_length": tokens,
    }


def denoiser_parameters(pipe: Any, spec: Geometry) -> int:
    return sum(p.numel() for p in getattr(pipe, spec.denoiser).parameters())


def _clip_text(hidden: int, layers: int, heads: int, act: str, projection: int | None, tiny: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from cemaps.models import clip_tokenizer

    tokenizer = clip_tokenizer()
    if tiny:
        hidden, layers, heads = 32, 2, 4
        projection = 32 if projection else None
    config = CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=act,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model, tokenizer


def _vae(latent_channels: int, tiny: bool, **extra):
    from diffusers import AutoencoderKL

    if tiny:
        return AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=latent_channels,
            norm_num_groups=4,
            layers_per_block=1,
            **extra,
        )
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=2,
        **extra,
    )


def _sd15(spec: Geometry, tiny: bool):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip_text(768, 12, 12, "quick_gelu", None, tiny)
    if tiny:
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=32,
            attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    else:  # runwayml/stable-diffusion-v1-5 unet/config.json: diffusers' defaults at sample 64, context 768
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=_vae(4, tiny),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(spec: Geometry, tiny: bool):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip_text(768, 12, 12, "quick_gelu", None, tiny)
    text_encoder_2, tokenizer_2 = _clip_text(1280, 32, 20, "gelu", 1280, tiny)
    context = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    time_dim = 8 if tiny else 256
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (tiny: diffusers' SDXL pipeline test)
    unet = UNet2DConditionModel(
        sample_size=spec.tiny_size // 4 if tiny else 128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D") + (() if tiny else ("CrossAttnDownBlock2D",)),
        up_block_types=(() if tiny else ("CrossAttnUpBlock2D",)) + ("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16) if tiny else (320, 640, 1280),
        layers_per_block=2,
        attention_head_dim=(2, 4) if tiny else (5, 10, 20),
        transformer_layers_per_block=(1, 2) if tiny else (1, 2, 10),
        norm_num_groups=4 if tiny else 32,
        cross_attention_dim=context,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text_encoder_2.config.projection_dim,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4, tiny, force_upcast=True, scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


def _sd3(spec: Geometry, tiny: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if tiny:  # diffusers' SD3 pipeline test
        transformer = SD3Transformer2DModel(
            sample_size=spec.tiny_size // 4,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
        )
    elif spec.name == "sd35-large":  # stabilityai/stable-diffusion-3.5-large transformer/config.json
        transformer = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=38,
            attention_head_dim=64,
            num_attention_heads=38,
            joint_attention_dim=4096,
            caption_projection_dim=2432,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
            qk_norm="rms_norm",
        )
    else:  # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
        transformer = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
        )
    latent = transformer.config.in_channels
    vae = _vae(
        latent, tiny, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _flux(spec: Geometry, tiny: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    if tiny:  # diffusers' Flux pipeline test
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
    else:  # black-forest-labs/FLUX.1-dev transformer/config.json
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
    vae = _vae(
        transformer.config.in_channels // 4,
        tiny,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
