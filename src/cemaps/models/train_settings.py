"""How a personalization run trains: :class:`TrainSettings` and the per-method defaults.

Kept free of heavy imports (like :mod:`cemaps.models.methods`), so that ``cemaps personalize``
builds its options from these fields without importing torch: every field whose metadata has a
``"help"`` is a command-line option (``--field-name``), with the field's type and default.

Example:
    >>> TrainSettings(method="lora").learning_rate
    0.0001
    >>> [f.name for f in cli_fields()][:3]
    ['steps', 'learning_rate', 'batch_size']
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from cemaps.errors import ConfigError, SettingError
from cemaps.models.methods import METHODS

LORA_TARGETS = ("cross_attention", "attention")
MIXED_PRECISIONS = ("fp16", "bf16")


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
    steps: int | None = field(default=None, metadata={"help": "Training steps (default per method: {steps})."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate (default per method: {learning_rate})."}
    )
    batch_size: int = field(default=1, metadata={"help": "Instance images per step."})
    resolution: int | None = field(
        default=None, metadata={"help": "Training side in pixels (default: the model's, 512 for SD v1.5)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, data order, noise and class images."})
    rank: int = field(default=4, metadata={"help": "LoRA rank (lora_alpha equals it)."})
    lora_targets: str = field(
        default="cross_attention",
        metadata={"help": "LoRA targets: cross_attention (attn2 to_k/to_v) or attention (all to_q/k/v/out)."},
    )
    initializer_token: str | None = field(
        default=None,
        metadata={
            "help": "Textual inversion: single token whose embedding starts the new one (default: the class word)."
        },
    )
    num_vectors: int = field(
        default=1,
        metadata={"help": "Textual inversion: embedding vectors learned for the token (diffusers' --num_vectors)."},
    )
    prior_preservation: bool = field(
        default=False,
        metadata={
            "help": "DreamBooth: add the class-prior loss on images the base model generates "
            "(cached in OUT/class_images)."
        },
    )
    prior_loss_weight: float = 1.0
    num_class_images: int = field(
        default=100, metadata={"help": "DreamBooth prior preservation: number of class images."}
    )
    class_inference_steps: int = 50
    mixed_precision: str | None = field(
        default=None, metadata={"help": "fp16 or bf16 autocast (GPU); default float32."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade ~30% speed for much less activation memory."}
    )
    use_8bit_adam: bool = field(
        default=False, metadata={"help": "bitsandbytes 8-bit AdamW (CUDA; pip install bitsandbytes)."}
    )
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


def cli_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainSettings` that ``cemaps personalize`` offers as options, in order."""
    return [f for f in dataclasses.fields(TrainSettings) if "help" in f.metadata]


def cli_help(settings_field: dataclasses.Field) -> str:
    """A field's option help, with the per-method defaults (:data:`METHOD_DEFAULTS`) filled in."""
    methods = sorted(METHOD_DEFAULTS.items())
    return settings_field.metadata["help"].format(
        steps=", ".join(f"{name} {d.steps}" for name, d in methods),
        learning_rate=", ".join(f"{name} {d.learning_rate}" for name, d in methods),
    )
