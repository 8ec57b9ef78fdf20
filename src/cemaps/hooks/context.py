"""The state a capture shares with its probes: current generation and step.

A :class:`CaptureContext` watches the pipeline through two read-only hooks: a
forward hook on the text encoder whose tokens label the context (the model family's labelling
stream, :mod:`cemaps.models.families`: ``text_encoder`` for SD 1.x/2.x and SDXL) and a pre-hook on
the denoiser (the timestep, batch, guidance, latent size and text embeddings of each call). Neither
changes an argument or an output; SDXL's ``added_cond_kwargs`` (pooled embeddings, ``add_time_ids``)
are not read at all.

Which encoding is the prompt? diffusers encodes the prompt, then the negative prompt,
and passes ``cat([negative, prompt])`` (each repeated ``num_images_per_prompt`` times)
to the UNet as ``encoder_hidden_states``; a prompt given as ``prompt_embeds`` is not
encoded at all, but its negative may be. So at the first UNet call of a generation the
encodings seen since the last UNet call are matched, exactly, against the conditional
and unconditional rows of the encoder's slice of ``encoder_hidden_states`` (the family says
where it sits: all of it for SD 1.x, the first ``text_encoder`` features for SDXL, whose context
concatenates both encoders' penultimate states). An encoding matches when that slice equals its
``last_hidden_state`` or any of its ``hidden_states`` (so SDXL's penultimate layer and ``clip_skip``
match too). An encoding that matches neither (prompt weighting rescales) is taken as the prompt
when it is the only one left; otherwise the tokens are unknown (``token_ids`` None),
and probes label them so instead of guessing.

Guidance is read at each UNet call (:mod:`cemaps.hooks.guidance`): the halves a call's batch holds
(``call_halves``), and whether it completes the previous call's step when a loop runs the halves as
two calls. A ``torch.compile`` wrapper is seen through (:mod:`cemaps.hooks.compiled`): ``unet`` is
the original module, ``entry`` the wrapper the pipeline calls.

A new generation starts at a UNet call when a text encoder ran since the last UNet
call, when the scheduler was given a new schedule (``set_timesteps`` replaces
``scheduler.timesteps``), or when the call's timestep cannot follow the last one in
the schedule. Each call is placed in the schedule (see :class:`Generation`): the
first at the scheduler's ``begin_index`` or diffusers' convention, the others at the
next position of their timestep.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cemaps.hooks.compiled import original_module, refuse_traced_call
from cemaps.hooks.guidance import BOTH, COND, call_halves, completes_split_step
from cemaps.hooks.steps import Generation
from cemaps.models.families import family_of

_KEPT_ENCODINGS = 8


class CaptureContext:
    """Tracks pipeline calls (generations) and denoising steps while a capture is open.

    Attributes:
        generations: one :class:`Generation` per pipeline call, in order.
        step_index: step of the current UNet call within its generation (0 = the first
            step the generation ran; see :mod:`cemaps.hooks.steps`).
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.family = family_of(pipe)
        # what the pipeline calls (a torch.compile wrapper, if any) and the module whose names and layers
        # probes read (see cemaps.hooks.compiled)
        self.entry: nn.Module = self.family.denoiser_of(pipe)
        self.unet: nn.Module = original_module(self.entry, f"pipe.{self.family.denoiser}")
        stream = self.family.labelling_stream
        self.tokenizer = getattr(pipe, stream.tokenizer, None)
        self._text_encoder = getattr(pipe, stream.encoder, None)
        # where the labelling encoder's output sits in the context, when the pipe has that encoder
        self._context_slice = (
            next((s for s in self.family.context_slices(pipe) if s.stream == stream), None)
            if self._text_encoder is not None and self.tokenizer is not None
            else None
        )
        self.generations: list[Generation] = []
        self.step_index: int = -1
        # the current UNet call: the halves its rows hold, and whether it is the cond half of the previous
        # call's step (guidance run as two calls, see cemaps.hooks.guidance)
        self.call_halves: tuple[str, ...] = COND
        self.completes_step = False
        # (encodings, encoder_hidden_states) of the current generation's first call, kept until its second call
        # tells whether that first call was an unconditional half
        self._first_call: tuple[list, Any] | None = None
        self._lone_half: torch.Tensor | None = None  # the last call's sample when it held one half
        # (token ids [prompts, seq], candidate outputs, each [prompts, seq, dim]) of each encoding since the last
        # UNet call
        self._encodings: list[tuple[np.ndarray, tuple[torch.Tensor, ...]]] = []
        self._text_encoder_called = False
        self._schedule_tensor: Any = None

    @property
    def generation(self) -> Generation:
        return self.generations[-1]

    def attach(self) -> list[RemovableHandle]:
        # prepend: the step must be known before any other pre-hook on the UNet runs
        # (the probes' pre-hooks switch their per-step hooks on it), whatever the order of attachment.
        handles = [self.entry.register_forward_pre_hook(self._on_unet_call, with_kwargs=True, prepend=True)]
        if self._text_encoder is not None:
            handles.append(self._text_encoder.register_forward_hook(self._on_text_encoder_call, with_kwargs=True))
        return handles

    @property
    def token_features(self) -> tuple[str, ...]:
        """Text encoders whose features the context's token axis carries at the labelled positions."""
        return self.family.feature_sharing(self.family.labelling_stream)

    def _on_text_encoder_call(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        input_ids = args[0] if args else kwargs.get("input_ids")
        self._text_encoder_called = True
        if input_ids is None:
            return
        hidden = output if isinstance(output, torch.Tensor) else output[0]  # last_hidden_state
        if isinstance(hidden, torch.Tensor):
            layers = getattr(output, "hidden_states", None) or ()
            candidates = (hidden, *(h for h in layers if isinstance(h, torch.Tensor)))
            # the latest few suffice (diffusers encodes prompt then negative right before the loop);
            # the bound keeps encodings made for other purposes inside a capture from piling up
            self._encodings = [
                *self._encodings[-(_KEPT_ENCODINGS - 1) :],
                (input_ids.detach().cpu().numpy(), candidates),
            ]

    def _on_unet_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        refuse_traced_call(f"pipe.{self.family.denoiser}")
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = int(torch.as_tensor(timestep).flatten()[0].item())
        encoder_hidden_states = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        halves = self.call_halves = call_halves(self.pipe, sample)
        previous, self._lone_half = self._lone_half, sample.detach().clone() if halves == COND else None
        self.completes_step = (
            bool(self.generations)
            and not self._text_encoder_called
            and completes_split_step(self.generation, t, halves, sample, previous)
        )
        if self.completes_step:
            self._lone_half = None  # paired: a third call at this timestep starts a step of its own
            self._pair_halves(encoder_hidden_states)
            return
        first_call = (self._encodings, encoder_hidden_states)
        self._advance(t, lambda schedule: self._new_generation(sample, encoder_hidden_states, schedule, halves), halves)
        self._first_call = first_call if self.step_index == 0 and halves == COND else None

    def _pair_halves(self, encoder_hidden_states: Any) -> None:
        """The call completes the previous call's step: that call was the unconditional half."""
        generation = self.generation
        generation.step_halves[-1] = BOTH
        if self._first_call is None:
            return
        (encodings, first), self._first_call = self._first_call, None
        generation.guidance = True
        if isinstance(first, torch.Tensor) and isinstance(encoder_hidden_states, torch.Tensor):
            both = torch.cat([first, encoder_hidden_states.to(first.device)])
            prompt, negative = self._match_encodings(both, generation.batch_size, True, encodings)
            generation.token_ids, generation.negative_token_ids = prompt, negative
            rows = len(prompt) if prompt is not None else None
            if rows and generation.batch_size % rows == 0:
                generation.images_per_prompt = generation.batch_size // rows

    def _advance(self, t: int, new_generation_for: Any, halves: tuple[str, ...] | None = None) -> None:
        """Places a denoiser call at timestep ``t``: in the current generation, or a new one made by
        ``new_generation_for(schedule_tensor)``; sets :attr:`step_index`. ``halves``: what the call's
        rows hold (default: the generation's halves)."""
        scheduler = self.pipe.scheduler
        schedule_tensor = scheduler.timesteps
        new_generation = (
            not self.generations
            or self._text_encoder_called
            or (schedule_tensor is not self._schedule_tensor and self._schedule_changed(schedule_tensor))
        )
        position = None
        if not new_generation:
            generation = self.generation
            position = generation.next_position(t)
            if position is None:
                position = generation.restart_earlier(t)
            # a timestep of the schedule that cannot follow the last call: the loop started again
            new_generation = position is None and bool(generation.positions(t))
        if new_generation:
            self.generations.append(new_generation_for(schedule_tensor))
            self._schedule_tensor = schedule_tensor
            position = self.generation.first_position(t, getattr(scheduler, "begin_index", None))
        self._encodings = []
        self._text_encoder_called = False
        generation = self.generation
        if position is None:  # a timestep outside the schedule (a custom loop): counted in call order
            position = generation.schedule_indices[-1] + 1 if generation.schedule_indices else 0
        self.step_index = generation.add_call(t, position, halves)

    def _schedule_changed(self, schedule_tensor: Any) -> bool:
        self._schedule_tensor = schedule_tensor  # compare contents once per new tensor, not per call
        return tuple(int(v) for v in torch.as_tensor(schedule_tensor).flatten().tolist()) != self.generation.schedule

    def _new_generation(
        self, sample: torch.Tensor, encoder_hidden_states: Any, schedule_tensor: Any, halves: tuple[str, ...]
    ) -> Generation:
        # The schedule is fixed for a pipeline call (set_timesteps runs before the loop),
        # so it is read once per generation, not at every UNet call.
        schedule = tuple(int(v) for v in torch.as_tensor(schedule_tensor).flatten().tolist())
        guidance = halves == BOTH
        unet_batch = int(sample.shape[0])
        batch = unet_batch // 2 if guidance else unet_batch
        prompt, negative = self._match_encodings(encoder_hidden_states, batch, guidance, self._encodings)
        rows = len(prompt) if prompt is not None else _distinct_prompts(encoder_hidden_states, batch, guidance)
        return Generation(
            index=len(self.generations),
            batch_size=batch,
            guidance=guidance,
            latent_hw=(int(sample.shape[-2]), int(sample.shape[-1])),
            total_steps=len(schedule),
            token_ids=prompt,
            negative_token_ids=negative,
            images_per_prompt=max(1, batch // rows) if rows and batch % rows == 0 else 1,
            schedule=schedule,
        )

    def _match_encodings(
        self, encoder_hidden_states: Any, batch: int, guidance: bool, encodings: list
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Token ids of (prompt, negative prompt) among ``encodings`` (those since the last UNet call)."""
        if not encodings:
            return None, None
        prompt = negative = None
        unmatched = []
        if (
            isinstance(encoder_hidden_states, torch.Tensor)
            and encoder_hidden_states.shape[0] == batch * (1 + guidance)
            and self._context_slice is not None
        ):
            own = encoder_hidden_states[:, self._context_slice.tokens, self._context_slice.features]
            cond = own[batch:] if guidance else own
            uncond = own[:batch] if guidance else None
            for ids, candidates in encodings:
                if prompt is None and any(_repeated_rows(hidden, cond) for hidden in candidates):
                    prompt = ids
                elif (
                    negative is None
                    and uncond is not None
                    and any(_repeated_rows(hidden, uncond) for hidden in candidates)
                ):
                    negative = ids
                else:
                    unmatched.append(ids)
        else:
            unmatched = [ids for ids, _ in encodings]
        if prompt is None and len(unmatched) == 1 and batch % len(unmatched[0]) == 0:
            prompt = unmatched[0]
        return prompt, negative


def _repeated_rows(hidden: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether ``rows`` [batch, seq, dim] is ``hidden`` [prompts, seq, dim] with each prompt repeated in place."""
    if hidden.dim() != rows.dim() or hidden.shape[1:] != rows.shape[1:] or rows.shape[0] % hidden.shape[0]:
        return False
    repeats = rows.shape[0] // hidden.shape[0]
    return bool(torch.equal(rows[::repeats], hidden.to(dtype=rows.dtype, device=rows.device)))


def _distinct_prompts(encoder_hidden_states: Any, batch: int, guidance: bool) -> int | None:
    """Prompts in a batch given as embeddings: the fewest equal blocks of adjacent rows (None if unknown).

    diffusers repeats each prompt's embeddings ``num_images_per_prompt`` times in place, so
    the largest block size whose rows are all equal is the number of images per prompt.
    """
    if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.shape[0] != batch * (1 + guidance):
        return None
    cond = encoder_hidden_states[batch:] if guidance else encoder_hidden_states
    for repeats in range(batch, 0, -1):
        if batch % repeats == 0:
            blocks = cond.unflatten(0, (batch // repeats, repeats))
            if torch.equal(blocks, blocks[:, :1].expand_as(blocks)):
                return batch // repeats
    return batch
