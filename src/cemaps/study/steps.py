"""The steps that the runner and the planner share: the base pipeline, the batches, one batch's images.

:func:`cemaps.study.runner.run_prompt_set` generates and stores what
:func:`cemaps.study.plan.plan_study` counts and times; both build the same batches in the
same order (:func:`batch_plan`) and generate a batch the same way (:func:`generate_images`),
so the plan is the plan of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch

from cemaps.models.loading import load_pipeline
from cemaps.models.personalized import PersonalizedSpec
from cemaps.study.config import SCHEDULERS, PersonalizedEntry, StudyConfig
from cemaps.study.distributed import ProcessInfo, capture_device


@dataclass(frozen=True)
class Work:
    """One batch of one model: the (prompt_id, seed) pairs generated together."""

    model_id: str
    items: tuple[tuple[str, int], ...]


def base_pipeline(config: StudyConfig, process: ProcessInfo, pipe: Any = None) -> Any:
    """The study's base pipeline on this process's device, with the study's scheduler.

    Args:
        config: the study (``base``, ``device``, ``dtype``, ``base_config``, ``generation.scheduler``).
        process: this process's rank and the process count (its device under a launcher).
        pipe: an already loaded pipeline to use instead of loading ``config.base``.

    Raises:
        ModelLoadError: ``config.base`` cannot be loaded (see :func:`cemaps.load_pipeline`).
    """
    if pipe is None:
        device = capture_device(process, config.device)
        pipe = load_pipeline(config.base, device=device, dtype=config.dtype, config=config.base_config)
    set_scheduler(pipe, config.generation.scheduler)
    return pipe


def set_scheduler(pipe: Any, name: str | None) -> None:
    """Replaces ``pipe.scheduler`` by the named diffusers scheduler built from its config (None keeps it)."""
    if name is not None:
        scheduler_class = getattr(diffusers, SCHEDULERS[name])
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)


def personalized_spec(entry: PersonalizedEntry) -> PersonalizedSpec:
    """The loader's description of one ``personalized:`` entry of the config."""
    return PersonalizedSpec(
        model_id=entry.id,
        method=entry.method,
        path=entry.path,
        subject_id=entry.subject,
        token=entry.token,
        scale=entry.scale,
        allow_pickle=entry.allow_pickle,
    )


def batch_plan(config: StudyConfig, prompt_ids: Sequence[str], model_ids: Sequence[str]) -> list[Work]:
    """Batches in a fixed order, so a resumed run generates exactly the same batches.

    Each model's (prompt, seed) pairs, seed-major, cut into ``config.generation.batch_size``.
    """
    pairs = [(p, s) for s in config.seeds for p in prompt_ids]
    size = config.generation.batch_size
    return [Work(m, tuple(pairs[i : i + size])) for m in model_ids for i in range(0, len(pairs), size)]


def generate_images(pipe: Any, config: StudyConfig, texts: list[str], seeds: list[int]) -> np.ndarray:
    """One batch at the study's generation settings, one CPU generator per seed.

    Returns:
        uint8 images [batch, height, width, 3].
    """
    generation = config.generation
    output = pipe(
        texts,
        negative_prompt=[generation.negative_prompt] * len(texts) if generation.guidance_scale > 1 else None,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        height=generation.height,
        width=generation.width,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="np",
    )
    return (np.clip(output.images, 0, 1) * 255).round().astype(np.uint8)
