"""What every personalization method shares: settings, instance images, outputs.

The denoising loss loop itself is in :mod:`cemaps.models.train.loop`; it is the one in
diffusers' example scripts (``examples/dreambooth/train_dreambooth.py``,
``train_dreambooth_lora.py``, ``examples/textual_inversion/textual_inversion.py``): VAE latents
(``latent_dist.sample() * scaling_factor``), DDPM forward noise at a uniformly drawn timestep,
and the MSE between the UNet's prediction and the scheduler's target (noise, or velocity for
v-prediction models), optimised with AdamW (betas 0.9/0.999, weight decay 1e-2, eps 1e-8) at a
constant learning rate. Two differences, both exact: instance images are resized and
centre-cropped with no random augmentation, so their VAE posteriors are encoded once and
sampled every step; and a frozen text encoder's conditioning is computed once.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cemaps.models.train.conditioning import TextConditioning
from diffusers import StableDiffusionPipeline

from cemaps.errors import ConfigError, SettingError
from cemaps.models.methods import METHODS
from cemaps.models.train.images import (  # noqa: F401  (re-exported: the trainers import them from here)
    IMAGE_SUFFIXES,
    SourceImage,
    images_to_pixels,
    load_instance_images,
)

LORA_TARGETS = ("cross_attention", "attention")
MIXED_PRECISIONS = ("fp16", "bf16")
METADATA_NAME = "cemaps_train.json"
CLASS_IMAGES_DIR = "class_images"


@dataclass(frozen=True)
class MethodDefaults:
    """Per-method defaults taken from diffusers' example scripts and their READMEs."""

    steps: int
    learning_rate: float
    max_grad_norm: float | None  # the DreamBooth scripts clip at 1.0; the TI script does not clip


METHOD_DEFAULTS = {
    "dreambooth": MethodDefaults(steps=400, learning_rate=5e-6, max_grad_norm=1.0),
    "lora": MethodDefaults(steps=500, learning_rate=1e-4, max_grad_norm=1.0),
    "textual_inversion": MethodDefaults(steps=3000, learning_rate=5e-4, max_grad_norm=None),
}


