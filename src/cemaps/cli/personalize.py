"""``cemaps personalize``: train DreamBooth, LoRA or Textual Inversion on a folder of images.

Registered by the app as ``app.command("personalize")(personalize_command)``; the work is
:func:`cemaps.models.train.personalize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cemaps.cli.app import one_line_errors, quiet_option

# Kept as text so that `cemaps --help` does not import torch; a test checks them against
# cemaps.models.train.METHOD_DEFAULTS.
METHODS_HELP = "dreambooth, lora, textual_inversion"
STEPS_HELP = "dreambooth 400, lora 500, textual_inversion 3000"
LEARNING_RATE_HELP = "dreambooth 5e-06, lora 0.0001, textual_inversion 0.0005"


@one_line_errors
def personalize_command(
    method: str = typer.Option(..., "--method", "-m", help=f"Personalization method: {METHODS_HELP}."),
    images: Path = typer.Option(..., "--images", "-i", help="Folder of instance images of the subject."),
    token: str = typer.Option(
        ...,
        "--token",
        "-t",
        help="Subject identifier: a rare word such as 'sks' (dreambooth, lora) or a new token such as "
        "'<my-dog>' (textual_inversion).",
    ),
    class_word: str = typer.Option(..., "--class-word", "-c", help="The subject's class noun, e.g. 'dog'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the weights and cemaps_train.json."),
    base: str = typer.Option(
        "cemaps/tiny-sd",
        help="Base model: a diffusers folder, a cached hub id, a .safetensors file, or cemaps/tiny-sd.",
    ),
    steps: int | None = typer.Option(None, help=f"Training steps (default per method: {STEPS_HELP})."),
    learning_rate: float | None = typer.Option(None, help=f"Learning rate (default per method: {LEARNING_RATE_HELP})."),
    rank: int = typer.Option(4, help="LoRA rank (lora_alpha equals it)."),
    lora_targets: str = typer.Option(
        "cross_attention", help="LoRA targets: cross_attention (attn2 to_k/to_v) or attention (all to_q/k/v/out)."
    ),
    initializer_token: str | None = typer.Option(
        None, help="Textual inversion: single token whose embedding starts the new one (default: the class word)."
    ),
    num_vectors: int = typer.Option(
        1, help="Textual inversion: embedding vectors learned for the token (diffusers' --num_vectors)."
    ),
    seed: int = typer.Option(0, help="Seed for initialisation, data order, noise and class images."),
    batch_size: int = typer.Option(1, help="Instance images per step."),
    resolution: int | None = typer.Option(
        None, help="Training side in pixels (default: the model's, 512 for SD v1.5)."
    ),
    prior_preservation: bool = typer.Option(
        False,
        "--prior-preservation",
        help="DreamBooth: add the class-prior loss on images the base model generates (cached in OUT/class_images).",
    ),
    num_class_images: int = typer.Option(100, help="DreamBooth prior preservation: number of class images."),
    mixed_precision: str | None = typer.Option(None, help="fp16 or bf16 autocast (GPU); default float32."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Trade ~30% speed for much less activation memory."
    ),
    use_8bit_adam: bool = typer.Option(
        False, "--use-8bit-adam", help="bitsandbytes 8-bit AdamW (CUDA; pip install bitsandbytes)."
    ),
    device: str | None = typer.Option(None, help="Device, e.g. cuda or cpu (default: cuda when available)."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier `cemaps personalize` output in OUT (class images "
        "are kept); a folder holding other files is always refused.",
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Personalize a base model on a subject and save weights that diffusers loads directly."""
    from cemaps.errors import SettingError

    _check_out(out, overwrite)
    from cemaps.cli.app import quiet_libraries
    from cemaps.models.train import TrainSettings, personalize
    from cemaps.study.config_checks import check_base_model, check_device

    if device is not None:
        check_device(device, "--device")
    check_base_model(base, "--base")
    quiet_libraries()
    try:
        settings = TrainSettings(
            method=method,
            steps=steps,
            learning_rate=learning_rate,
            batch_size=batch_size,
            resolution=resolution,
            seed=seed,
            rank=rank,
            lora_targets=lora_targets,
            initializer_token=initializer_token,
            num_vectors=num_vectors,
            prior_preservation=prior_preservation,
            num_class_images=num_class_images,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            use_8bit_adam=use_8bit_adam,
        )
        pipe = _load_base(base, device)
        result = personalize(
            pipe, method, images, token, class_word, out, settings, progress=not quiet, overwrite=overwrite
        )
    except SettingError as error:  # name the flag the user typed, not the Python field
        raise error.renamed("--" + error.field.replace("_", "-")) from None
    from cemaps.outputs import write_marker

    write_marker(out, "personalize")  # lets a later --overwrite tell this output from a user's files
    typer.echo(
        f"{method}: {result.settings.steps} steps, final loss {result.final_loss:.4f}, "
        f"{result.seconds:.1f} s -> {result.artifact}"
    )


def _check_out(out: Path, overwrite: bool) -> None:
    """OUT is new, empty, holds only the class-image cache, or (with --overwrite) an earlier personalize output."""
    from cemaps.errors import OutputError
    from cemaps.outputs import MARKER, check_output_folder, check_writable

    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: is an existing file; expected a folder path")
    check_writable(out, "--out")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir() if p.name not in ("class_images", MARKER))
        if present and not overwrite:
            listed = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise OutputError(
                f"--out {out}: folder is not empty ({listed}); choose a new folder, or pass --overwrite "
                "to replace an earlier `cemaps personalize` output there"
            )
        if not present:
            return
    check_output_folder(out, "personalize")


def _load_base(base: str, device: str | None) -> Any:
    """The base pipeline in float32 (trained weights must be float32; speed comes from autocast)."""
    from cemaps.models.loading import load_pipeline

    return load_pipeline(base, device=device, dtype="float32")
