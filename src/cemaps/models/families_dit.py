"""The transformer (DiT) families: SD3 / SD3.5, Flux and PixArt-Sigma, as registry entries.

Each entry states what diffusers' pipeline of that family does:

- SD3 / SD3.5 (``StableDiffusion3Pipeline.encode_prompt``): the context is CLIP ViT-L's and
  OpenCLIP ViT-bigG's penultimate states concatenated on the feature axis (77 tokens, padded
  with zeros to T5's width), then T5's ``max_sequence_length`` tokens on the token axis; the
  pooled vector is both CLIP projections. Image and text attend jointly (``JointTransformerBlock``,
  ``JointAttnProcessor2_0``: image keys first, then text). Guidance doubles the batch
  (unconditional half first); timesteps are ``sigma * 1000`` of a flow-matching schedule.
- Flux (``FluxPipeline``): the context is T5's tokens alone; CLIP gives only the pooled vector.
  Double-stream blocks (``FluxTransformerBlock``) and single-stream blocks
  (``FluxSingleTransformerBlock``) attend jointly, text keys first, with rotary embeddings.
  FLUX.1-dev is guidance-distilled: the scale is a transformer input and the batch is not
  doubled. The pipeline passes ``timestep / 1000``.
- PixArt-Sigma (``PixArtSigmaPipeline``): T5's tokens with T5's attention mask, read by true
  cross-attention (``attn2``), which applies the mask; guidance doubles the batch; DDPM-style
  discrete timesteps.

Example:
    >>> from cemaps.models.families import family_by_key
    >>> [s.encoder for s in family_by_key("sd3").text_streams]
    ['text_encoder', 'text_encoder_2', 'text_encoder_3']
"""

from __future__ import annotations

from cemaps.models.families import ModelFamily, TextStream, register_family

STABLE_DIFFUSION_3 = register_family(
    ModelFamily(
        key="sd3",
        name="SD3/SD3.5",
        pipeline_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
        denoiser="transformer",
        text_streams=(
            TextStream(encoder="text_encoder", tokenizer="tokenizer", hidden_state="penultimate", pooled=True),
            TextStream(
                encoder="text_encoder_2",
                tokenizer="tokenizer_2",
                labels_tokens=False,
                hidden_state="penultimate",
                pooled=True,
            ),
            TextStream(encoder="text_encoder_3", tokenizer="tokenizer_3", token_block=1),
        ),
        attention="joint",
        latent_grid="patch_tokens",
        time_convention="flow_matching",
        single_file_types=("sd3", "sd35_medium", "sd35_large"),
        weight_markers=("joint_blocks.", "context_block.", "text_encoder_3", "lora_te3_"),
    )
)

FLUX = register_family(
    ModelFamily(
        key="flux",
        name="Flux",
        pipeline_classes=("FluxPipeline", "FluxImg2ImgPipeline"),
        denoiser="transformer",
        text_streams=(
            TextStream(encoder="text_encoder", tokenizer="tokenizer", token_block=None, pooled=True),
            TextStream(encoder="text_encoder_2", tokenizer="tokenizer_2"),
        ),
        guidance="embedded_scale",
        attention="joint",
        latent_grid="patch_tokens",
        time_convention="flow_matching",
        single_file_types=("flux-dev", "flux-schnell"),
        denoiser_time_scale=1000.0,
        weight_markers=("single_transformer_blocks.", "double_blocks.", "single_blocks.", "lora_unet_double_blocks_"),
    )
)

PIXART_SIGMA = register_family(
    ModelFamily(
        key="pixart-sigma",
        name="PixArt-Sigma",
        pipeline_classes=("PixArtSigmaPipeline",),
        denoiser="transformer",
        text_streams=(TextStream(encoder="text_encoder", tokenizer="tokenizer"),),
        latent_grid="patch_tokens",
    )
)
