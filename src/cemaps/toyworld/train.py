"""Training the toy world's models from rendered (image, caption) pairs.

``train_pipeline`` trains the VAE (pixel MSE + a small KL term), then the UNet and the
text encoder together on the VAE's latents (epsilon prediction, DDPM noise with SD v1.5's
betas, Min-SNR-5 loss weighting [Hang et al. 2023], 10% empty captions for
classifier-free guidance, EMA of the weights), and writes a diffusers folder.
``cemaps.toyworld.clip_training.train_toy_clip`` trains an open_clip ``CLIP`` contrastively (the CLIP loss with soft
targets, since identical captions occur in a batch). Both are deterministic from their
seed on one device, log their loss to ``train_log.csv`` and write ``training_<what>.json`` (the
settings and command) beside the weights.

Command: ``cemaps toyworld train pipeline --out DIR`` (and ``clip --out DIR``; wired in
:mod:`cemaps.cli.toyworld`); under ``torchrun --nproc_per_node N -m cemaps toyworld train ...`` the UNet phase averages gradients over N CPU processes (gloo),
and ``--resume DIR`` continues the UNet + text-encoder phase from a saved folder.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cemaps.toyworld.abstract_words import random_training_pair
from cemaps.toyworld.architecture import TEXT_WIDTH, UNET_CHANNELS, build_pipeline
from cemaps.toyworld.train_records import (
    NoLog,
    TrainingLog,
    cosine_factor,
    lr_factor,
    plot_loss_curve,
    write_settings,
)
from cemaps.toyworld.world import render

STOP_FILE = "STOP"  # `touch OUT/STOP` ends the main phase early; the run then saves what it has


@dataclass(frozen=True)
class PipelineTraining:
    """Settings of :func:`train_pipeline` (defaults: the shipped run)."""

    seed: int = 0
    n_pairs: int = 12000
    vae_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_minutes: float = 60.0
    unet_batch: int = 64
    unet_lr: float = 6e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    final_lr_fraction: float = 1.0  # < 1: cosine decay of the UNet phase's lr, over its minutes, to this fraction
    save_every_minutes: float = 10.0
    resume: str | None = None  # a saved pipeline folder: skip the VAE phase, continue UNet + text encoder
    unet_channels: tuple[int, ...] = UNET_CHANNELS  # a new UNet's block_out_channels (not with resume)
    text_width: int = TEXT_WIDTH  # a new text encoder's width (not with resume)
    vae: str | None = None  # a saved pipeline folder whose VAE (and latent scaling) to use instead of training one


def render_pairs(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` rendered training pairs: uint8 [n, 32, 32, 3] images and their captions."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        scene, text = random_training_pair(rng)
        images.append(render(scene)[0])
        captions.append(text)
    return np.stack(images), captions


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _train_vae(vae, images: np.ndarray, settings: PipelineTraining, log: TrainingLog, device: torch.device) -> None:
    generator = np.random.default_rng(settings.seed + 1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    step = 0
    vae.train()
    log.phase("vae", "VAE", steps=settings.vae_steps)
    while step < settings.vae_steps:
        batch = _to_unit(images[generator.integers(len(images), size=settings.vae_batch)]).to(device)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, batch) + settings.vae_kl_weight * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = settings.vae_lr * lr_factor(step, 100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        log.step_done(step, loss.item())
    log.end_phase(step)
    vae.eval()


@torch.no_grad()
def _encode_all(vae, images: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), 256):
        dist = vae.encode(_to_unit(images[start : start + 256]).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def _tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def train_pipeline(
    out: str | Path, settings: PipelineTraining = PipelineTraining(), device: str | None = None, progress: bool = False
) -> Path:
    """Trains the VAE, then UNet + text encoder; writes a diffusers folder to ``out``.

    Args:
        out: the folder to write (created).
        settings: see :class:`PipelineTraining`.
        device: a torch device; default ``cuda`` when available, else ``cpu``.
        progress: rich progress bars on stderr with the running loss (the loss is logged to CSV either way).

    Returns:
        ``out``, holding the pipeline (safetensors, float32), ``train_log.csv`` and ``training_<what>.json``.
    """
    from diffusers import DDPMScheduler

    out = Path(out)
    rank, world = _distributed()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / STOP_FILE).unlink(missing_ok=True)  # one left by an earlier run would end this one at step 0
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(settings.seed)
    log = TrainingLog(out / "train_log.csv", progress) if rank == 0 else NoLog()
    if rank == 0:
        write_settings(out, "pipeline", {**asdict(settings), "world_size": world})
    # each rank renders its own share of the pairs (a different seed per rank)
    images, captions = render_pairs(settings.n_pairs // world, settings.seed + 1000 * rank)
    log("data", len(images), 0.0)
    if settings.resume:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            settings.resume, safety_checker=None, requires_safety_checker=False, local_files_only=True
        )
    else:
        pipe = build_pipeline(seed=settings.seed, unet_channels=settings.unet_channels, text_width=settings.text_width)
    if settings.vae:
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(Path(settings.vae) / "vae", local_files_only=True)
    trained_vae = not (settings.resume or settings.vae)
    vae, unet, text_encoder, tokenizer = (
        pipe.vae.to(device),
        pipe.unet.to(device),
        pipe.text_encoder.to(device),
        pipe.tokenizer,
    )
    if trained_vae:
        _train_vae(vae, images, settings, log, device)
    means, stds = _encode_all(vae, images, device)
    scaling = float(1.0 / means.std()) if trained_vae else float(vae.config.scaling_factor)
    vae.register_to_config(scaling_factor=scaling)
    vae.requires_grad_(False)
    print(f"latent scaling factor {scaling:.4f}", file=sys.stderr, flush=True)

    tokens = _tokenize(tokenizer, captions)
    empty = _tokenize(tokenizer, [""])[0]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.unet_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in parameters]
    generator = torch.Generator().manual_seed(settings.seed + 2 + rank)
    batch = settings.unet_batch // world  # per rank: the averaged gradient is over unet_batch samples
    unet.train()
    text_encoder.train()
    started = time.perf_counter()
    last_save = started
    step = 0
    log.phase("unet", "UNet + text encoder", minutes=settings.unet_minutes)
    while not _should_stop(
        time.perf_counter() - started > 60 * settings.unet_minutes or (out / STOP_FILE).exists(), world
    ):
        index = torch.randint(len(images), (batch,), generator=generator)
        latents = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling
        ids = tokens[index].clone()
        dropped = torch.rand(batch, generator=generator) < settings.caption_dropout
        ids[dropped] = empty
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
        latents, noise, timesteps, ids = latents.to(device), noise.to(device), timesteps.to(device), ids.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, hidden).sample
        weight = torch.clamp(snr[timesteps], max=settings.min_snr_gamma) / snr[timesteps]
        loss = (weight * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        lr_decay = cosine_factor(
            (time.perf_counter() - started) / (60 * settings.unet_minutes), settings.final_lr_fraction
        )
        for group in optimizer.param_groups:
            group["lr"] = settings.unet_lr * lr_factor(step, settings.warmup_steps) * lr_decay
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(parameters, world)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, parameter in zip(ema, parameters, strict=False):
                shadow.lerp_(parameter.detach(), 1 - decay)
        step += 1
        log.step_done(step, loss.item())
        if rank == 0 and time.perf_counter() - last_save > 60 * settings.save_every_minutes:
            _save_pipeline(pipe, parameters, ema, out / "checkpoint")
            last_save = time.perf_counter()
    log.end_phase(step)
    if rank == 0:
        _save_pipeline(pipe, parameters, ema, out)
        plot_loss_curve(out / "train_log.csv", out / "loss_curve.png")
    log.close()
    return out


def _distributed() -> tuple[int, int]:
    """(rank, world size): several CPU processes under torchrun share the UNet's gradients (gloo)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def _average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    if world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for parameter, grad in zip(parameters, grads, strict=False):
        parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


