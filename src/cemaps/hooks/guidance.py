"""Which classifier-free-guidance halves a UNet call holds, read call by call.

Guidance is a property of each UNet call, not of a pipeline call:

- diffusers batches the halves, ``cat([uncond, cond])``, and duplicates the latents for them
  (``torch.cat([latents] * 2)``), so a call holds two halves when its batch is even, its two
  ``sample`` halves are equal, and the pipeline does not say guidance is off
  (``pipe.do_classifier_free_guidance``; unknown before the pipeline's first call). The latents
  test keeps a stale flag (left by an earlier pipeline call) from splitting a user's own
  batch of different latents into halves.
- A ``callback_on_step_end`` may turn guidance off mid-run (diffusers' dynamic-CFG recipe, PR #7761:
  ``pipe._guidance_scale = 0.0`` and ``prompt_embeds`` cut to the cond half): the later calls
  hold the cond half alone, ``("cond",)``.
- prompt-to-prompt's and null-text inversion's "low resource" loops run the halves as two calls
  at the same timestep, unconditional first (``unet(latents, t, uncond)``, then
  ``unet(latents, t, cond)``). :func:`completes_split_step` recognises the second call by its
  timestep and its batch: the previous call's timestep, and the same one-half ``sample``, equal
  to the previous call's (a second-order scheduler's second call at a repeated timestep gets
  latents the first call moved); the two calls are then one step whose halves are
  ``("uncond", "cond")``.

Example:
    >>> import torch
    >>> class Pipe:
    ...     do_classifier_free_guidance = True
    >>> latents = torch.zeros(1, 4, 8, 8)
    >>> call_halves(Pipe(), torch.cat([latents] * 2)), call_halves(Pipe(), torch.randn(2, 4, 8, 8))
    (('uncond', 'cond'), ('cond',))
"""

from __future__ import annotations

from typing import Any

import torch

from cemaps.hooks.steps import Generation

BOTH = ("uncond", "cond")
COND = ("cond",)


def guidance_flag(pipe: Any) -> bool | None:
    """The pipeline's ``do_classifier_free_guidance`` (None when it has none or was never called).

    diffusers' property reads ``self._guidance_scale``, which only a pipeline call sets.
    """
    try:
        flag = getattr(pipe, "do_classifier_free_guidance", None)
    except (AttributeError, TypeError):
        return None
    return None if flag is None else bool(flag)


def call_halves(pipe: Any, sample: torch.Tensor) -> tuple[str, ...]:
    """The halves a UNet call's batch holds, in batch order: ``("uncond", "cond")`` or ``("cond",)``.

    Args:
        pipe: the pipeline (its guidance flag, when it has one, can veto two halves).
        sample: ``[rows, channels, height, width]`` the UNet's ``sample`` argument.
    """
    rows = int(sample.shape[0])
    if rows % 2 or guidance_flag(pipe) is False:
        return COND
    half = rows // 2
    return BOTH if torch.equal(sample[:half], sample[half:]) else COND


def completes_split_step(
    generation: Generation, timestep: int, halves: tuple[str, ...], sample: torch.Tensor, previous: torch.Tensor | None
) -> bool:
    """Whether a call is the cond half of the previous call's step (halves run as two calls).

    Args:
        generation: the current generation (its last step is the previous call's).
        timestep: the call's timestep.
        halves: the call's halves (:func:`call_halves`).
        sample: ``[rows, channels, height, width]`` the call's ``sample``.
        previous: the previous call's ``sample`` when it held one half (None otherwise).

    True when both calls hold one half, the same ``sample`` at the same timestep, and the previous
    call is not yet paired.
    """
    return (
        halves == COND
        and previous is not None
        and bool(generation.timesteps)
        and generation.timesteps[-1] == timestep
        and generation.step_halves[-1] == COND
        and previous.shape == sample.shape
        and torch.equal(previous, sample.to(previous.device))
    )
