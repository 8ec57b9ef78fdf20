"""The UNet families: Stable Diffusion 1.x/2.x and Stable Diffusion XL, as registry entries.

Each entry is what diffusers' pipeline of that family does, stated once: SD 1.x/2.x's
``encode_prompt`` puts CLIP's ``last_hidden_state`` into the UNet's context; SDXL's concatenates
the penultimate hidden states of CLIP ViT-L (``text_encoder``) and OpenCLIP ViT-bigG
(``text_encoder_2``) on the feature axis and takes the pooled embedding from ``text_encoder_2``
(``add_text_embeds``). Both double the UNet batch for guidance, unconditional half first, and use
integer DDPM timesteps. SDXL's Textual Inversion files hold ``clip_l`` and ``clip_g`` vectors
(kohya sd-scripts ``sdxl_train_textual_inversion.py``; A1111).

Example:
    >>> from cemaps.models.families import family_by_key
    >>> [s.encoder for s in family_by_key("sdxl").text_streams]
    ['text_encoder', 'text_encoder_2']
"""

from __future__ import annotations

from cemaps.models.families import ModelFamily, TextStream, register_family

STABLE_DIFFUSION = register_family(
    ModelFamily(
        key="sd",
        name="SD 1.x/2.x",
        pipeline_classes=(
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
        ),
        denoiser="unet",
        text_streams=(TextStream(encoder="text_encoder", tokenizer="tokenizer", hidden_state="last"),),
        single_file_types=("v1", "v2", "inpainting", "inpainting_v2"),
    )
)

# kohya sd-scripts (networks/lora.py) names SDXL's text encoders lora_te1_/lora_te2_ and its UNet
# with the original SGM block names; SGM checkpoints keep the second embedder and the label embedding.
STABLE_DIFFUSION_XL = register_family(
    ModelFamily(
        key="sdxl",
        name="SDXL",
        pipeline_classes=(
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        ),
        denoiser="unet",
        text_streams=(
            TextStream(
                encoder="text_encoder",
                tokenizer="tokenizer",
                hidden_state="penultimate",
                embedding_key="clip_l",
            ),
            TextStream(
                encoder="text_encoder_2",
                tokenizer="tokenizer_2",
                labels_tokens=False,
                hidden_state="penultimate",
                pooled=True,
                embedding_key="clip_g",
            ),
        ),
        single_file_types=("xl_base",),
        weight_markers=(
            "add_embedding",
            "text_encoder_2",
            "lora_te1_",
            "lora_te2_",
            "conditioner.embedders.1",
            "label_emb",
            "lora_unet_input_blocks_",
            "lora_unet_middle_block_",
            "lora_unet_output_blocks_",
        ),
    )
)
