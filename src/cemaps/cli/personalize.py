"""``cemaps personalize``: train DreamBooth, LoRA or Textual Inversion on a folder of images.

Registered by the app as ``app.command("personalize")(personalize_command)``; the work is
:func:`cemaps.models.train.personalize`.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import typer

from cemaps.cli.app import one_line_errors, quiet_option
from cemaps.models.aliases import TINY_MODEL_ID
from cemaps.models.methods import METADATA_NAME, METHODS
from cemaps.models.train_settings import TrainSettings, cli_fields, cli_help

METHODS_HELP = ", ".join(sorted(METHODS))


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
    out: Path = typer.Option(..., "--out", "-o", help=f"Output folder for the weights and {METADATA_NAME}."),
    base: str = typer.Option(
        TINY_MODEL_ID,
        help=f"Base model: a diffusers folder, a cached hub id, a .safetensors file, or {TINY_MODEL_ID}.",
    ),
    device: str | None = typer.Option(None, help="Device, e.g. cuda or cpu (default: cuda when available)."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier `cemaps personalize` output in OUT (class images "
        "are kept); a folder holding other files is always refused.",
    ),
    quiet: bool = quiet_option(),
    **train: Any,  # one option per TrainSettings field that has a "help" (see _train_options)
) -> None:
    """Personalize a base model on a subject and save weights that diffusers loads directly."""
    from cemaps.errors import SettingError

    _check_out(out, overwrite)
    from cemaps.cli.app import quiet_libraries
    from cemaps.models.train import personalize
    from cemaps.study.config_checks import check_base_model, check_device

    if device is not None:
        check_device(device, "--device")
    check_base_model(base, "--base")
    quiet_libraries()
    try:
        settings = TrainSettings(method=method, **train)
        pipe = _load_base(base, device)
        result = personalize(
            pipe, method, images, token, class_word, out, settings, progress=not quiet, overwrite=overwrite
        )
    except SettingError as error:  # name the flag the user typed, not the Python field
        raise error.renamed("--" + error.field.replace("_", "-")) from None
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


def _train_options() -> list[inspect.Parameter]:
    """``--field-name`` options for the fields of TrainSettings that carry a help text: their type and default."""
    hints = typing.get_type_hints(TrainSettings)
    options = []
    for settings_field in cli_fields():
        flag = "--" + settings_field.name.replace("_", "-")
        option = typer.Option(settings_field.default, flag, help=cli_help(settings_field))
        options.append(
            inspect.Parameter(
                settings_field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option,
                annotation=hints[settings_field.name],
            )
        )
    return options


# typer reads a command's options from its signature: the fixed ones above, then TrainSettings' own.
_fixed = [
    p for p in inspect.signature(personalize_command).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD
]
_fixed = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _fixed]
personalize_command.__signature__ = inspect.Signature(
    [*_fixed[:6], *_train_options(), *_fixed[6:]], return_annotation=None
)  # method .. base, then TrainSettings' options, then device, overwrite, quiet
