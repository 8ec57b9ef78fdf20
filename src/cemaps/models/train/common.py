"""What every personalization method shares: settings, instance images, the denoising loss loop, outputs.

The loop is the one in diffusers' example scripts (``examples/dreambooth/train_dreambooth.py``,
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
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image, UnidentifiedImageError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torchvision import transforms

from cemaps.errors import ConfigError, SettingError
from cemaps.models.hashing import file_sha256
from cemaps.models.methods import METHODS

LORA_TARGETS = ("cross_attention", "attention")
MIXED_PRECISIONS = ("fp16", "bf16")
METADATA_NAME = "cemaps_train.json"
CLASS_IMAGES_DIR = "class_images"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_ADAMW = {"betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}
_LATENT_ENCODE_CHUNK = 8


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
        prior_preservation: DreamBooth only: add the class-prior loss on images the base pipe generates.
        prior_loss_weight: weight of that loss.
        num_class_images: how many class images to generate and cache.
        class_inference_steps: denoising steps per generated class image.
        mixed_precision: None (float32), ``"fp16"`` (autocast with gradient scaling) or ``"bf16"``.
        gradient_checkpointing: recompute activations in backward to save memory.
        use_8bit_adam: bitsandbytes' 8-bit AdamW (CUDA; needs ``pip install bitsandbytes``).
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
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_inference_steps: int = 50
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False

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
class SourceImage:
    """An instance (or class) image and where it came from."""

    image: Image.Image
    name: str
    sha256: str


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

    @property
    def instance_prompt(self) -> str:
        return instance_prompt(self.token, self.class_word)

    @property
    def class_prompt(self) -> str:
        return class_prompt(self.class_word)


def instance_prompt(token: str, class_word: str) -> str:
    return f"a photo of {token} {class_word}"


def class_prompt(class_word: str) -> str:
    return f"a photo of a {class_word}"


def default_resolution(pipe: StableDiffusionPipeline) -> int:
    """The pipe's native image side: UNet sample size times the VAE downsampling factor."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def load_instance_images(images: list[Image.Image] | str | Path) -> list[SourceImage]:
    """Reads instance images from a folder (every readable image file, sorted by name) or a list.

    Raises:
        ConfigError: the folder is missing, empty, holds a corrupt image file or no readable image;
            the list is empty or holds something other than PIL images.
    """
    if isinstance(images, list | tuple):
        if not images:
            raise ConfigError("images list is empty; expected at least one PIL image")
        sources = []
        for index, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ConfigError(f"images[{index}] is a {type(image).__name__}; expected a PIL.Image.Image")
            sources.append(SourceImage(image.convert("RGB"), f"images[{index}]", _pil_sha256(image)))
        return sources
    folder = Path(images).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"images folder {str(folder)!r} does not exist or is not a folder; expected a folder of images"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"images folder {str(folder)!r} is empty; expected image files (.png, .jpg, ...)")
    sources = []
    for path in files:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                raise ConfigError(
                    f"image file {str(path)!r} is not readable ({error}); expected a valid image"
                ) from None
            continue  # notes, captions and other non-image files are allowed beside the images
        sources.append(SourceImage(image, path.name, file_sha256(path)))
    if not sources:
        raise ConfigError(f"images folder {str(folder)!r} has no readable images; expected .png/.jpg/... files")
    return sources


