"""Which denoising steps to capture, and what the current step is.

The step is read from the UNet call itself (its ``timestep`` argument, located in
``scheduler.timesteps``), not from a counter that other code could advance. That is
what makes partial schedules work: img2img and inpainting with ``strength < 1`` set
the whole schedule but start the loop part-way (diffusers' ``get_timesteps`` slices
``scheduler.timesteps[t_start * order:]``), a callback may interrupt the loop, and
second-order schedulers visit a timestep twice. Each UNet call is placed at the next
position of its timestep in the schedule, so a generation knows both where it is in
the schedule (``schedule_index``) and how many steps it has run (``step``).

Steps are counted from the first UNet call of a generation: step 0 is the first step
the pipeline runs, and a selection (``timesteps=N`` or explicit indices) is made over
the steps from there to the end of the schedule, the steps the pipeline will run.
A step is a UNet call (a second-order scheduler makes two per inference step, as the
old PNDM warm-up does), so steps are never skipped or counted twice however the
calls map onto the schedule.
So ``timesteps=5`` gives 5 maps for img2img at strength 0.5 as for text-to-image,
spread over the denoising that actually happens, never steps that are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cemaps.errors import ConfigError

StepSpec = str | int | Sequence[int]


def selected_steps(spec: StepSpec, total: int) -> tuple[int, ...]:
    """Step indices in ``range(total)`` chosen by ``spec``.

    Args:
        spec: ``"all"``; an int N for N evenly spaced steps including the first
            and the last; or explicit indices (negative counts from the end).
        total: number of steps to choose from: the steps a generation runs, from its
            first UNet call to the end of the schedule (see the module docstring).

    Example:
        >>> selected_steps(3, 20)
        (0, 10, 19)
    """
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(f"timesteps {spec!r}: expected 'all', an integer count, or a list of step indices")
        return tuple(range(total))
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec < 1:
            raise ConfigError(f"timesteps {spec}: expected a positive number of steps")
        if spec >= total:
            return tuple(range(total))
        return tuple(int(i) for i in np.unique(np.round(np.linspace(0, total - 1, int(spec))).astype(int)))
    indices = []
    for raw in spec:
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
            raise ConfigError(f"timesteps entry {raw!r}: expected an integer step index")
        index = int(raw) + total if raw < 0 else int(raw)
        if not 0 <= index < total:
            raise ConfigError(f"timesteps entry {raw}: outside the {total} denoising steps")
        indices.append(index)
    return tuple(sorted(set(indices)))


@dataclass
class Generation:
    """One pipeline call seen by a capture: its batch, prompts and denoising steps.

    Attributes:
        index: position of this call among the capture's pipeline calls.
        batch_size: images generated (the UNet batch without the unconditional half).
        guidance: whether the UNet batch holds (uncond, cond) halves.
        latent_hw: (height, width) of the latents.
        total_steps: length of the scheduler's whole schedule (``scheduler.timesteps``).
        token_ids: ``[prompts, seq]`` token ids of the prompts, or None when unknown
            (the pipeline was given ``prompt_embeds``).
        negative_token_ids: ``[prompts, seq]`` of the negative prompts, or None.
        images_per_prompt: images of each prompt (``num_images_per_prompt``); image ``i``
            is prompt ``i // images_per_prompt``, as diffusers repeats each prompt in place.
        timesteps: timestep of each UNet call so far; the step of a call is its index here.
        schedule_indices: position in ``schedule`` of each UNet call so far.
        schedule: the scheduler's timesteps for this call, in loop order.
        start: position in ``schedule`` of the first UNet call (> 0 for img2img with strength < 1).
        step_halves: per step, the guidance halves its UNet rows held, in batch order (``("uncond", "cond")``,
            ``("cond",)``; a step whose halves ran as two calls is ``("uncond", "cond")``, see
            :mod:`cemaps.hooks.guidance`). A callback that turns guidance off mid-run changes it from one
            step to the next.
    """

    index: int
    batch_size: int
    guidance: bool
    latent_hw: tuple[int, int]
    total_steps: int
    token_ids: np.ndarray | None = None
    negative_token_ids: np.ndarray | None = None
    images_per_prompt: int = 1
    timesteps: list[int] = field(default_factory=list)
    schedule_indices: list[int] = field(default_factory=list)
    schedule: tuple[int, ...] = ()
    start: int = 0
    step_halves: list[tuple[str, ...]] = field(default_factory=list)
    _positions: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)

    def positions(self, timestep: int) -> tuple[int, ...]:
        """Indices in ``schedule`` where ``timestep`` occurs (twice for 2nd-order schedulers)."""
        if not self._positions and self.schedule:
            found: dict[int, list[int]] = {}
            for index, value in enumerate(self.schedule):
                found.setdefault(value, []).append(index)
            self._positions.update((value, tuple(indices)) for value, indices in found.items())
        return self._positions.get(timestep, ())

    def next_position(self, timestep: int) -> int | None:
        """Where a later UNet call at ``timestep`` falls: its first position after the last call's.

        None if the schedule has no such position (the call belongs to another loop).
        """
        last = self.schedule_indices[-1] if self.schedule_indices else -1
        for position in self.positions(timestep):
            if position > last:
                return position
        return None

    def first_position(self, timestep: int, begin_index: int | None) -> int | None:
        """Where the first UNet call at ``timestep`` falls.

        The scheduler's ``begin_index`` when the pipeline set it (img2img does, for
        schedulers that have one) and it holds this timestep; else, when the timestep
        occurs twice, the second occurrence: diffusers' own convention for a loop that
        may start part-way (``index_for_timestep``), and where ``get_timesteps`` starts a
        second-order schedule (``t_start * order``). :meth:`restart_earlier` corrects it
        when the next call shows the loop started at the first occurrence.
        """
        found = self.positions(timestep)
        if begin_index is not None and begin_index in found:
            return begin_index
        if not found:
            return None
        return found[1] if len(found) > 1 else found[0]

    def restart_earlier(self, timestep: int) -> int | None:
        """The second call repeats the first call's timestep: the loop began at its earlier occurrence.

        Moves the first call there and returns the second call's position (None if that does not fit).
        """
        if len(self.schedule_indices) != 1 or self.timesteps[0] != timestep:
            return None
        earlier = [p for p in self.positions(timestep) if p < self.schedule_indices[0]]
        if not earlier:
            return None
        self.schedule_indices[0] = self.start = earlier[-1]
        return self.next_position(timestep)

    def add_call(self, timestep: int, position: int, halves: tuple[str, ...] | None = None) -> int:
        """Records a UNet call at ``position`` of the schedule holding ``halves`` (default: the generation's);
        returns its step (calls before it)."""
        if not self.schedule_indices:
            self.start = position
        self.timesteps.append(timestep)
        self.schedule_indices.append(position)
        self.step_halves.append(halves if halves is not None else self.halves)
        return len(self.timesteps) - 1

    @property
    def planned_steps(self) -> int:
        """Steps from the first UNet call to the end of the schedule: what a selection chooses from."""
        return max(self.total_steps - self.start, len(self.timesteps))

    @property
    def halves(self) -> tuple[str, ...]:
        """Labels of the first step's halves: diffusers puts the unconditional half first.

        Per step (guidance may be turned off mid-run), read :attr:`step_halves`.
        """
        return ("uncond", "cond") if self.guidance else ("cond",)

    def prompt_of_image(self, image: int) -> int:
        """Index of the prompt (in the pipeline call's prompt list) that image ``image`` was made from."""
        return image // self.images_per_prompt

    def prompt_lengths(self, eos_token_id: int | None) -> list[int | None]:
        """Per image: tokens of its prompt incl. start and end tokens; None where tokens are unknown.

        A prompt with no end token (truncated) keeps its whole sequence.
        """
        if self.token_ids is None or eos_token_id is None:
            return [None] * self.batch_size
        lengths = []
        for row in self.token_ids:
            ends = np.flatnonzero(row == eos_token_id)
            lengths.append(int(ends[0]) + 1 if ends.size else len(row))
        return [lengths[self.prompt_of_image(i)] for i in range(self.batch_size)]
