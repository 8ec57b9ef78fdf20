"""What a :class:`~cemaps.probes.CrossAttentionProbe` keeps: its settings, checked when made.

The settings are the store's capture settings (``to_dict``), so a study config, the probe and the
store read one definition. ``is_cross_attention`` says which UNet layers the probe selects from.

Example:
    >>> CrossAttentionSettings(timesteps=3, halves="both").to_dict()["halves"]
    'both'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from cemaps.errors import ConfigError
from cemaps.hooks.steps import StepSpec

DTYPES = {"float16": torch.float16, "float32": torch.float32}


def is_cross_attention(name: str, module: nn.Module) -> bool:
    """Whether ``module`` is a UNet cross-attention layer (diffusers' ``Attention`` with ``is_cross_attention``)."""
    return isinstance(module, Attention) and bool(getattr(module, "is_cross_attention", False))


@dataclass(frozen=True)
class CrossAttentionSettings:
    """What a :class:`CrossAttentionProbe` keeps; stored as the store's capture settings.

    Attributes:
        layers: ``"all"`` (every layer that attends to text: the UNet's ``attn2``; a DiT's cross, joint
            and single-stream attention), a glob, a list of module paths, or a predicate over them.
        timesteps: "all", N evenly spaced steps, or explicit step indices, all counted over
            the steps (UNet calls) a generation runs from its first call to the end of the
            schedule (see :mod:`cemaps.hooks.steps`).
        heads: "mean" (average over heads after the softmax) or "all".
        tokens: "prompt" (the prompt's tokens incl. start and end) or "all".
        spatial: "native" or the largest side kept; larger maps are average-pooled.
        dtype: "float16" or "float32" of the stored probabilities.
        halves: guidance halves kept: "cond", "uncond" or "both".
    """

    layers: Any = "all"
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
            "dtype": (self.dtype, tuple(DTYPES)),
            "halves": (self.halves, ("cond", "uncond", "both")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"capture setting {key}={value!r}: expected one of {', '.join(allowed)}")
        if self.spatial != "native" and (
            isinstance(self.spatial, bool) or not isinstance(self.spatial, int) or self.spatial < 1
        ):
            raise ConfigError(f"capture setting spatial={self.spatial!r}: expected 'native' or a positive integer")

    def to_dict(self) -> dict[str, Any]:
        layers = (
            self.layers
            if isinstance(self.layers, str)
            else (list(self.layers) if not callable(self.layers) else getattr(self.layers, "__name__", "callable"))
        )
        timesteps = self.timesteps if isinstance(self.timesteps, (str, int)) else list(self.timesteps)
        return {
            "layers": layers,
            "timesteps": timesteps,
            "heads": self.heads,
            "tokens": self.tokens,
            "spatial": self.spatial,
            "dtype": self.dtype,
            "halves": self.halves,
        }
