"""Cross-attention probabilities of the UNet's ``attn2`` layers, captured beside SDPA.

The model's own attention output is computed by diffusers' processor as usual
(fast SDPA path, untouched). Read-only forward hooks take the query and key
projections (the outputs of ``to_q`` and ``to_k``, so LoRA-wrapped projections are
seen with their update); when the UNet call returns, the probe computes
``attn.get_attention_scores(q, k)`` from them, stacking layers that score alike
(see :mod:`cemaps.probes.attention_scores`). The per-layer hooks are attached only for
the selected steps (a UNet pre-hook switches them), so the other steps run exactly as
without capture.

Which steps: see :mod:`cemaps.hooks.steps`. Steps count from the first UNet call of a
pipeline call, and ``timesteps=N`` picks N evenly spaced steps among those the pipeline
runs (img2img and inpainting with ``strength < 1`` run only the end of the schedule).
Each map records the steps it holds (``step``), their positions in the scheduler's
schedule (``schedule_index``) and their timesteps (``timestep``).

Batches: one record per generated image, in the pipeline's order (each prompt's
``num_images_per_prompt`` images together), labelled with its prompt (``prompt``: index
in the call's prompt list) and that prompt's tokens (``token``), named by the tokenizer of the
model family's labelling stream; ``token_features`` lists the text encoders whose features the
token axis carries (SDXL: ``text_encoder`` and ``text_encoder_2``, concatenated). A prompt given as
``prompt_embeds`` has no tokens to read: its ``token`` labels are None and, with
``tokens="prompt"``, every position of the embeddings is kept.

Example:
    >>> probe = CrossAttentionProbe(layers="*attn2", timesteps=5, spatial=16)
    >>> probe.name
    'cross_attention'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn
from torch.utils.hooks import RemovableHandle

from cemaps.errors import ConfigError
from cemaps.hooks.capture import Removable
from cemaps.hooks.compiled import EagerCalls, original_module
from cemaps.hooks.context import CaptureContext
from cemaps.hooks.dit_context import DiTCaptureContext
from cemaps.hooks.guidance import BOTH, COND, guidance_flag
from cemaps.hooks.selection import LayerSelector, select_modules
from cemaps.hooks.steps import Generation, StepSpec, selected_steps
from cemaps.labelled import CROSS_ATTENTION, CROSS_ATTENTION_AXES, LabelledArray
from cemaps.probes.attention_scores import Reduction, layer_probabilities
from cemaps.probes.dit_capture import ALL_LAYERS, DiTCapture, text_attention_modules
from cemaps.probes.settings import DTYPES, CrossAttentionSettings, is_cross_attention
from cemaps.probes.unet_steps import LayerSlot, StepHooks, key_projections, stack_steps

AXES = CROSS_ATTENTION_AXES
__all__ = ["AXES", "CrossAttentionProbe", "CrossAttentionSettings", "is_cross_attention"]


class CrossAttentionProbe:
    """Captures cross-attention probabilities ``softmax(q k^T / sqrt(d))`` per layer.

    Each generated image yields, per layer, a float array with axes
    ``(token, step, half, head, y, x)``: probabilities over text tokens at each
    spatial position (they sum to 1 over all tokens when ``tokens="all"``).

    On a transformer family (SD3/SD3.5, Flux, PixArt-Sigma) the same probe captures every layer
    through which image tokens read text (:mod:`cemaps.probes.dit_capture`): PixArt's masked
    cross-attention, and the image-query x text-key block of SD3's and Flux's joint softmax with
    each query's ``text_mass`` under ``"<layer>:text_mass"`` (rows of the block sum to it, not to 1);
    see docs/joint-attention.md.
    """

    name = CROSS_ATTENTION

    def __init__(
        self,
        layers: LayerSelector = "all",
        timesteps: StepSpec = 5,
        heads: str = "mean",
        tokens: str = "prompt",
        spatial: int | str = 16,
        dtype: str = "float16",
        halves: str = "cond",
    ):
        self.settings = CrossAttentionSettings(layers, timesteps, heads, tokens, spatial, dtype, halves)
        self._reset(None)

    @classmethod
    def from_settings(cls, settings: CrossAttentionSettings) -> CrossAttentionProbe:
        probe = cls.__new__(cls)
        probe.settings = settings
        probe._reset(None)
        return probe

    def _reset(self, tokenizer: Any) -> None:
        self._slots: dict[str, LayerSlot] = {}
        self._steps: dict[tuple[int, int], tuple[int, ...]] = {}  # (generation, planned steps) -> selected
        self._captured: dict[int, list[int]] = {}  # generation -> steps captured, in call order
        self._stored: dict[int, list[tuple[str, ...]]] = {}  # generation -> halves kept, per captured step
        self._limits: dict[int, int | None] = {}
        self._tokenizer = tokenizer
        self._token_features: list[str] = []
        self._pending: list[tuple[LayerSlot, Attention, torch.Tensor, torch.Tensor]] = []
        self._dit: DiTCapture | None = None

    def layer_names(self, unet: nn.Module) -> list[str]:
        """Module paths of the layers this probe captures in ``unet`` (a UNet or a DiT), in depth order.

        A ``torch.compile`` wrapper is seen through: the names are the original module's.
        """
        unet = original_module(unet, "the denoiser")
        if not hasattr(unet, "down_blocks"):  # a transformer: no down/mid/up blocks
            return list(text_attention_modules(unet, self.settings.layers))
        return list(self._unet_layers(unet))

    def _unet_layers(self, unet: nn.Module) -> dict[str, nn.Module]:
        layers = self.settings.layers
        selector = (lambda name, module: True) if layers == ALL_LAYERS else layers
        return select_modules(unet, selector, accept=is_cross_attention, kind="cross-attention layer")

    def attach(self, pipe: Any, context: CaptureContext) -> list[Removable]:
        """Registers the probe's hooks on the pipeline's denoiser (``context.unet``, as its model family says).

        Returns their handles (see :class:`Removable`).

        Raises:
            LayerNotFoundError: ``layers`` names or matches no cross-attention layer.
        """
        if isinstance(context, DiTCaptureContext):
            return self._attach_dit(context)
        denoiser = context.unet
        layers = self._unet_layers(denoiser)
        self._reset(context.tokenizer)
        self._token_features = list(context.token_features)
        self._slots = {name: LayerSlot(name) for name in layers}

        def layer_hooks() -> list[RemovableHandle]:
            self._pending = []
            handles = []
            for name, attn in layers.items():
                slot = self._slots[name]
                # appended (not prepended): the probe sees the projections after any other hook
                # on to_q/to_k has run, i.e. what the attention actually uses
                handles.append(attn.to_q.register_forward_hook(self._keep_query(slot)))
                for projection, key_of in key_projections(attn):
                    handles.append(projection.register_forward_hook(self._score(slot, attn, key_of)))
            handles.append(context.entry.register_forward_hook(self._flush(context)))
            return handles

        # Per-layer hooks exist only during captured steps, so the other steps run at full speed.
        step_hooks = StepHooks(layer_hooks)

        def on_unet_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
            # the context's pre-hook is prepended, so the step of this call is already known
            active = self._active(context)
            if active and not context.completes_step:  # the second call of a split step adds to its step
                self._captured.setdefault(context.generation.index, []).append(context.step_index)
            step_hooks.set_active(active)

        return self._switching_hooks(context, on_unet_call, step_hooks)

    def _attach_dit(self, context: DiTCaptureContext) -> list[Removable]:
        self._reset(context.tokenizer)
        dit = self._dit = DiTCapture(self, context)
        step_hooks = StepHooks(dit.layer_hooks)

        def on_transformer_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
            active = self._active(context)
            if active:
                dit.captured.setdefault(context.generation.index, []).append(context.step_index)
            step_hooks.set_active(active)

        return self._switching_hooks(context, on_transformer_call, step_hooks)

    def _switching_hooks(self, context: CaptureContext, on_call: Any, step_hooks: StepHooks) -> list[Removable]:
        """``on_call`` before each denoiser call; a compiled denoiser runs captured calls uncompiled (hooks fire)."""
        eager = EagerCalls(compiled=context.entry is not context.unet)

        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            on_call(module, args, kwargs)
            if step_hooks.active:
                eager.begin()

        return [
            context.entry.register_forward_pre_hook(before, with_kwargs=True),
            context.entry.register_forward_hook(lambda module, args, output: eager.end()),
            eager,
            step_hooks,
        ]

    def _active(self, context: CaptureContext) -> bool:
        generation = context.generation
        # keyed by the planned steps too: the second call may move the first (Generation.restart_earlier)
        key = (generation.index, generation.planned_steps)
        steps = self._steps.get(key)
        if steps is None:
            steps = self._steps[key] = selected_steps(self.settings.timesteps, generation.planned_steps)
        return context.step_index in steps

    @staticmethod
    def _keep_query(slot: LayerSlot):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            slot.query = output

        return hook

    def _score(self, slot: LayerSlot, attn: Attention, key_of: Any):
        # The processor projects the query before the key, so both are known when to_k (or the fused
        # to_kv) returns; scoring waits for the end of the UNet call, where layers that score alike go together.
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            query, slot.query = slot.query, None
            if query is None:
                raise RuntimeError(
                    f"layer {slot.name!r}: its key projection ran before its query projection; the attention "
                    f"processor {type(attn.processor).__name__} projects in an order cemaps cannot pair"
                )
            self._pending.append((slot, attn, query, key_of(output)))

        return hook

    def _flush(self, context: CaptureContext):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            pending, self._pending = self._pending, []
            if not pending:
                return
            generation = context.generation
            halves, rows = self._kept_rows(context)
            with torch.no_grad():
                results = layer_probabilities(
                    [item[1:] for item in pending], generation.latent_hw, self._reduction(generation, rows)
                )
            stored = self._stored.setdefault(generation.index, [])
            for (slot, *_), (maps, grid) in zip(pending, results, strict=True):
                slot.grid = grid
                per_step = slot.maps.setdefault(generation.index, [])
                if context.completes_step and per_step:  # the cond half of the step the last call began
                    per_step[-1] = torch.cat([per_step[-1], maps])
                else:
                    per_step.append(maps)
            if context.completes_step and stored:
                stored[-1] = BOTH
            else:
                stored.append(halves)

        return hook

    def _kept_rows(self, context: CaptureContext) -> tuple[tuple[str, ...], slice | None]:
        """The halves of the current call kept at capture time, and their rows (None: all rows).

        A call holding one half keeps it whatever ``halves`` asks: whether it is the cond half, or the
        uncond half of a step run as two calls, is known only at the next call (see
        :mod:`cemaps.hooks.guidance`); :meth:`collect` keeps the asked halves.

        Raises:
            ConfigError: ``halves="uncond"`` and a pipeline call runs without guidance from its first step.
        """
        halves, generation = context.call_halves, context.generation
        if halves == COND:
            if self.settings.halves == "uncond" and context.step_index == 0 and guidance_flag(context.pipe) is False:
                self.kept_halves(halves)  # raises: this pipeline call has no unconditional half
            return halves, None
        keep = self.kept_halves(halves)
        if len(keep) == len(halves):
            return halves, None
        first = halves.index(keep[0]) * generation.batch_size  # diffusers stacks (uncond, cond)
        return keep, slice(first, first + generation.batch_size)

    def _reduction(self, generation: Generation, rows: slice | None) -> Reduction:
        return Reduction(
            rows=rows,
            mean_heads=self.settings.heads == "mean",
            tokens=self._token_limit(generation),
            spatial=self.settings.spatial,
            dtype=DTYPES[self.settings.dtype],
        )

    def _lengths(self, generation: Generation) -> list[int | None]:
        """Tokens kept per image: its prompt's (None: all, or the tokens are unknown)."""
        if self.settings.tokens != "prompt":
            return [None] * generation.batch_size
        return generation.prompt_lengths(getattr(self._tokenizer, "eos_token_id", None))

    def _token_limit(self, generation: Generation) -> int | None:
        """Tokens kept at capture time: the longest prompt of the batch (None: all)."""
        if generation.index not in self._limits:
            lengths = self._lengths(generation)
            self._limits[generation.index] = None if None in lengths else max(lengths)  # type: ignore[type-var]
        return self._limits[generation.index]

    def kept_halves(self, halves: tuple[str, ...]) -> tuple[str, ...]:
        wanted = {"cond": ("cond",), "uncond": ("uncond",), "both": ("uncond", "cond")}[self.settings.halves]
        keep = tuple(h for h in halves if h in wanted)
        if not keep:
            raise ConfigError(
                f"capture setting halves={self.settings.halves!r}: this generation ran without "
                "classifier-free guidance, so only the 'cond' half exists"
            )
        return keep

    def collect(self, context: CaptureContext) -> list[dict[str, LabelledArray]]:
        """Per generated image, in order: ``{layer: LabelledArray[token, step, half, head, y, x]}``.

        Coordinates of each array: ``step`` (steps captured, 0 = the first step run),
        ``schedule_index`` and ``timestep`` (per captured step), ``half``, ``token`` (the
        image's prompt tokens; None labels when the prompt was given as embeddings),
        ``uncond_token`` (the negative prompt's tokens at the same positions, when the
        uncond half is kept and known), ``prompt`` and ``generation`` (one value each: the
        image's prompt within its pipeline call, and which pipeline call), ``token_features``
        (the text encoders whose features the token axis carries, e.g. both of SDXL's), ``step_halves``
        (per captured step, the halves its UNet call(s) held: ``"uncond+cond"`` or ``"cond"``; a kept half
        a step did not have, after a callback turned guidance off, is NaN).

        Raises:
            RuntimeError: a selected layer did not run at every captured step.
        """
        if self._dit is not None:
            return self._dit.collect()
        records: list[dict[str, LabelledArray]] = []
        for generation in context.generations:
            steps = self._captured.get(generation.index, [])
            had = {half for s in steps for half in generation.step_halves[s]}
            halves = self.kept_halves(tuple(h for h in BOTH if h in had) or generation.halves)
            stored = self._stored.get(generation.index, [])
            stacked = {}
            for name, slot in self._slots.items():
                per_step = slot.maps.get(generation.index, [])
                if len(per_step) != len(steps):
                    raise RuntimeError(f"layer {name!r} ran {len(per_step)} of {len(steps)} captured steps")
                if not steps:
                    continue
                maps = rearrange(
                    stack_steps(per_step, stored, halves, generation.batch_size),
                    "step half image head (y x) token -> image token step half head y x",
                    y=slot.grid[0],
                )
                stacked[name] = maps.cpu().numpy()
            if not stacked:  # no selected step ran (e.g. the loop was interrupted first): records without maps
                records.extend({} for _ in range(generation.batch_size))
                continue
            lengths = self._lengths(generation)
            step_coords = {
                "step": list(steps),
                "schedule_index": [generation.schedule_indices[s] for s in steps],
                "timestep": [generation.timesteps[s] for s in steps],
                "half": list(halves),
                # the halves each step had: a callback may turn guidance off mid-run (NaN maps where a half is missing)
                "step_halves": ["+".join(generation.step_halves[s]) for s in steps],
            }
            for i in range(generation.batch_size):
                prompt = generation.prompt_of_image(i)
                kept = lengths[i] if lengths[i] is not None else next(iter(stacked.values())).shape[1]
                coords: dict[str, Any] = {
                    **step_coords,
                    "token": self._token_labels(generation.token_ids, prompt, kept),
                    "prompt": [prompt],
                    "generation": [generation.index],
                    "token_features": self._token_features,
                }
                if "uncond" in halves and generation.negative_token_ids is not None:
                    coords["uncond_token"] = self._token_labels(generation.negative_token_ids, prompt, kept)
                records.append(
                    {
                        name: LabelledArray(np.ascontiguousarray(maps[i, :kept]), AXES, coords)
                        for name, maps in stacked.items()
                    }
                )
        for slot in self._slots.values():
            slot.maps.clear()
        return records

    def _token_labels(self, token_ids: np.ndarray | None, prompt: int, kept: int) -> list[str | None]:
        if token_ids is None or self._tokenizer is None:
            return [None] * kept
        return self._tokenizer.convert_ids_to_tokens([int(t) for t in token_ids[prompt][:kept]])
