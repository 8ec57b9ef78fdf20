"""Arrays that carry their axis names (and, optionally, coordinate labels).

Example:
    >>> import numpy as np
    >>> a = LabelledArray(np.zeros((3, 2)), ("token", "step"))
    >>> a.axis("step"), a.shape
    (1, (3, 2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The cross-attention probe's vocabulary, defined once: its name (also the store prefix of
# its arrays, "<probe name>/<layer path>") and the axes of each layer's maps. Kept here, not
# in cemaps.probes, so that analysis and report code can use them without importing torch.
CROSS_ATTENTION = "cross_attention"
CROSS_ATTENTION_PREFIX = f"{CROSS_ATTENTION}/"
CROSS_ATTENTION_AXES = ("token", "step", "half", "head", "y", "x")
# Joint-attention layers also store each query's share of attention on text keys, under
# "<probe name>/<layer path>:text_mass" (module paths never contain ":").
TEXT_MASS_SUFFIX = ":text_mass"
TEXT_MASS_AXES = ("step", "half", "head", "y", "x")


# Depth order of a transformer's block lists (no down/mid/up blocks): Flux runs its double-stream
# ``transformer_blocks`` before its ``single_transformer_blocks``; SD3 and PixArt have only the first.
TRANSFORMER_BLOCK_DEPTH = {"transformer_blocks": 0, "single_transformer_blocks": 1}


def transformer_depth(path: str) -> int:
    """Rank of a module path's block list in a transformer's forward order (0 for anything else)."""
    return TRANSFORMER_BLOCK_DEPTH.get(path.split(".", 1)[0], 0)


def is_attention_map(name: str) -> bool:
    """Whether a store array name is a layer's cross-attention map (not its text mass)."""
    return name.startswith(CROSS_ATTENTION_PREFIX) and not name.endswith(TEXT_MASS_SUFFIX)


@dataclass(frozen=True)
class LabelledArray:
    """A numpy array with a name per axis and optional labels along axes."""

    values: np.ndarray
    axes: tuple[str, ...]
    coords: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != len(self.axes):
            raise ValueError(f"{self.values.ndim}-d array with {len(self.axes)} axis names {self.axes}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def axis(self, name: str) -> int:
        """Position of the axis called ``name``."""
        try:
            return self.axes.index(name)
        except ValueError:
            raise KeyError(f"no axis {name!r}; axes are {self.axes}") from None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)


def stack_images(arrays: Sequence[LabelledArray]) -> LabelledArray:
    """Stack per-image arrays on a new leading ``image`` axis.

    Axes whose length differs between images (e.g. ``token`` when prompts have
    different lengths) are padded with NaN at the end.
    """
    if not arrays:
        raise ValueError("nothing to stack")
    first = arrays[0]
    full = tuple(max(a.shape[i] for a in arrays) for i in range(len(first.axes)))
    ragged = any(a.shape != full for a in arrays)
    dtype = np.result_type(first.values.dtype, np.float16) if ragged else first.values.dtype
    out = np.full((len(arrays), *full), np.nan if ragged else 0, dtype=dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a.values
    coords = {k: v for k, v in first.coords.items() if all(a.coords.get(k) == v for a in arrays)}
    return LabelledArray(out, ("image", *first.axes), coords)
