"""The state a capture shares with its probes: current generation and step.

A :class:`CaptureContext` watches the pipeline through two read-only hooks: a
pre-hook on the text encoder (to learn the prompt's token ids) and a pre-hook on
the UNet (to learn the timestep, batch, guidance and latent size of each call).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cemaps.hooks.steps import Generation


class CaptureContext:
    """Tracks pipeline calls (generations) and denoising steps while a capture is open.

    Attributes:
        generations: one :class:`Generation` per pipeline call, in order.
        step_index: index of the current UNet call within its generation.
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.unet: nn.Module = pipe.unet
        self.tokenizer = getattr(pipe, "tokenizer", None)
        self.generations: list[Generation] = []
        self.step_index: int = -1
        self._pending_token_ids: np.ndarray | None = None
        self._text_encoder_called = False

    @property
    def generation(self) -> Generation:
        return self.generations[-1]

    def attach(self) -> list[RemovableHandle]:
        handles = [self.unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True)]
        text_encoder = getattr(self.pipe, "text_encoder", None)
        if text_encoder is not None:
            handles.append(text_encoder.register_forward_pre_hook(self._on_text_encoder_call, with_kwargs=True))
        return handles

    def _on_text_encoder_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = args[0] if args else kwargs.get("input_ids")
        # The pipeline encodes the prompt first and the negative prompt second;
        # only the first encoding after a denoising loop is the prompt.
        if not self._text_encoder_called and input_ids is not None:
            self._pending_token_ids = input_ids.detach().cpu().numpy()
        self._text_encoder_called = True

    def _on_unet_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = int(torch.as_tensor(timestep).flatten()[0].item())
        guidance = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        new_generation = (
            not self.generations
            or self._text_encoder_called
            or len(self.generation.timesteps) >= self.generation.total_steps
        )
        if new_generation:
            # The schedule is fixed for a pipeline call (set_timesteps runs before the loop),
            # so it is read once per generation, not at every UNet call.
            schedule = [int(v) for v in self.pipe.scheduler.timesteps.tolist()]
            unet_batch = sample.shape[0]
            if guidance and unet_batch % 2:
                raise RuntimeError(f"guidance is on but the UNet batch ({unet_batch}) is odd")
            self.generations.append(
                Generation(
                    index=len(self.generations),
                    batch_size=unet_batch // 2 if guidance else unet_batch,
                    guidance=guidance,
                    latent_hw=(int(sample.shape[-2]), int(sample.shape[-1])),
                    total_steps=len(schedule),
                    token_ids=self._pending_token_ids,
                    schedule=tuple(schedule),
                )
            )
            self._pending_token_ids = None
            self._text_encoder_called = False
        generation = self.generation
        # Schedulers of order 2 visit a timestep twice: count earlier visits of t.
        occurrence = generation.timesteps.count(t)
        matches = generation.positions(t)
        self.step_index = matches[occurrence] if occurrence < len(matches) else len(generation.timesteps)
        generation.timesteps.append(t)
