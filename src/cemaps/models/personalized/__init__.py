"""Personalized models (LoRA, Textual Inversion, DreamBooth) applied to one base pipeline and removed again.

The package has the same rooms as :mod:`cemaps.models.train`: ``lora``, ``textual_inversion``,
``dreambooth``, plus ``spec`` (what they share). A study keeps a single base pipeline in
memory. ``applied(pipe, spec)`` turns it into the personalized model for the duration of a
``with`` block and restores the base exactly on exit, also after an exception;
``check(pipe, spec)`` runs every check ``applied`` would run (files present and readable, keys,
shapes against the base, token not yet in the vocabulary, all tensors finite) without
changing the pipeline, so a study can refuse a bad model before it generates anything.

- LoRA: matrices are read and checked by cemaps, loaded by diffusers' ``load_lora_weights``
  and verified module by module; on exit the adapter is deleted and, when it was the last
  one, ``unload_lora_weights`` makes the modules plain again.
- Textual Inversion goes through ``load_textual_inversion`` and ``unload_textual_inversion``;
  the tokenizer and the embedding table return to their original sizes and values.
- DreamBooth copies the tuned UNet (and text encoder, when the checkpoint has one) into the
  base modules in place, and copies the base back from a CPU snapshot (:class:`BaseWeights`).

Example:
    >>> import torch
    >>> from cemaps.models import tiny_pipeline
    >>> pipe = tiny_pipeline(seed=0)
    >>> spec = PersonalizedSpec("cat-ti", "textual_inversion", path=None, token="<cat>",
    ...                         embedding=torch.ones(pipe.text_encoder.config.hidden_size))
    >>> check(pipe, spec)
    'tensor'
    >>> with applied(pipe, spec) as model:
    ...     model.tokens
    ('<cat>',)
    >>> "<cat>" in pipe.tokenizer.get_vocab()
    False
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from diffusers import StableDiffusionPipeline

from cemaps.models.methods import METHODS, Method
from cemaps.models.personalized.dit import applied_dit, check_dit, is_dit
from cemaps.models.personalized.dreambooth import applied_dreambooth, check_dreambooth
from cemaps.models.personalized.lora import applied_lora, check_lora
from cemaps.models.personalized.spec import (
    SWAPPABLE_COMPONENTS,
    AppliedModel,
    BaseWeights,
    PersonalizedSpec,
    describe_weights,
    resolve_weight_file,
)
from cemaps.models.personalized.textual_inversion import applied_textual_inversion, check_textual_inversion

__all__ = [
    "METHODS",
    "SWAPPABLE_COMPONENTS",
    "AppliedModel",
    "BaseWeights",
    "Method",
    "PersonalizedSpec",
    "applied",
    "check",
    "check_all",
    "describe_weights",
    "resolve_weight_file",
]


@contextmanager
def applied(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec, base: BaseWeights | None = None
) -> Iterator[AppliedModel]:
    """Applies a personalized model to ``pipe`` for the ``with`` block, then restores the base exactly.

    Args:
        pipe: the base pipeline; modified in place inside the block only.
        spec: which weights to apply and how.
        base: a snapshot of ``pipe``'s base weights for DreamBooth restores; taken here when
            None (pass one when switching many DreamBooth models, to copy the base only once).

    Yields:
        An :class:`AppliedModel` describing what was applied.

    Raises:
        ModelLoadError: the weights are missing, unsafe, corrupt, or made for another
            architecture or method; ``pipe`` is left as it was.
    """
    if is_dit(pipe):
        context = applied_dit(pipe, spec, base)
    elif spec.method == "dreambooth":
        context = applied_dreambooth(pipe, spec, base)
    elif spec.method == "lora":
        context = applied_lora(pipe, spec)
    else:
        context = applied_textual_inversion(pipe, spec)
    with context as model:
        yield model


def check(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> str:
    """Runs every check :func:`applied` runs before changing ``pipe``, and changes nothing.

    Returns:
        The layout recognised (as :attr:`AppliedModel.format`).

    Raises:
        ModelLoadError: one line naming the file (and tensor, key or token) and what was expected.
    """
    if is_dit(pipe):
        return check_dit(pipe, spec)
    checks = {"lora": check_lora, "textual_inversion": check_textual_inversion, "dreambooth": check_dreambooth}
    return checks[spec.method](pipe, spec)


def check_all(pipe: StableDiffusionPipeline, specs: Iterable[PersonalizedSpec]) -> dict[str, str]:
    """:func:`check` for every spec, in order; model id -> layout. Stops at the first bad model."""
    return {spec.model_id: check(pipe, spec) for spec in specs}
