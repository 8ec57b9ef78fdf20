"""Example user probes: complete, small, and importable (``cemaps capture --probe cemaps.probes.examples:OutputNormProbe``).

A probe is any class with a ``name``, ``attach(pipe, context)`` and ``collect(context)``
(:class:`cemaps.probes.Probe`); nothing registers it. :class:`OutputNormProbe` is the one the README
quotes: copy it to start your own.
"""

from __future__ import annotations

from typing import Any

import torch

from cemaps.errors import CemapsError
from cemaps.hooks import select_modules
from cemaps.hooks.capture import Removable
from cemaps.hooks.context import CaptureContext
from cemaps.labelled import LabelledArray


class OutputNormProbe:
    """The L2 norm of each cross-attention layer's output, per image, step and guidance half.

    Arrays: one per layer (``"<module path>"``, stored as ``"output_norm/<module path>"``), shape
    ``[step, half]`` (every step of the generation; halves ``("uncond", "cond")`` when any step had
    guidance, else ``("cond",)``; a step without a half, e.g. after a callback turned guidance off, is
    NaN there, as ``Generation.step_halves`` says), float32, the norm of the layer's output over all its
    positions and channels for that image.

    Example:
        >>> import torch, cemaps
        >>> from cemaps.probes.examples import OutputNormProbe
        >>> pipe = cemaps.tiny_pipeline(seed=0)
        >>> probe = OutputNormProbe()
        >>> with cemaps.capture(pipe, [probe]) as run:
        ...     _ = pipe(["a red mug", "a cat"], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
        >>> norms = run[probe]["mid_block.attentions.0.transformer_blocks.0.attn2"]
        >>> norms.axes, norms.shape  # 2 images, 4 UNet calls (PNDM's warm-up adds one), 2 halves
        (('image', 'step', 'half'), (2, 4, 2))
    """

    name = "output_norm"

    def __init__(self, layers: str = "*attn2") -> None:
        self.layers = layers
        self.norms: dict[tuple[int, str], list[torch.Tensor]] = {}

    def attach(self, pipe: Any, context: CaptureContext) -> list[Removable]:
        self.norms = {}

        def hook(layer: str):
            def record(module, args, output):
                # context.generation is the pipeline call this UNet call belongs to (set by cemaps before it).
                key = (context.generation.index, layer)
                self.norms.setdefault(key, []).append(output.detach().flatten(1).norm(dim=1).float())  # [unet batch]

            return record

        layers = select_modules(pipe.unet, self.layers)
        return [module.register_forward_hook(hook(layer)) for layer, module in layers.items()]

    def collect(self, context: CaptureContext) -> list[dict[str, LabelledArray]]:
        records = []
        for g in context.generations:
            # Each step's UNet rows are [halves x images], the unconditional half first (diffusers' order);
            # the halves can change from step to step (a callback that turns guidance off) and a step's halves
            # can come as two UNet calls (uncond, then cond): read the rows in call order, step by step.
            halves = ("uncond", "cond") if any("uncond" in h for h in g.step_halves) else ("cond",)
            per_layer = {
                layer: _by_step(torch.cat(v), g.step_halves, halves, g.batch_size, layer)  # [image, step, half]
                for (index, layer), v in self.norms.items()
                if index == g.index
            }
            for i in range(g.batch_size):
                records.append(
                    {
                        layer: LabelledArray(norms[i].numpy(), ("step", "half"), {"half": list(halves)})
                        for layer, norms in per_layer.items()
                    }
                )
        return records


def _by_step(
    rows: torch.Tensor, step_halves: list[tuple[str, ...]], halves: tuple[str, ...], batch: int, layer: str
) -> torch.Tensor:
    """``[image, step, half]`` from the UNet rows of every call in order; NaN where a step lacked a half.

    Raises:
        CemapsError: the rows are not the steps' halves x images (a UNet call this probe cannot read).
    """
    expected = sum(len(h) for h in step_halves) * batch
    if rows.shape[0] != expected:
        raise CemapsError(
            f"output_norm probe, layer {layer}: {rows.shape[0]} UNet rows for {len(step_halves)} steps; "
            f"expected {expected} (the steps' guidance halves x {batch} images)"
        )
    out = torch.full((batch, len(step_halves), len(halves)), float("nan"))
    start = 0
    for step, held in enumerate(step_halves):
        block = rows[start : start + len(held) * batch].view(len(held), batch)
        for position, half in enumerate(held):
            out[:, step, halves.index(half)] = block[position]
        start += len(held) * batch
    return out
