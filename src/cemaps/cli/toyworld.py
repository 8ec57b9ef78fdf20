"""``cemaps toyworld train``: retrain the toy world's pipeline, toy CLIP or VAE decoder.

Registered by the app as ``app.add_typer(toyworld_app, name="toyworld")``; the work is
:func:`cemaps.toyworld.train.train_pipeline`, :func:`cemaps.toyworld.train.train_vae_decoder`
and :func:`cemaps.toyworld.clip_training.train_toy_clip`. ``python -m cemaps toyworld train``
runs this same command (so ``torchrun -m cemaps toyworld train ...`` splits the UNet phase
over processes).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cemaps.cli.app import one_line_errors, quiet_option

PHASES = ("pipeline", "clip", "vae-decoder")
PIPELINE_ONLY = {
    "pairs": 12000,
    "warmup": 200,
    "lr": 6e-4,
    "final_lr_fraction": 1.0,
    "batch": 64,
    "unet_channels": "16,32,64,64",
    "text_width": 64,
    "vae": None,
}
# Kept as text so that `cemaps --help` does not import torch (cemaps.toyworld.train's defaults).
DEFAULTS_HELP = "pipeline 60 (the UNet + text-encoder phase), clip 30, vae-decoder 30"

toyworld_app = typer.Typer(
    help="The trained toy world: retrain its models (the shipped ones: README 'The toy world').",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@toyworld_app.command("train")
@one_line_errors
def train_command(
    what: str = typer.Argument(..., help="What to train: pipeline (VAE, UNet + text encoder), clip or vae-decoder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the weights, train_log.csv and training_*.json."),
    minutes: float | None = typer.Option(None, help=f"Time budget of the main phase (default: {DEFAULTS_HELP})."),
    resume: str | None = typer.Option(
        None, help="pipeline: continue the UNet + text encoder of this saved folder; vae-decoder: its VAE (required)."
    ),
    pairs: int = typer.Option(PIPELINE_ONLY["pairs"], help="pipeline: rendered (image, caption) training pairs."),
    warmup: int = typer.Option(PIPELINE_ONLY["warmup"], help="pipeline: learning-rate warmup steps."),
    lr: float = typer.Option(PIPELINE_ONLY["lr"], help="pipeline: UNet + text-encoder learning rate."),
    final_lr_fraction: float = typer.Option(
        PIPELINE_ONLY["final_lr_fraction"],
        help="pipeline: cosine-decay the learning rate over --minutes to this fraction (1: constant).",
    ),
    batch: int = typer.Option(PIPELINE_ONLY["batch"], help="pipeline: UNet + text-encoder batch (over all processes)."),
    unet_channels: str = typer.Option(
        PIPELINE_ONLY["unet_channels"],
        help="pipeline: the new UNet's 4 block widths, comma-separated, each a multiple of 8 (not with --resume).",
    ),
    text_width: int = typer.Option(
        PIPELINE_ONLY["text_width"], help="pipeline: the new text encoder's width, a multiple of 4 (not with --resume)."
    ),
    vae: str | None = typer.Option(
        None, help="pipeline: use this saved pipeline folder's VAE instead of training one (not with --resume)."
    ),
    device: str | None = typer.Option(None, help="torch device (default: cuda when available, else cpu)."),
    quiet: bool = quiet_option(),
) -> None:
    """Train a toy-world model from rendered scenes (fixed seeds; a progress bar with the loss).

    pipeline: renders --pairs scenes, trains the VAE (400 steps; skipped with --resume), then the
    UNet and text encoder for --minutes, saving OUT/checkpoint every 10 minutes (pass it to --resume
    to continue); writes a diffusers folder. clip: the toy CLIP (open_clip config + weights).
    vae-decoder: fine-tunes the decoder of --resume's VAE (encoder frozen), writes OUT/vae.
    `touch OUT/STOP` ends the main phase early and saves.
    """
    from dataclasses import replace

    from cemaps.outputs import check_output_folder, claim_output_folder

    widths = _check_options(
        what, out, minutes, resume, pairs, warmup, lr, final_lr_fraction, device, batch, unet_channels, text_width, vae
    )
    command = f"toyworld train {what}"
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes
        check_output_folder(out, command, whole_folder=True)
        claim_output_folder(out, command)
    progress = not quiet
    if what == "pipeline":
        from cemaps.toyworld.train import PipelineTraining, train_pipeline

        settings = PipelineTraining(
            resume=resume,
            warmup_steps=warmup,
            n_pairs=pairs,
            unet_lr=lr,
            final_lr_fraction=final_lr_fraction,
            unet_batch=batch,
            unet_channels=widths,
            text_width=text_width,
            vae=vae,
        )
        settings = settings if minutes is None else replace(settings, unet_minutes=minutes)
        train_pipeline(out, settings, device, progress=progress)
    elif what == "vae-decoder":
        from cemaps.toyworld.train import train_vae_decoder

        train_vae_decoder(Path(resume) / "vae", out, minutes=minutes or 30.0, progress=progress, device=device)
    else:
        from cemaps.toyworld.clip_training import ClipTraining, train_toy_clip

        settings = ClipTraining() if minutes is None else ClipTraining(minutes=minutes)
        train_toy_clip(out, settings, device, progress=progress)
    typer.echo(str(out))


def _check_options(
    what, out, minutes, resume, pairs, warmup, lr, final_lr_fraction, device, batch, unet_channels, text_width, vae
) -> tuple[int, ...]:
    """Refuses, before anything is rendered or written, options that are invalid or do not apply to ``what``.

    Returns the UNet widths parsed from ``unet_channels``.
    """
    import math

    from cemaps.errors import ConfigError

    if what not in PHASES:
        raise ConfigError(f"toyworld train: {what!r} is not a model to train; expected one of {', '.join(PHASES)}")
    if what == "vae-decoder" and resume is None:
        raise ConfigError("toyworld train vae-decoder: --resume is required (a pipeline folder whose VAE to fine-tune)")
    if what == "clip" and resume is not None:
        raise ConfigError("--resume: toyworld train clip always starts from scratch; expected no --resume")
    if resume is not None and not (Path(resume) / "model_index.json").is_file():
        raise ConfigError(f"--resume {resume}: not a saved pipeline folder; expected a folder with model_index.json")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--minutes {minutes}: expected a positive, finite time budget")
    given = {
        "pairs": pairs,
        "warmup": warmup,
        "lr": lr,
        "final_lr_fraction": final_lr_fraction,
        "batch": batch,
        "unet_channels": unet_channels,
        "text_width": text_width,
        "vae": vae,
    }
    if what != "pipeline":
        changed = [name for name, value in given.items() if value != PIPELINE_ONLY[name]]
        if changed:
            flag = "--" + changed[0].replace("_", "-")
            raise ConfigError(f"{flag}: applies to toyworld train pipeline only; {what} has its own fixed settings")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if pairs < world:
        raise ConfigError(f"--pairs {pairs}: expected at least one rendered pair per process ({world})")
    if warmup < 1:
        raise ConfigError(f"--warmup {warmup}: expected at least 1 step")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr {lr}: expected a positive learning rate")
    if not (math.isfinite(final_lr_fraction) and 0 < final_lr_fraction <= 1):
        raise ConfigError(f"--final-lr-fraction {final_lr_fraction}: expected a fraction in (0, 1]")
    if device is not None:
        from cemaps.study.config_checks import check_device

        check_device(device, "--device")
    if batch < world:
        raise ConfigError(f"--batch {batch}: expected at least one sample per process ({world})")
    widths = _unet_widths(unet_channels)
    if text_width < 4 or text_width % 4:
        raise ConfigError(f"--text-width {text_width}: expected a positive multiple of 4 (the text encoder's 4 heads)")
    if resume is not None:
        custom = [name for name in ("unet_channels", "text_width", "vae") if given[name] != PIPELINE_ONLY[name]]
        if custom:
            flag = "--" + custom[0].replace("_", "-")
            raise ConfigError(
                f"{flag}: a new model's setting; with --resume the saved folder fixes it, expected neither"
            )
    if vae is not None and not (Path(vae) / "vae" / "config.json").is_file():
        raise ConfigError(f"--vae {vae}: not a saved pipeline folder; expected a folder with vae/config.json")
    return widths


def _unet_widths(text: str) -> tuple[int, ...]:
    """``"16,32,64,64"`` -> (16, 32, 64, 64); 4 widths, each a positive multiple of 8 (GroupNorm's 8 groups)."""
    from cemaps.errors import ConfigError

    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 4 or any(width < 8 or width % 8 for width in widths):
        raise ConfigError(
            f"--unet-channels {text}: expected 4 comma-separated widths, each a positive multiple of 8 (e.g. 32,64,128,128)"
        )
    return widths
