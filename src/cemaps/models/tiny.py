"""The embedded tiny Stable Diffusion pipeline: real architecture, random weights.

It has SD v1.5's module tree (three cross-attention down blocks, a cross-attention
mid block, three cross-attention up blocks, two layers per block, so the 16
``attn2`` paths are SD v1.5's) and OpenAI's CLIP BPE tokenizer, built offline from
the vocabulary that ships inside the open_clip wheel. Everything else is shrunk so
that a 64x64 image with 20 steps takes about a second on a CPU.

Example:
    >>> pipe = tiny_pipeline(seed=0)
    >>> sum(name.endswith("attn2") for name, _ in pipe.unet.named_modules())
    16
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TINY_MODEL_ID = "cemaps/tiny-sd"
TINY_SDXL_MODEL_ID = "cemaps/tiny-sdxl"
# Widths of the tiny SDXL's two text encoders: unequal like SDXL's 768 and 1280, summing to the 64-wide
# context of diffusers' dummy UNet.
TINY_SDXL_ENCODER_WIDTHS = (24, 40)


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's vocabulary and merges, read from open_clip's packaged BPE file.

    Built exactly as ``open_clip.tokenizer.SimpleTokenizer`` builds them, so that
    token ids agree with open_clip and with SD v1.5's ``tokenizer/vocab.json``.
    """
    bpe_path = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    with bpe_path.open("rb") as raw:
        lines = gzip.decompress(raw.read()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    vocab_list += ["".join(merge.split()) for merge in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab_list)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable-unicode table.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes], strict=False))


def clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """OpenAI's CLIP tokenizer (the one SD v1.5 uses), built with no download.

    Args:
        model_max_length: tokens per encoding (CLIP's context length).
        pad_token: ``"<|endoftext|>"`` as SD v1.5's and SDXL's first tokenizer; ``"!"`` as SDXL's
            ``tokenizer_2`` (the OpenCLIP convention, ``pad_token_id`` 0).
    """
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split()) for m in merges],
        model_max_length=model_max_length,
        pad_token=pad_token,
    )


def tiny_pipeline(seed: int = 0, *, image_size: int = 64) -> StableDiffusionPipeline:
    """A randomly initialised StableDiffusionPipeline with SD v1.5's module structure.

    Args:
        seed: seeds the weight initialisation; the same seed gives the same weights.
        image_size: default output side in pixels (the VAE downsamples by 8).

    Returns:
        A CPU float32 pipeline with no safety checker, ``name_or_path`` set to
        ``"cemaps/tiny-sd"``.
    """
    tokenizer = clip_tokenizer()
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_config = CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
        unet = UNet2DConditionModel(
            sample_size=image_size // 8,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=4,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=image_size,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(_name_or_path=TINY_MODEL_ID)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A randomly initialised StableDiffusionXLPipeline at diffusers' own dummy sizes.

    The components are those of diffusers' ``StableDiffusionXLPipelineFastTests.get_dummy_components``
    (tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py): a two-level UNet with
    ``addition_embed_type="text_time"``, ``transformer_layers_per_block=(1, 2)`` and a 64-wide
    context, two 5-layer CLIP text encoders (the second with a 32-wide projection: the pooled
    ``add_text_embeds``), a two-level VAE (a latent per 2x2 pixels) and an Euler scheduler with
    ``"leading"`` spacing. Three departures, each to look like the released SDXL: the tokenizers are
    OpenAI's CLIP BPE (see :func:`clip_tokenizer`; diffusers downloads a 1000-token test vocabulary);
    ``tokenizer_2`` pads with ``"!"`` as SDXL's does, so that the two encoders' token ids differ after
    the prompt; and the encoders are 24 and 40 wide (diffusers: 32 and 32) as SDXL's are 768 and 1280,
    so that a context slice mixed up between them shows, and diffusers' single-file loader tells the
    two apart by width as it does for SDXL.

    Args:
        seed: seeds the weight initialisation; the same seed gives the same weights.

    Returns:
        A CPU float32 pipeline (default output 64x64 pixels) with ``name_or_path`` ``"cemaps/tiny-sdxl"``.
    """
    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer(pad_token="!")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(2, 4),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + the 32-wide pooled embedding
            cross_attention_dim=64,
            norm_num_groups=1,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            sample_size=128,
        )

        def text_config(hidden_size: int) -> CLIPTextConfig:
            return CLIPTextConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=hidden_size,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                hidden_act="gelu",
                projection_dim=32,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )

        text_encoder = CLIPTextModel(text_config(TINY_SDXL_ENCODER_WIDTHS[0]))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(TINY_SDXL_ENCODER_WIDTHS[1]))
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(_name_or_path=TINY_SDXL_MODEL_ID)
    return pipe
