"""Personalization trainers: DreamBooth, LoRA and Textual Inversion, on diffusers + peft.

``personalize`` trains one subject on a pipeline, leaves the pipeline as it found it, and
writes the result in the format diffusers itself loads, plus ``cemaps_train.json`` (settings,
per-step losses, seeds, SHA-256 of the source images, library versions):

- ``lora``: ``out/pytorch_lora_weights.safetensors``, loaded by ``pipe.load_lora_weights(out)``;
- ``textual_inversion``: ``out/learned_embeds.safetensors`` ``{token: [dim]}`` (``[num_vectors, dim]``), loaded by
  ``pipe.load_textual_inversion(out)``;
- ``dreambooth``: the whole pipeline in safetensors, loaded by
  ``StableDiffusionPipeline.from_pretrained(out)``.

The caller's pipe is unchanged when ``personalize`` returns (LoRA adapters are removed, the
new TI token never enters the caller's tokenizer, DreamBooth's base UNet weights are loaded
back), and so is the global torch RNG state.

Example:
    >>> from cemaps.models import tiny_pipeline
    >>> from PIL import Image
    >>> import tempfile, pathlib
    >>> pipe = tiny_pipeline(seed=0)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "lora-dog"
    >>> result = personalize(pipe, "lora", [Image.new("RGB", (64, 64), "brown")], "sks", "dog", out,
    ...                      TrainSettings(method="lora", steps=3), progress=False)
    >>> sorted(p.name for p in out.iterdir())
    ['.cemaps-output.json', 'cemaps_train.json', 'pytorch_lora_weights.safetensors']

Defaults follow diffusers' example scripts: DreamBooth lr 5e-6, 400 steps; LoRA rank 4
(alpha 4), lr 1e-4, 500 steps; Textual Inversion lr 5e-4, 3000 steps, initializer = class word.
The conditioning prompt is ``"a photo of <token> <class_word>"``; the class prompt for prior
preservation is ``"a photo of a <class_word>"`` (``TrainSettings.instance_template`` and
``class_template`` change them, as diffusers' ``--instance_prompt`` / ``--class_prompt`` do).

Settings for SD v1.5 (512x512) on one GPU. Load the base in float32
(``load_pipeline(path, device="cuda", dtype="float32")``: trained weights must be float32, as
in diffusers' scripts, which refuse half-precision trainable weights) and let autocast do the
half-precision math. The memory figures below are arithmetic or diffusers' READMEs, not
cemaps measurements:

- ``mixed_precision="bf16"`` on Ampere or newer (A100, H100, RTX 30xx+); ``"fp16"`` on older
  cards (adds dynamic loss scaling). Autocast runs convolutions and attention in half precision.
- ``gradient_checkpointing=True`` recomputes UNet (and, for TI, text-encoder) activations in the
  backward pass: slower steps, much less activation memory.
- ``use_8bit_adam=True`` keeps AdamW's two moment buffers in 8 bits (bitsandbytes, CUDA only:
  ``pip install bitsandbytes``; without it a one-line ConfigError says so). For DreamBooth's
  860 M UNet parameters that is ~1.7 GB of optimiser state instead of ~6.9 GB.
- DreamBooth on a 16-24 GB card: ``TrainSettings(method="dreambooth", mixed_precision="fp16",
  gradient_checkpointing=True, use_8bit_adam=True)`` (diffusers' DreamBooth README: these three
  together fit a 16 GB GPU); on 40-80 GB cards ``mixed_precision="bf16"`` alone. LoRA and
  Textual Inversion train only a few thousand to a few million parameters and need
  ``mixed_precision`` at most.
- Prior preservation (``prior_preservation=True``, DreamBooth) first generates
  ``num_class_images`` (default 100) 50-step class images with the base pipe; they are cached
  in ``out/class_images/`` and reused by later runs (``overwrite=True`` keeps the cache).
"""

from __future__ import annotations

import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

from diffusers import StableDiffusionPipeline
from PIL import Image

from cemaps.errors import ConfigError, SettingError
from cemaps.models.families import family_of
from cemaps.models.train import dreambooth, lora, textual_inversion
from cemaps.models.train.common import (
    CLASS_IMAGES_DIR,
    METADATA_NAME,
    METHOD_DEFAULTS,
    METHODS,
    TrainingData,
    TrainResult,
    TrainSettings,
    check_output_dir,
    commit_outputs,
    default_resolution,
    images_to_pixels,
    load_instance_images,
    settings_record,
    staging_dir,
    write_metadata,
)
from cemaps.models.train.loop import adamw_8bit_class
from cemaps.outputs import write_marker

__all__ = ["METHODS", "METHOD_DEFAULTS", "TrainResult", "TrainSettings", "personalize"]

_TRAINERS = {"dreambooth": dreambooth, "lora": lora, "textual_inversion": textual_inversion}
_ARTIFACTS = {
    "dreambooth": None,  # the folder itself
    "lora": lora.LORA_WEIGHTS_NAME,
    "textual_inversion": textual_inversion.TI_WEIGHTS_NAME,
}


