"""Per-step parts of :class:`~cemaps.probes.CrossAttentionProbe`: what is hooked, and how steps are stacked.

- :class:`StepHooks`: the per-layer hooks exist only while a captured step runs.
- :func:`key_projections`: where a layer's key comes from. diffusers' processors project it with
  ``to_k``; after ``fuse_qkv_projections()`` a cross-attention layer projects key and value with one
  ``to_kv`` and its processor (``FusedAttnProcessor2_0``) splits the output in two equal halves, key
  first. Both are hooked; whichever runs gives the key the processor uses, exactly.
- :func:`stack_steps`: a generation's captured steps, each holding the guidance halves it had
  (a callback may turn guidance off mid-run), on one ``half`` axis; a half a step did not have is NaN.

Example:
    >>> import torch
    >>> both, cond_only = torch.ones(2, 1, 4, 3), torch.ones(1, 1, 4, 3)
    >>> out = stack_steps([both, cond_only], [("uncond", "cond"), ("cond",)], ("uncond", "cond"), batch=1)
    >>> tuple(out.shape), bool(out[1, 0].isnan().all()), bool(out[1, 1].eq(1).all())
    ((2, 2, 1, 1, 4, 3), True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class StepHooks:
    """Hooks attached while a captured step runs and removed otherwise.

    A :class:`~cemaps.hooks.capture.Removable`: ``remove`` detaches whatever is attached
    and is safe to call any number of times.
    """

    def __init__(self, attach: Callable[[], list[RemovableHandle]]):
        self._attach = attach
        self._handles: list[RemovableHandle] = []

    @property
    def active(self) -> bool:
        """Whether the hooks are attached (the current denoiser call is a captured step)."""
        return bool(self._handles)

    def set_active(self, active: bool) -> None:
        if active and not self._handles:
            self._handles = self._attach()
        elif not active:
            self.remove()

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@dataclass
class LayerSlot:
    """Per-layer scratch between the query and key hooks, and the layer's kept maps."""

    name: str
    query: torch.Tensor | None = None
    # maps[generation] = list over captured steps of [(half image), head, y*x, token]
    maps: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    grid: tuple[int, int] = (0, 0)  # (y, x) of the kept maps


def _whole(output: torch.Tensor) -> torch.Tensor:
    return output


def _fused_key(output: torch.Tensor) -> torch.Tensor:
    # FusedAttnProcessor2_0: key, value = torch.split(kv, kv.shape[-1] // 2, dim=-1)
    return output[..., : output.shape[-1] // 2]


def key_projections(attn: nn.Module) -> list[tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
    """(module, read the key from its output) for each projection that may give ``attn``'s key.

    ``to_k``, and ``to_kv`` where ``fuse_qkv_projections()`` made one (it stays after
    ``unfuse_qkv_projections()``, which only restores the processors, so the hook that fires says
    which the processor used).
    """
    found = [(attn.to_k, _whole)]
    fused = getattr(attn, "to_kv", None)
    if isinstance(fused, nn.Module):
        found.append((fused, _fused_key))
    return found


def stack_steps(
    per_step: list[torch.Tensor], stored: list[tuple[str, ...]], halves: tuple[str, ...], batch: int
) -> torch.Tensor:
    """``[step, half, image, head, y*x, token]``: the ``halves`` of each step; NaN where a step lacks one.

    Args:
        per_step: per captured step, ``[(half image), head, y*x, token]`` as kept, its rows the
            ``stored`` halves of that step in batch order.
        stored: per captured step, the halves its rows hold.
        halves: the halves of the output's ``half`` axis.
        batch: images of the generation.
    """
    first = per_step[0]
    out = torch.full(
        (len(per_step), len(halves), batch, *first.shape[1:]), float("nan"), dtype=first.dtype, device=first.device
    )
    for step, (maps, rows) in enumerate(zip(per_step, stored, strict=True)):
        blocks = maps.unflatten(0, (len(rows), batch))
        for index, half in enumerate(halves):
            if half in rows:
                out[step, index] = blocks[rows.index(half)]
    return out
