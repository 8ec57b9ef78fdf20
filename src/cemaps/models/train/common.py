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
import os
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

from cemaps.errors import ConfigError
from cemaps.models.methods import METADATA_NAME, METHODS  # noqa: F401  (re-exported)
from cemaps.models.train.images import (  # noqa: F401  (re-exported: the trainers import them from here)
    IMAGE_SUFFIXES,
    SourceImage,
    images_to_pixels,
    load_instance_images,
)
from cemaps.models.train_settings import (  # noqa: F401  (re-exported: the trainers import them from here)
    LORA_TARGETS,
    METHOD_DEFAULTS,
    MIXED_PRECISIONS,
    MethodDefaults,
    TrainSettings,
)
from cemaps.outputs import recover_leftovers

CLASS_IMAGES_DIR = "class_images"


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
    """A hidden sibling folder the artifacts are written to first, so a failed run leaves nothing half-written.

    It is named like :func:`cemaps.outputs.staged_output`'s (``.<name>.partial-<pid>-*``), so what a killed
    training left is cleared by the next run (:func:`cemaps.outputs.recover_leftovers`).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
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


def adapter_metadata(peft_config) -> dict:
    """A peft config's ``to_dict()`` with its set-valued fields sorted, for ``save_lora_weights``' metadata.

    peft stores ``target_modules`` / ``exclude_modules`` as sets, whose order follows Python's string
    hashing (``PYTHONHASHSEED``), so the same training wrote files with other bytes, and another sha256,
    from run to run; sorted, the file is a function of the weights and settings only.
    """
    metadata = peft_config.to_dict()
    for key in ("target_modules", "exclude_modules"):
        if isinstance(metadata.get(key), (list, set, tuple)):
            metadata[key] = sorted(metadata[key])
    return metadata
