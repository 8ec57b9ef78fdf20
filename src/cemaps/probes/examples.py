"""Example user probes: complete, small, and importable (``cemaps capture --probe cemaps.probes.examples:OutputNormProbe``).

A probe is any class with a ``name``, ``attach(pipe, context)`` and ``collect(context)``
(:class:`cemaps.probes.Probe`); nothing registers it. :class:`OutputNormProbe` is the one the README
quotes: copy it to start your own.
"""

from __future__ import annotations

from typing import Any

import torch

from cemaps.hooks import select_modules
from cemaps.hooks.capture import Removable
from cemaps.hooks.context import CaptureContext
from cemaps.labelled import LabelledArray


class OutputNormProbe:
    """The L2 norm of each cross-attention layer's output, per image, step and guidance half.

    Arrays: one per layer (``"<module path>"``, stored as ``"output_norm/<module path>"``), shape
    ``[step, half]`` (every UNet call of the generation; halves as labelled by
    ``Generation.halves``: ``("uncond", "cond")`` with guidance, ``("cond",)`` without), float32, the
    norm of the layer's output over all its positions and channels for that image.

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
            per_layer = {
                # the UNet batch is [halves x images], the unconditional half first (diffusers' order)
                layer: torch.stack(v, 1).view(len(g.halves), g.batch_size, -1)  # [half, image, step]
                for (index, layer), v in self.norms.items()
                if index == g.index
            }
            for i in range(g.batch_size):
                records.append(
                    {
                        layer: LabelledArray(norms[:, i].T.numpy(), ("step", "half"), {"half": list(g.halves)})
                        for layer, norms in per_layer.items()
                    }
                )
        return records
