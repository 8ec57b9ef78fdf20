"""DreamBooth: full UNet fine-tuning, as diffusers' ``examples/dreambooth/train_dreambooth.py``.

With prior preservation the base pipe first generates ``num_class_images`` class images
(``"a photo of a <class_word>"``), cached in ``out/class_images/`` and reused by later runs with
the same generation settings; each step then adds the class-prior MSE on as many class images.
The trained pipeline is written with ``save_pretrained(safe_serialization=True)`` (what
``StableDiffusionPipeline.from_pretrained(out)`` reads), after which the UNet's base weights,
kept in a CPU copy, are loaded back: the caller's pipe is bit-identical to before.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from rich.progress import Progress

from cemaps.errors import ConfigError
from cemaps.models.hashing import file_sha256
from cemaps.models.train.common import (
    SourceImage,
    TrainingData,
    TrainSettings,
    class_prompt,
    enable_gradient_checkpointing,
    frozen_text_conditioning,
    preserved_pipeline_state,
)
from cemaps.models.train.loop import run_denoising_training

CLASS_MANIFEST_NAME = "class_images.json"


def check_inputs(pipe: StableDiffusionPipeline, token: str, class_word: str, settings: TrainSettings) -> TrainSettings:
    """The UNet must be float32 to be trained (the script refuses otherwise too)."""
    if pipe.unet.dtype != torch.float32:
        raise ConfigError(
            f"DreamBooth trains the UNet in float32, but pipe.unet is {pipe.unet.dtype}; "
            "expected a float32 base (use mixed_precision='fp16' or 'bf16' for speed)"
        )
    return settings


def ensure_class_images(
    pipe: StableDiffusionPipeline,
    class_word: str,
    folder: Path,
    settings: TrainSettings,
    resolution: int,
    progress: bool,
) -> list[SourceImage]:
    """Generates (or reuses from ``folder``) the class images for prior preservation.

    Image ``i`` is generated from seed ``settings.seed + i``; a manifest records the generation
    settings, and images made with other settings are regenerated.
    """
    prompt = class_prompt(class_word, settings.class_template)
    manifest = {
        "prompt": prompt,
        "resolution": resolution,
        "num_inference_steps": settings.class_inference_steps,
        "seed": settings.seed,
        "base_model": str(pipe.config.get("_name_or_path", "")),
    }
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / CLASS_MANIFEST_NAME
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        for stale in folder.glob("*.png"):
            stale.unlink()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    paths = [folder / f"{index:04d}.png" for index in range(settings.num_class_images)]
    missing = [index for index, path in enumerate(paths) if not path.is_file()]
    progress_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        with Progress(disable=not progress or not missing) as bar:
            task = bar.add_task("class images", total=len(missing))
            for index in missing:
                generator = torch.Generator(device=pipe.device).manual_seed(settings.seed + index)
                image = pipe(
                    prompt,
                    height=resolution,
                    width=resolution,
                    num_inference_steps=settings.class_inference_steps,
                    generator=generator,
                ).images[0]
                partial = paths[index].with_suffix(".partial.png")
                image.save(partial)
                partial.replace(paths[index])  # a killed run never leaves a truncated cached image
                bar.advance(task)
    finally:
        pipe._progress_bar_config = progress_config
    sources = []
    for path in paths:
        with Image.open(path) as opened:
            sources.append(SourceImage(opened.convert("RGB"), path.name, file_sha256(path)))
    return sources


def train(
    pipe: StableDiffusionPipeline, data: TrainingData, settings: TrainSettings, save_dir: Path, progress: bool
) -> list[float]:
    """Fine-tunes the whole UNet, saves the pipeline to ``save_dir``, restores the base UNet weights.

    Returns:
        The loss of every step.
    """
    unet = pipe.unet
    base_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in unet.state_dict().items()}
    with preserved_pipeline_state(pipe, settings.seed):
        try:
            pipe.vae.requires_grad_(False)
            pipe.text_encoder.requires_grad_(False)
            unet.requires_grad_(True)
            unet.train()
            if settings.gradient_checkpointing:
                enable_gradient_checkpointing(pipe, text_encoder_too=False)
            class_conditioning = (
                frozen_text_conditioning(pipe, data.class_prompt) if data.class_pixels is not None else None
            )
            losses = run_denoising_training(
                pipe,
                list(unet.parameters()),
                data,
                frozen_text_conditioning(pipe, data.instance_prompt),
                class_conditioning,
                settings,
                progress,
            )
            unet.eval()
            pipe.save_pretrained(save_dir, safe_serialization=True)
        finally:
            unet.load_state_dict(base_weights)
    return losses
