"""The :class:`~cemaps.probes.CrossAttentionProbe` of transformer (DiT) families: attach and collect.

Layers are every module that attends to text (:func:`cemaps.probes.dit_attention.text_attention_layer`),
chosen by the probe's ``layers`` (``"all"``: every one), in depth order (``named_modules()`` order:
SD3's joint blocks; Flux's double-stream then single-stream blocks; PixArt's blocks). Per-layer
hooks are attached only during captured steps, and each layer's maps are computed when its
attention module returns, so at most one layer's projections are alive at a time.

Each generated image yields, per layer, ``[token, step, half, head, y, x]`` as for UNets, with
coordinates ``token`` (strings), ``stream`` (the encoders whose block the token is in: SD3's
``text_encoder+text_encoder_2`` then ``text_encoder_3``) and ``position`` (index in the text
context); joint and single layers also yield ``<layer>:text_mass`` ``[step, half, head, y, x]``.
With ``tokens="prompt"`` the kept tokens are the image's prompt tokens (up to the end token of
each block; PixArt: the positions its own mask attends to), so masked padding is never stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from cemaps.hooks.dit_context import DiTCaptureContext, TextLayout
from cemaps.hooks.selection import select_modules
from cemaps.hooks.steps import Generation
from cemaps.labelled import CROSS_ATTENTION_AXES, TEXT_MASS_AXES, TEXT_MASS_SUFFIX, LabelledArray
from cemaps.probes.dit_attention import DiTReduction, LayerSlot, layer_hooks, layer_maps, text_attention_layer
from cemaps.probes.settings import DTYPES

ALL_LAYERS = "all"


def is_text_attention(name: str, module: nn.Module) -> bool:
    return text_attention_layer(name, module) is not None


def text_attention_modules(denoiser: nn.Module, layers: Any) -> dict[str, nn.Module]:
    """Text-attending modules of ``denoiser`` chosen by ``layers`` (``"all"``, a glob, a list, a predicate).

    Raises:
        LayerNotFoundError: the selection names or matches no text-attending layer.
    """
    selector = (lambda name, module: True) if layers == ALL_LAYERS else layers
    return select_modules(denoiser, selector, accept=is_text_attention, kind="text-attention layer")


class DiTCapture:
    """Hooks and per-generation maps of one probe on a transformer family's pipeline."""

    def __init__(self, probe: Any, context: DiTCaptureContext):
        self.probe = probe
        self.context = context
        modules = text_attention_modules(context.unet, probe.settings.layers)
        self.modules = modules
        self.slots = {name: LayerSlot(name, text_attention_layer(name, m)) for name, m in modules.items()}
        self.captured: dict[int, list[int]] = {}
        self._kept: dict[int, tuple[torch.Tensor | None, list[np.ndarray]]] = {}

    def layer_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        handles = []
        for name, attn in self.modules.items():
            slot = self.slots[name]
            handles.extend(layer_hooks(slot, attn))
            handles.append(attn.register_forward_hook(self._compute(slot, attn)))
        return handles

    def _compute(self, slot: LayerSlot, attn: nn.Module):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            generation = self.context.generation
            with torch.no_grad():
                maps, mass, grid = layer_maps(
                    slot, attn, self.context.text_length, generation.latent_hw, self._reduction(generation)
                )
            slot.clear()
            slot.grid = grid
            slot.maps.setdefault(generation.index, []).append((maps, mass))

        return hook

    def _reduction(self, generation: Generation) -> DiTReduction:
        settings = self.probe.settings
        halves = generation.halves
        keep = self.probe.kept_halves(halves)
        rows = None
        if len(keep) < len(halves):
            first = halves.index(keep[0]) * generation.batch_size
            rows = slice(first, first + generation.batch_size)
        kept, _ = self._kept_positions(generation)
        return DiTReduction(
            rows=rows,
            mean_heads=settings.heads == "mean",
            kept=kept,
            spatial=settings.spatial,
            dtype=DTYPES[settings.dtype],
        )

    def _kept_positions(self, generation: Generation) -> tuple[torch.Tensor | None, list[np.ndarray]]:
        """Context positions kept at capture time (the union over the batch; None: all), and per image."""
        if generation.index not in self._kept:
            layout = self.context.layouts[generation.index]
            if self.probe.settings.tokens == "prompt":
                per_image = [
                    layout.prompt_positions(i, generation.prompt_of_image(i)) for i in range(generation.batch_size)
                ]
                union = np.unique(np.concatenate(per_image))
                self._kept[generation.index] = (torch.as_tensor(union, dtype=torch.long), per_image)
            else:
                every = np.arange(layout.tokens)
                self._kept[generation.index] = (None, [every] * generation.batch_size)
        return self._kept[generation.index]

    def collect(self) -> list[dict[str, LabelledArray]]:
        records: list[dict[str, LabelledArray]] = []
        for generation in self.context.generations:
            steps = self.captured.get(generation.index, [])
            halves = self.probe.kept_halves(generation.halves)
            stacked: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
            for name, slot in self.slots.items():
                per_step = slot.maps.get(generation.index, [])
                if len(per_step) != len(steps):
                    raise RuntimeError(f"layer {name!r} ran {len(per_step)} of {len(steps)} captured steps")
                if not steps:
                    continue
                pattern = "step (half image) head (y x) token -> image token step half head y x"
                maps = rearrange(torch.stack([m for m, _ in per_step]), pattern, half=len(halves), y=slot.grid[0])
                mass = None
                if per_step[0][1] is not None:
                    mass = rearrange(
                        torch.stack([m for _, m in per_step]),
                        "step (half image) head (y x) -> image step half head y x",
                        half=len(halves),
                        y=slot.grid[0],
                    ).numpy()
                stacked[name] = (maps.cpu().numpy(), mass)
            if not stacked:
                records.extend({} for _ in range(generation.batch_size))
                continue
            records.extend(self._records(generation, halves, steps, stacked))
        for slot in self.slots.values():
            slot.maps.clear()
        return records

    def _records(
        self,
        generation: Generation,
        halves: tuple[str, ...],
        steps: list[int],
        stacked: dict[str, tuple[np.ndarray, np.ndarray | None]],
    ) -> list[dict[str, LabelledArray]]:
        layout: TextLayout = self.context.layouts[generation.index]
        union, per_image = self._kept_positions(generation)
        union_list = np.arange(layout.tokens) if union is None else union.numpy()
        step_coords = {
            "step": list(steps),
            "schedule_index": [generation.schedule_indices[s] for s in steps],
            "timestep": [generation.timesteps[s] for s in steps],
            "half": list(halves),
        }
        out = []
        for i in range(generation.batch_size):
            prompt = generation.prompt_of_image(i)
            positions = per_image[i]
            columns = np.searchsorted(union_list, positions)
            coords: dict[str, Any] = {
                **step_coords,
                "token": layout.labels(prompt, positions),
                "stream": layout.streams(positions),
                "position": [int(p) for p in positions],
                "prompt": [prompt],
                "generation": [generation.index],
            }
            if "uncond" in halves and layout.blocks[0].negative_ids is not None:
                coords["uncond_token"] = layout.labels(prompt, positions, negative=True)
            record: dict[str, LabelledArray] = {}
            for name, (maps, mass) in stacked.items():
                record[name] = LabelledArray(np.ascontiguousarray(maps[i][columns]), CROSS_ATTENTION_AXES, coords)
                if mass is not None:
                    record[name + TEXT_MASS_SUFFIX] = LabelledArray(
                        np.ascontiguousarray(mass[i]), TEXT_MASS_AXES, step_coords
                    )
            out.append(record)
        return out