@dataclass(frozen=True)
class TrainSettings:
    """How one personalization run trains; ``steps`` and ``learning_rate`` default per method.

    Example:
        >>> TrainSettings(method="lora").learning_rate
        0.0001
        >>> TrainSettings(method="dreambooth", steps=30).steps
        30

    Attributes:
        method: ``"dreambooth"`` (full UNet), ``"lora"`` (peft adapter on the UNet) or
            ``"textual_inversion"`` (one new token embedding).
        steps: optimiser steps; None takes the method default (400 / 500 / 3000).
        learning_rate: None takes the method default (5e-6 / 1e-4 / 5e-4).
        batch_size: instance images per step (DreamBooth with prior preservation adds as many class images).
        resolution: square training side in pixels; None is the pipe's default (512 for SD v1.5).
        seed: seeds LoRA initialisation, data order, VAE sampling, noise, timesteps and class images.
        rank: LoRA rank; ``lora_alpha`` equals it, as in diffusers' script.
        lora_targets: ``"cross_attention"`` (``to_k``/``to_v`` of every ``attn2``) or ``"attention"``
            (``to_q``/``to_k``/``to_v``/``to_out.0`` of every attention, diffusers' script default).
        initializer_token: TI only: the single token whose embedding starts the new one; None is the class word.
        num_vectors: TI only: embedding vectors learned for the token (diffusers' ``--num_vectors``); with
            more than one, the prompt's token stands for ``token token_1 ... token_{n-1}`` and the file holds
            ``{token: tensor[num_vectors, dim]}``, the multi-vector form ``load_textual_inversion`` expands.
        prior_preservation: DreamBooth only: add the class-prior loss on images the base pipe generates.
        prior_loss_weight: weight of that loss.
        num_class_images: how many class images to generate and cache.
        class_inference_steps: denoising steps per generated class image.
        mixed_precision: None (float32), ``"fp16"`` (autocast with gradient scaling) or ``"bf16"``.
        gradient_checkpointing: recompute activations in backward to save memory.
        use_8bit_adam: bitsandbytes' 8-bit AdamW (CUDA; needs ``pip install bitsandbytes``).
        instance_template: the instance images' prompt with ``{token}`` (once) and ``{class_word}``
            (diffusers' ``--instance_prompt``, written as a template); default "a photo of {token} {class_word}".
        class_template: the class images' prompt with ``{class_word}`` (diffusers' ``--class_prompt``).
    """

    method: str
    steps: int | None = None
    learning_rate: float | None = None
    batch_size: int = 1
    resolution: int | None = None
    seed: int = 0
    rank: int = 4
    lora_targets: str = "cross_attention"
    initializer_token: str | None = None
    num_vectors: int = 1
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_inference_steps: int = 50
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    instance_template: str = "a photo of {token} {class_word}"
    class_template: str = "a photo of a {class_word}"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; expected one of {', '.join(METHODS)}")
        defaults = METHOD_DEFAULTS[self.method]
        # Frozen dataclass: fill the per-method defaults in place once, at construction.
        if self.steps is None:
            object.__setattr__(self, "steps", defaults.steps)
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", defaults.learning_rate)
        _require(isinstance(self.steps, int) and self.steps >= 1, "steps", self.steps, "an integer >= 1")
        _require(
            self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", self.learning_rate, "> 0"
        )
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.resolution is None or self.resolution >= 8, "resolution", self.resolution, "None or >= 8")
        _require(self.rank >= 1, "rank", self.rank, "an integer >= 1")
        _require(self.lora_targets in LORA_TARGETS, "lora_targets", self.lora_targets, " or ".join(LORA_TARGETS))
        _require(
            isinstance(self.num_vectors, int) and self.num_vectors >= 1,
            "num_vectors",
            self.num_vectors,
            "an integer >= 1",
        )
        _require(
            self.num_vectors == 1 or self.method == "textual_inversion",
            "num_vectors",
            self.num_vectors,
            "1 unless method='textual_inversion'",
        )
        _require(self.prior_loss_weight >= 0, "prior_loss_weight", self.prior_loss_weight, ">= 0")
        _require(self.num_class_images >= 1, "num_class_images", self.num_class_images, "an integer >= 1")
        _require(self.class_inference_steps >= 1, "class_inference_steps", self.class_inference_steps, ">= 1")
        _require(
            self.mixed_precision in (None, *MIXED_PRECISIONS),
            "mixed_precision",
            self.mixed_precision,
            "None, 'fp16' or 'bf16'",
        )
        _require(
            isinstance(self.instance_template, str) and self.instance_template.count("{token}") == 1,
            "instance_template",
            self.instance_template,
            "a text holding {token} once (and optionally {class_word})",
        )
        _require(
            isinstance(self.class_template, str) and "{token}" not in self.class_template,
            "class_template",
            self.class_template,
            "a text without {token} (optionally holding {class_word})",
        )
        for field_name in ("instance_template", "class_template"):
            template = getattr(self, field_name)
            try:
                template.format(token="t", class_word="c")
            except (KeyError, IndexError, ValueError):
                _require(False, field_name, template, "only the placeholders {token} and {class_word}")
        _require(
            not self.prior_preservation or self.method == "dreambooth",
            "prior_preservation",
            self.prior_preservation,
            "False unless method='dreambooth'",
        )

    @property
    def max_grad_norm(self) -> float | None:
        """Gradient clipping norm used by the method's diffusers script (None: no clipping)."""
        return METHOD_DEFAULTS[self.method].max_grad_norm


def _require(ok: bool, field: str, value: object, expected: str) -> None:
    if not ok:
        raise SettingError("TrainSettings", field, value, expected)


@dataclass(frozen=True)
class TrainResult:
    """What a personalization run produced.

    Attributes:
        out: the output folder (artifact + ``cemaps_train.json``).
        artifact: the file or folder diffusers loads (LoRA / TI safetensors, or ``out`` for DreamBooth).
        final_loss: the last step's loss.
        losses: one loss per step.
        settings: the settings used, with every default resolved.
        seconds: wall time of the training loop and saving.
    """

    out: Path
    artifact: Path
    final_loss: float
    losses: tuple[float, ...]
    settings: TrainSettings
    seconds: float


@dataclass(frozen=True)
class TrainingData:
    """Who is learned, and the pixels of one run.

    Attributes:
        token: the identifier, e.g. ``"sks"`` (DreamBooth/LoRA) or a new ``"<my-dog>"`` (TI).
        class_word: e.g. ``"dog"``.
        instance_pixels: [n_instance, 3, H, W] in [-1, 1].
        class_pixels: [n_class, 3, H, W] in [-1, 1], or None without prior preservation.
    """

    token: str
    class_word: str
    instance_pixels: torch.Tensor
    class_pixels: torch.Tensor | None = None
    instance_template: str = TrainSettings.instance_template
    class_template: str = TrainSettings.class_template

    @property
    def instance_prompt(self) -> str:
        return instance_prompt(self.token, self.class_word, self.instance_template)

    @property
    def class_prompt(self) -> str:
        return class_prompt(self.class_word, self.class_template)