def _pil_sha256(image: Image.Image) -> str:
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def images_to_pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resize (bilinear) + centre crop + [-1, 1], as diffusers' scripts with ``--center_crop``.

    Returns:
        [n, 3, resolution, resolution] float32.
    """
    transform = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    return torch.stack([transform(image) for image in images])


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    """[1, model_max_length] token ids, padded as diffusers' scripts pad."""
    return tokenizer(
        prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def frozen_text_conditioning(pipe: StableDiffusionPipeline, prompt: str) -> Callable[[], torch.Tensor]:
    """The frozen text encoder's states for ``prompt``, computed once.

    Returns:
        A function giving [1, tokens, dim].
    """
    ids = tokenize(pipe.tokenizer, prompt).to(pipe.text_encoder.device)
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
    return lambda: states


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


def make_optimizer(parameters: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with diffusers' script defaults, or bitsandbytes' 8-bit AdamW."""
    optimizer_class = adamw_8bit_class() if settings.use_8bit_adam else torch.optim.AdamW
    return optimizer_class(parameters, lr=settings.learning_rate, **_ADAMW)


def adamw_8bit_class() -> type[torch.optim.Optimizer]:
    try:
        import bitsandbytes
    except ImportError:
        raise SettingError(
            "TrainSettings", "use_8bit_adam", True, "False, or `pip install bitsandbytes` first (CUDA only)"
        ) from None
    return bitsandbytes.optim.AdamW8bit


def autocast_context(device: torch.device, mixed_precision: str | None) -> contextlib.AbstractContextManager:
    if mixed_precision is None:
        return contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def preserved_pipeline_state(pipe: StableDiffusionPipeline, seed: int) -> Iterator[None]:
    """Runs a training body without leaving a trace on the pipe or on global RNG state.

    On exit (also after an exception) restores every parameter's ``requires_grad``, drops
    gradients, restores train/eval modes and gradient-checkpointing flags of the UNet, text
    encoder and VAE, and the caller's global torch RNG state (the body runs seeded with ``seed``).
    Weight restoration is each method's job (it knows what it changed).
    """
    modules = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
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


def _index_stream(count: int, generator: torch.Generator) -> Iterator[int]:
    """Endless epochs of seeded permutations of ``range(count)`` (a shuffled DataLoader's order)."""
    while True:
        yield from torch.randperm(count, generator=generator).tolist()


def _latent_posteriors(vae, pixels: torch.Tensor, autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """Posterior parameters (mean, logvar) of each image: [n, 2 * latent_channels, h, w]."""
    chunks = []
    with torch.no_grad(), autocast:
        for start in range(0, pixels.shape[0], _LATENT_ENCODE_CHUNK):
            batch = pixels[start : start + _LATENT_ENCODE_CHUNK].to(vae.device, vae.dtype)
            chunks.append(vae.encode(batch).latent_dist.parameters.float())
    return torch.cat(chunks)


def run_denoising_training(
    pipe: StableDiffusionPipeline,
    parameters: list[torch.nn.Parameter],
    data: TrainingData,
    instance_conditioning: Callable[[], torch.Tensor],
    class_conditioning: Callable[[], torch.Tensor] | None,
    settings: TrainSettings,
    progress: bool,
    after_optimizer_step: Callable[[], None] | None = None,
) -> list[float]:
    """Optimises ``parameters`` on the noise-prediction MSE for ``settings.steps`` steps.

    Args:
        pipe: the pipeline; its UNet, VAE and scheduler config are used.
        parameters: what the optimiser updates (everything else must have ``requires_grad=False``).
        data: pixels and prompts.
        instance_conditioning: gives [1, tokens, dim] encoder states for the instance prompt;
            called every step inside autocast, so a trainable text encoder gets gradients.
        class_conditioning: the same for the class prompt, with prior preservation.
        settings: resolved settings.
        progress: show a rich progress bar with the running loss.
        after_optimizer_step: e.g. textual inversion's restore of the frozen embedding rows.

    Returns:
        The loss of every step.
    """
    unet, vae = pipe.unet, pipe.vae
    device = unet.device
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    autocast = autocast_context(device, settings.mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.mixed_precision == "fp16")
    noise_generator = torch.Generator(device=device).manual_seed(settings.seed)
    order_generator = torch.Generator().manual_seed(settings.seed)
    instance_posteriors = _latent_posteriors(vae, data.instance_pixels, autocast).to(device)
    instance_order = _index_stream(instance_posteriors.shape[0], order_generator)
    if data.class_pixels is not None:
        class_posteriors = _latent_posteriors(vae, data.class_pixels, autocast).to(device)
        class_order = _index_stream(class_posteriors.shape[0], order_generator)
    optimizer = make_optimizer(parameters, settings)
    scaling_factor = vae.config.scaling_factor
    losses: list[float] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"{settings.method} training", total=settings.steps, loss=float("nan"))
        for _ in range(settings.steps):
            batch = torch.tensor(list(islice(instance_order, settings.batch_size)), device=device)
            posteriors = instance_posteriors[batch]
            conditioning = [instance_conditioning]
            if data.class_pixels is not None:
                # Class samples form the second half of the batch, as in the script's collate_fn.
                class_batch = torch.tensor(list(islice(class_order, settings.batch_size)), device=device)
                posteriors = torch.cat([posteriors, class_posteriors[class_batch]])
                conditioning.append(class_conditioning)
            latents = DiagonalGaussianDistribution(posteriors).sample(noise_generator) * scaling_factor
            noise = torch.randn(latents.shape, generator=noise_generator, device=device, dtype=latents.dtype)
            timesteps = torch.randint(
                0, num_train_timesteps, (latents.shape[0],), generator=noise_generator, device=device
            )
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            with autocast:
                encoder_states = torch.cat([c().expand(settings.batch_size, -1, -1) for c in conditioning])
                prediction = unet(
                    noisy_latents.to(unet.dtype), timesteps, encoder_states.to(unet.dtype), return_dict=False
                )[0]
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            loss = _prior_preserving_mse(prediction.float(), target.float(), data, settings)
            scaler.scale(loss).backward()
            if settings.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_optimizer_step is not None:
                after_optimizer_step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=losses[-1])
    return losses


def _prior_preserving_mse(
    prediction: torch.Tensor, target: torch.Tensor, data: TrainingData, settings: TrainSettings
) -> torch.Tensor:
    """MSE on instance samples, plus ``prior_loss_weight`` x MSE on class samples (second half)."""
    if data.class_pixels is None:
        return F.mse_loss(prediction, target, reduction="mean")
    prediction, prediction_prior = torch.chunk(prediction, 2, dim=0)
    target, target_prior = torch.chunk(target, 2, dim=0)
    instance_loss = F.mse_loss(prediction, target, reduction="mean")
    prior_loss = F.mse_loss(prediction_prior, target_prior, reduction="mean")
    return instance_loss + settings.prior_loss_weight * prior_loss
