"""Cross-attention probabilities of the UNet's ``attn2`` layers, captured beside SDPA.

The model's own attention output is computed by diffusers' processor as usual
(fast SDPA path, untouched). Read-only forward hooks take the query and key
projections (the outputs of ``to_q`` and ``to_k``, so LoRA-wrapped projections are
seen with their update); when the UNet call returns, the probe computes
``attn.get_attention_scores(q, k)`` from them, stacking layers that score alike
(see :mod:`cemaps.probes.attention_scores`). The per-layer hooks are attached only for
the selected steps (a UNet pre-hook switches them), so the other steps run exactly as
without capture.

Example:
    >>> probe = CrossAttentionProbe(layers="*attn2", timesteps=5, spatial=16)
    >>> probe.name
    'cross_attention'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from torch import nn
from torch.utils.hooks import RemovableHandle

from cemaps.errors import ConfigError
from cemaps.hooks.context import CaptureContext
from cemaps.hooks.selection import LayerSelector, select_modules
from cemaps.hooks.steps import Generation, StepSpec, selected_steps
from cemaps.labelled import LabelledArray
from cemaps.probes.attention_scores import Reduction, layer_probabilities

AXES = ("token", "step", "half", "head", "y", "x")
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def is_cross_attention(name: str, module: nn.Module) -> bool:
    return isinstance(module, Attention) and bool(getattr(module, "is_cross_attention", False))


@dataclass(frozen=True)
class CrossAttentionSettings:
    """What a :class:`CrossAttentionProbe` keeps; stored as the store's capture settings.

    Attributes:
        layers: glob, list of module paths, or predicate over cross-attention modules.
        timesteps: "all", N evenly spaced steps, or explicit step indices.
        heads: "mean" (average over heads after the softmax) or "all".
        tokens: "prompt" (the prompt's tokens incl. start and end) or "all".
        spatial: "native" or the largest side kept; larger maps are average-pooled.
        dtype: "float16" or "float32" of the stored probabilities.
        halves: guidance halves kept: "cond", "uncond" or "both".
    """

    layers: Any = "*attn2"
    timesteps: StepSpec = 5
    heads: Literal["mean", "all"] = "mean"
    tokens: Literal["prompt", "all"] = "prompt"
    spatial: int | Literal["native"] = 16
    dtype: Literal["float16", "float32"] = "float16"
    halves: Literal["cond", "uncond", "both"] = "cond"

    def __post_init__(self) -> None:
        checks = {
            "heads": (self.heads, ("mean", "all")),
            "tokens": (self.tokens, ("prompt", "all")),
            "dtype": (self.dtype, tuple(_DTYPES)),
            "halves": (self.halves, ("cond", "uncond", "both")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"capture setting {key}={value!r}: expected one of {', '.join(allowed)}")
        if self.spatial != "native" and (isinstance(self.spatial, bool) or not isinstance(self.spatial, int) or self.spatial < 1):
            raise ConfigError(f"capture setting spatial={self.spatial!r}: expected 'native' or a positive integer")

    def to_dict(self) -> dict[str, Any]:
        layers = self.layers if isinstance(self.layers, str) else (
            list(self.layers) if not callable(self.layers) else getattr(self.layers, "__name__", "callable")
        )
        timesteps = self.timesteps if isinstance(self.timesteps, (str, int)) else list(self.timesteps)
        return {"layers": layers, "timesteps": timesteps, "heads": self.heads, "tokens": self.tokens,
                "spatial": self.spatial, "dtype": self.dtype, "halves": self.halves}


class _StepHooks:
    """Hooks attached while a captured step runs and removed otherwise; ``remove`` detaches them."""

    def __init__(self, attach: Any):
        self._attach = attach
        self._handles: list[RemovableHandle] = []

    def set_active(self, active: bool) -> None:
        if active and not self._handles:
            self._handles = self._attach()
        elif not active:
            self.remove()

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@dataclass
class _LayerSlot:
    """Per-layer scratch between the to_q and to_k hooks."""

    query: torch.Tensor | None = None
    # maps[generation] = list over captured steps of [(half, image), head, y*x, token]
    maps: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    grid: tuple[int, int] = (0, 0)  # (y, x) of the kept maps


class CrossAttentionProbe:
    """Captures cross-attention probabilities ``softmax(q k^T / sqrt(d))`` per layer.

    Each generated image yields, per layer, a float array with axes
    ``(token, step, half, head, y, x)``: probabilities over text tokens at each
    spatial position (they sum to 1 over all tokens when ``tokens="all"``).
    """

    name = "cross_attention"

    def __init__(self, layers: LayerSelector = "*attn2", timesteps: StepSpec = 5, heads: str = "mean",
                 tokens: str = "prompt", spatial: int | str = 16, dtype: str = "float16", halves: str = "cond"):
        self.settings = CrossAttentionSettings(layers, timesteps, heads, tokens, spatial, dtype, halves)
        self._slots: dict[str, _LayerSlot] = {}
        self._steps: dict[int, tuple[int, ...]] = {}
        self._limits: dict[int, int] = {}
        self._tokenizer: Any = None
        self._pending: list[tuple[_LayerSlot, Attention, torch.Tensor, torch.Tensor]] = []

    @classmethod
    def from_settings(cls, settings: CrossAttentionSettings) -> CrossAttentionProbe:
        probe = cls.__new__(cls)
        probe.settings, probe._slots, probe._steps, probe._limits, probe._tokenizer = settings, {}, {}, {}, None
        probe._pending = []
        return probe

    def layer_names(self, unet: nn.Module) -> list[str]:
        return list(select_modules(unet, self.settings.layers, accept=is_cross_attention, kind="cross-attention layer"))

    def attach(self, pipe: Any, context: CaptureContext) -> list[Any]:
        layers = select_modules(pipe.unet, self.settings.layers, accept=is_cross_attention, kind="cross-attention layer")
        self._slots = {name: _LayerSlot() for name in layers}
        self._steps, self._limits, self._tokenizer = {}, {}, context.tokenizer

        def layer_hooks() -> list[RemovableHandle]:
            self._pending = []
            handles = []
            for name, attn in layers.items():
                slot = self._slots[name]
                handles.append(attn.to_q.register_forward_hook(self._keep_query(slot)))
                handles.append(attn.to_k.register_forward_hook(self._score(slot, attn)))
            handles.append(pipe.unet.register_forward_hook(self._flush(context)))
            return handles

        # Per-layer hooks exist only during captured steps, so the other steps run at full speed.
        step_hooks = _StepHooks(layer_hooks)

        def on_unet_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
            step_hooks.set_active(self._active(context))

        # The context's own UNet pre-hook was registered first, so the step is already known here.
        return [pipe.unet.register_forward_pre_hook(on_unet_call, with_kwargs=True), step_hooks]

    def _active(self, context: CaptureContext) -> bool:
        generation = context.generation
        steps = self._steps.get(generation.index)
        if steps is None:
            steps = self._steps[generation.index] = selected_steps(self.settings.timesteps, generation.total_steps)
        return context.step_index in steps

    @staticmethod
    def _keep_query(slot: _LayerSlot):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            slot.query = output
        return hook

    def _score(self, slot: _LayerSlot, attn: Attention):
        # The processor projects the query before the key, so both are known when to_k returns;
        # scoring waits for the end of the UNet call, where layers that score alike go together.
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            query, slot.query = slot.query, None
            if query is not None:
                self._pending.append((slot, attn, query, output))
        return hook

    def _flush(self, context: CaptureContext):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            pending, self._pending = self._pending, []
            if not pending:
                return
            generation = context.generation
            with torch.no_grad():
                results = layer_probabilities([item[1:] for item in pending], generation.latent_hw,
                                              self._reduction(generation))
            for (slot, *_), (maps, grid) in zip(pending, results, strict=True):
                slot.grid = grid
                slot.maps.setdefault(generation.index, []).append(maps)
        return hook

    def _reduction(self, generation: Generation) -> Reduction:
        halves = generation.halves
        keep = self.kept_halves(halves)
        rows = None
        if len(keep) < len(halves):  # one CFG half of two: diffusers stacks (uncond, cond)
            first = halves.index(keep[0]) * generation.batch_size
            rows = slice(first, first + generation.batch_size)
        return Reduction(rows=rows, mean_heads=self.settings.heads == "mean", tokens=self._token_limit(generation),
                         spatial=self.settings.spatial, dtype=_DTYPES[self.settings.dtype])

    def _token_limit(self, generation: Generation) -> int | None:
        """Tokens kept at capture time: the longest prompt of the batch (None: all)."""
        if self.settings.tokens != "prompt" or generation.token_ids is None:
            return None
        limit = self._limits.get(generation.index)
        if limit is None:
            eos = getattr(self._tokenizer, "eos_token_id", None)
            limit = self._limits[generation.index] = max(generation.prompt_lengths(eos)) if eos is not None else -1
        return None if limit < 0 else limit

    def kept_halves(self, halves: tuple[str, ...]) -> tuple[str, ...]:
        wanted = {"cond": ("cond",), "uncond": ("uncond",), "both": ("uncond", "cond")}[self.settings.halves]
        keep = tuple(h for h in halves if h in wanted)
        if not keep:
            raise ConfigError(f"capture setting halves={self.settings.halves!r}: this generation ran without "
                              "classifier-free guidance, so only the 'cond' half exists")
        return keep

    def collect(self, context: CaptureContext) -> list[dict[str, LabelledArray]]:
        """Per generated image: ``{layer: LabelledArray[token, step, half, head, y, x]}``."""
        tokenizer = context.tokenizer
        records: list[dict[str, LabelledArray]] = []
        for generation in context.generations:
            steps = self._steps.get(generation.index, selected_steps(self.settings.timesteps, generation.total_steps))
            stacked = {}
            n_halves = len(self.kept_halves(generation.halves))
            for name, slot in self._slots.items():
                per_step = slot.maps.get(generation.index, [])
                if len(per_step) != len(steps):
                    raise RuntimeError(f"layer {name!r} ran {len(per_step)} of {len(steps)} captured steps")
                # [step, (half, image), head, y*x, token] -> [image, token, step, half, head, y, x]
                maps = torch.stack(per_step).unflatten(1, (n_halves, generation.batch_size))
                maps = maps.unflatten(4, slot.grid).permute(2, 6, 0, 1, 3, 4, 5)
                stacked[name] = maps.cpu().numpy()
            if self.settings.tokens == "prompt":
                lengths = generation.prompt_lengths(tokenizer.eos_token_id)
            else:
                lengths = [None] * generation.batch_size
            for i in range(generation.batch_size):
                coords: dict[str, Any] = {
                    "step": list(steps),
                    "timestep": [generation.timesteps[s] for s in steps],
                    "half": list(self.kept_halves(generation.halves)),
                }
                if generation.token_ids is not None and tokenizer is not None:
                    ids = generation.token_ids[i][: lengths[i]]
                    coords["token"] = tokenizer.convert_ids_to_tokens([int(t) for t in ids])
                records.append({name: LabelledArray(np.ascontiguousarray(maps[i, : lengths[i]]), AXES, coords)
                                for name, maps in stacked.items()})
        for slot in self._slots.values():
            slot.maps.clear()
        return records
