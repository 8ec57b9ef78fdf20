"""Which denoising steps to capture, and what the current step is.

The step is read from the UNet call itself (its ``timestep`` argument, located in
``scheduler.timesteps``), not from a counter that other code could advance.
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
        total: number of UNet calls in the denoising loop.

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
    """One pipeline call seen by a capture: its batch and its denoising steps."""

    index: int
    batch_size: int
    guidance: bool
    latent_hw: tuple[int, int]
    total_steps: int
    token_ids: np.ndarray | None = None  # [batch, seq] of the prompt (not the negative prompt)
    timesteps: list[int] = field(default_factory=list)  # timestep value of each UNet call so far
    schedule: tuple[int, ...] = ()  # the scheduler's timesteps for this call, in loop order
    _positions: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)

    def positions(self, timestep: int) -> tuple[int, ...]:
        """Indices in ``schedule`` where ``timestep`` occurs (twice for 2nd-order schedulers)."""
        if not self._positions and self.schedule:
            found: dict[int, list[int]] = {}
            for index, value in enumerate(self.schedule):
                found.setdefault(value, []).append(index)
            self._positions.update((value, tuple(indices)) for value, indices in found.items())
        return self._positions.get(timestep, ())

    @property
    def halves(self) -> tuple[str, ...]:
        """Labels of the UNet batch halves: diffusers puts the unconditional half first."""
        return ("uncond", "cond") if self.guidance else ("cond",)

    def prompt_lengths(self, eos_token_id: int) -> list[int]:
        """Tokens per prompt including start and end tokens (the whole sequence if none ends)."""
        if self.token_ids is None:
            raise ConfigError("tokens='prompt' needs the prompt's token ids; this call passed prompt_embeds, use tokens='all'")
        lengths = []
        for row in self.token_ids:
            ends = np.flatnonzero(row == eos_token_id)
            lengths.append(int(ends[0]) + 1 if ends.size else len(row))
        return lengths
