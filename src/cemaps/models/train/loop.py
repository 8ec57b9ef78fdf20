"""The denoising training loop every personalization method runs (see :mod:`cemaps.models.train.common`).

diffusers' example scripts' loop: VAE posteriors encoded once and sampled every step, DDPM
forward noise at a uniformly drawn timestep, MSE against the scheduler's target, AdamW, an
optional prior-preservation term, a rich progress bar with the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from itertools import islice

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cemaps.errors import SettingError
from cemaps.models.families import family_of
from cemaps.models.train.common import TrainingData, TrainSettings
from cemaps.models.train.conditioning import TextConditioning, added_conditions

_LATENT_ENCODE_CHUNK = 8
# diffusers' example scripts' AdamW defaults
_ADAMW = {"betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}


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
    instance_conditioning: Callable[[], TextConditioning],
    class_conditioning: Callable[[], TextConditioning] | None,
    settings: TrainSettings,
    progress: bool,
    after_optimizer_step: Callable[[], None] | None = None,
) -> list[float]:
    """Optimises ``parameters`` on the noise-prediction MSE for ``settings.steps`` steps.

    Args:
        pipe: the pipeline; its denoiser (as its family names it), VAE and scheduler config are used.
        parameters: what the optimiser updates (everything else must have ``requires_grad=False``).
        data: pixels and prompts.
        instance_conditioning: gives the instance prompt's :class:`TextConditioning` (states
            [1, tokens, dim], pooled [1, dim] or None); called every step inside autocast, so a
            trainable text encoder gets gradients. A UNet with ``text_time`` conditions (SDXL) also
            gets the pooled embedding and size ``time_ids`` (:func:`added_conditions`).
        class_conditioning: the same for the class prompt, with prior preservation.
        settings: resolved settings.
        progress: show a rich progress bar with the running loss.
        after_optimizer_step: e.g. textual inversion's restore of the frozen embedding rows.

    Returns:
        The loss of every step.
    """
    unet, vae = family_of(pipe).denoiser_of(pipe), pipe.vae
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
                texts = [c() for c in conditioning]
                encoder_states = torch.cat([t.states.expand(settings.batch_size, -1, -1) for t in texts])
                pooled = (
                    torch.cat([t.pooled.expand(settings.batch_size, -1) for t in texts])
                    if texts[0].pooled is not None
                    else None
                )
                added = added_conditions(pipe, pooled, int(settings.resolution))
                prediction = unet(
                    noisy_latents.to(unet.dtype),
                    timesteps,
                    encoder_states.to(unet.dtype),
                    added_cond_kwargs=None if added is None else {k: v.to(unet.dtype) for k, v in added.items()},
                    return_dict=False,
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