def instance_prompt(token: str, class_word: str, template: str = TrainSettings.instance_template) -> str:
    """The conditioning prompt of the instance images (diffusers' ``--instance_prompt``), e.g. "a photo of sks dog"."""
    return template.format(token=token, class_word=class_word)


def class_prompt(class_word: str, template: str = TrainSettings.class_template) -> str:
    """The prompt of the prior-preservation class images (diffusers' ``--class_prompt``), e.g. "a photo of a dog"."""
    return template.format(class_word=class_word)


def default_resolution(pipe: StableDiffusionPipeline) -> int:
    """The pipe's native image side: UNet sample size times the VAE downsampling factor."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def frozen_text_conditioning(pipe: StableDiffusionPipeline, prompt: str) -> Callable[[], TextConditioning]:
    """The frozen text encoders' conditioning for ``prompt``, computed once (see :mod:`.conditioning`)."""
    from cemaps.models.train.conditioning import frozen_conditioning

    return frozen_conditioning(pipe, prompt)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """An output folder must be new, empty, or hold only the class-image cache, unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {str(out)!r} is a file; expected a folder path")
    if out.is_dir() and not overwrite:
        leftovers = sorted(p.name for p in out.iterdir() if p.name != CLASS_IMAGES_DIR)
        if leftovers:
            listed = ", ".join(leftovers[:3]) + (", ..." if len(leftovers) > 3 else "")
            raise ConfigError(
                f"out folder {str(out)!r} is not empty ({listed}); expected an empty folder, or pass overwrite=True"
            )


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A hidden sibling folder the artifacts are written to first, so a failed run leaves nothing half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_outputs(staging: Path, out: Path) -> None:
    """Replaces ``out``'s contents (except the class-image cache) with the staged files; metadata last."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name == CLASS_IMAGES_DIR:
            continue
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    staged = sorted(staging.iterdir(), key=lambda p: p.name == METADATA_NAME)
    for path in staged:
        shutil.move(str(path), str(out / path.name))


def write_metadata(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def settings_record(settings: TrainSettings) -> dict:
    return {**asdict(settings), "max_grad_norm": settings.max_grad_norm}


@contextlib.contextmanager
def preserved_pipeline_state(pipe: StableDiffusionPipeline, seed: int) -> Iterator[None]:
    """Runs a training body without leaving a trace on the pipe or on global RNG state.

    On exit (also after an exception) restores every parameter's ``requires_grad``, drops
    gradients, restores train/eval modes and gradient-checkpointing flags of the UNet, text
    encoders (all of the family's) and VAE, and the caller's global torch RNG state (the body runs seeded with ``seed``).
    Weight restoration is each method's job (it knows what it changed).
    """
    from cemaps.models.families import family_of

    # every component of the family (SDXL: text_encoder_2 too), and the VAE
    components = (*family_of(pipe).swappable_components, "vae")
    modules = {key: getattr(pipe, key) for key in components if getattr(pipe, key, None) is not None}
    requires_grad = {
        key: {name: p.requires_grad for name, p in module.named_parameters()} for key, module in modules.items()
    }
    training = {key: {name: m.training for name, m in module.named_modules()} for key, module in modules.items()}
    unet_checkpointing = pipe.unet.is_gradient_checkpointing
    text_checkpointing = pipe.text_encoder.is_activation_checkpointing
    cuda_devices = [d for d in {p.device for p in pipe.unet.parameters()} if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            yield
    finally:
        if pipe.unet.is_gradient_checkpointing and not unet_checkpointing:
            pipe.unet.disable_gradient_checkpointing()
        if pipe.text_encoder.is_activation_checkpointing and not text_checkpointing:
            pipe.text_encoder.activation_checkpointing_disable()
        for key, module in modules.items():
            for name, parameter in module.named_parameters():
                parameter.grad = None
                parameter.requires_grad_(requires_grad[key].get(name, parameter.requires_grad))
            for name, submodule in module.named_modules():
                submodule.training = training[key].get(name, submodule.training)


def enable_gradient_checkpointing(pipe: StableDiffusionPipeline, text_encoder_too: bool) -> None:
    # diffusers' UNet checkpoints only in training mode, so the frozen UNet is put in train() too
    # (it has no dropout or batch norm: train() changes nothing else), as the TI script does.
    pipe.unet.train()
    pipe.unet.enable_gradient_checkpointing()
    if text_encoder_too:
        pipe.text_encoder.train()
        pipe.text_encoder.activation_checkpointing_enable()