def personalize(
    pipe: StableDiffusionPipeline,
    method: str,
    images: list[Image.Image] | str | Path,
    token: str,
    class_word: str,
    out: str | Path,
    settings: TrainSettings | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Personalizes ``pipe`` on a subject and writes the artifact diffusers loads into ``out``.

    Args:
        pipe: the base pipeline (unchanged on return). DreamBooth and TI need it in float32.
        method: ``"dreambooth"``, ``"lora"`` or ``"textual_inversion"``.
        images: a folder of instance images or a list of PIL images.
        token: the subject identifier: a rare word such as ``"sks"`` (DreamBooth, LoRA) or a
            new token such as ``"<my-dog>"`` (TI).
        class_word: the subject's class, e.g. ``"dog"``.
        out: output folder; must be empty (or hold only ``class_images/``) unless ``overwrite``. It is
            marked as this command's output (:func:`cemaps.outputs.write_marker`).
        settings: defaults to ``TrainSettings(method=method)``; its method must equal ``method``.
        progress: show a rich progress bar with the loss.
        overwrite: replace the contents of a non-empty ``out`` (the class-image cache is kept).

    Returns:
        The output paths, per-step losses and the settings used.

    Raises:
        ConfigError: bad method, settings, images, token, class word or output folder. Nothing
            is written before the inputs are checked, and artifacts appear only after training
            succeeded.
    """
    settings = settings if settings is not None else TrainSettings(method=method)
    if settings.method != method:
        raise ConfigError(
            f"settings.method={settings.method!r} differs from method={method!r}; expected the same method"
        )
    _check_words(token, class_word)
    out = Path(out).expanduser()
    check_output_dir(out, overwrite)
    sources = load_instance_images(images)
    trainer = _trainer(pipe, method)
    native = getattr(trainer, "default_resolution", default_resolution)  # a DiT trainer knows its family's
    resolution = settings.resolution if settings.resolution is not None else native(pipe)
    if resolution % pipe.vae_scale_factor:
        raise SettingError(
            "TrainSettings", "resolution", resolution, f"a multiple of the VAE factor {pipe.vae_scale_factor}"
        )
    settings = replace(trainer.check_inputs(pipe, token, class_word, settings), resolution=resolution)
    if settings.use_8bit_adam:
        adamw_8bit_class()

    class_sources = []
    if settings.prior_preservation:
        class_sources = dreambooth.ensure_class_images(
            pipe, class_word, out / CLASS_IMAGES_DIR, settings, resolution, progress
        )
    data = TrainingData(
        token=token,
        class_word=class_word,
        instance_pixels=images_to_pixels([s.image for s in sources], resolution),
        class_pixels=images_to_pixels([s.image for s in class_sources], resolution) if class_sources else None,
        instance_template=settings.instance_template,
        class_template=settings.class_template,
    )
    with staging_dir(out) as staging:
        started = time.perf_counter()
        losses = trainer.train(pipe, data, settings, staging, progress)
        seconds = time.perf_counter() - started
        write_metadata(
            staging / METADATA_NAME,
            {
                "method": method,
                "token": token,
                "class_word": class_word,
                "instance_prompt": data.instance_prompt,
                "class_prompt": data.class_prompt if class_sources else None,
                "settings": settings_record(settings),
                "seed": settings.seed,
                "class_image_seeds": [settings.seed + i for i in range(len(class_sources))],
                "losses": losses,
                "final_loss": losses[-1],
                "seconds": seconds,
                "seconds_per_step": seconds / settings.steps,
                "base_model": str(pipe.config.get("_name_or_path", "")),
                "device": str(family_of(pipe).denoiser_of(pipe).device),
                "artifact": _ARTIFACTS[method] or ".",
                "source_images": [{"name": s.name, "sha256": s.sha256} for s in sources],
                "class_images": [{"name": s.name, "sha256": s.sha256} for s in class_sources],
                "versions": {name: version(name) for name in ("cemaps", "torch", "diffusers", "peft", "transformers")},
            },
        )
        commit_outputs(staging, out)
    write_marker(out, "personalize")  # lets a later overwrite tell this output from a user's files
    artifact = out / _ARTIFACTS[method] if _ARTIFACTS[method] else out
    return TrainResult(
        out=out, artifact=artifact, final_loss=losses[-1], losses=tuple(losses), settings=settings, seconds=seconds
    )


def _trainer(pipe: StableDiffusionPipeline, method: str):
    """The trainer module of ``method`` for ``pipe``'s family (a transformer family trains LoRA only)."""
    family = family_of(pipe)
    if family.denoiser != "transformer":
        return _TRAINERS[method]
    if method != "lora" or not family.lora_components():
        raise ConfigError(
            f"method {method!r} on {family.name}: cemaps trains LoRA on SD3 and Flux transformers only; "
            "DreamBooth and Textual Inversion training are not offered for this family"
        )
    from cemaps.models.train import lora_dit

    return lora_dit


def _check_words(token: str, class_word: str) -> None:
    if not token or token != token.strip() or len(token.split()) != 1:
        raise ConfigError(f"token {token!r} is invalid; expected one word without spaces, e.g. 'sks' or '<my-dog>'")
    if not class_word or not class_word.strip():
        raise ConfigError(f"class_word {class_word!r} is invalid; expected a class noun such as 'dog'")