def _should_stop(local: bool, world: int) -> bool:
    """All ranks stop at the same step (any rank's deadline or STOP file stops all)."""
    if world == 1:
        return local
    import torch.distributed as dist

    flag = torch.tensor([float(local)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def train_vae_decoder(
    vae_folder: str | Path,
    out: str | Path,
    minutes: float,
    seed: int = 5,
    n_pairs: int = 6000,
    batch: int = 32,
    lr: float = 5e-4,
    progress: bool = False,
    device: str | None = None,
) -> Path:
    """Fine-tunes only the VAE decoder (as SD's ft-MSE VAE): the encoder, hence the latent space the
    UNet was trained in, is unchanged. Writes ``out/vae``."""
    from diffusers import AutoencoderKL

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)
    torch.manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log = TrainingLog(out / "train_log.csv", progress)
    write_settings(
        out,
        "vae_decoder",
        {"vae": str(vae_folder), "minutes": minutes, "seed": seed, "n_pairs": n_pairs, "batch": batch, "lr": lr},
    )
    images, _ = render_pairs(n_pairs, seed)
    vae = AutoencoderKL.from_pretrained(vae_folder).to(device)
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    generator = np.random.default_rng(seed + 1)
    started, step = time.perf_counter(), 0
    log.phase("vae_decoder", "VAE decoder", minutes=minutes)
    while time.perf_counter() - started < 60 * minutes and not (out / STOP_FILE).exists():
        pixels = _to_unit(images[generator.integers(len(images), size=batch)]).to(device)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample()
        loss = F.mse_loss(vae.decode(latents).sample, pixels)
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, 20)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        log.step_done(step, loss.item())
        if step % 200 == 0:
            copy.deepcopy(vae).to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    log.end_phase(step)
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    plot_loss_curve(out / "train_log.csv", out / "loss_curve.png")
    log.close()
    return out


def _save_pipeline(pipe, parameters, ema, folder: Path) -> None:
    """Saves the EMA weights as a float32 safetensors diffusers folder; training weights are restored."""
    backup = [p.detach().clone() for p in parameters]
    with torch.no_grad():
        for parameter, shadow in zip(parameters, ema, strict=False):
            parameter.copy_(shadow)
    saved = copy.deepcopy(pipe).to("cpu")
    saved.save_pretrained(folder, safe_serialization=True)
    with torch.no_grad():
        for parameter, value in zip(parameters, backup, strict=False):
            parameter.copy_(value)
