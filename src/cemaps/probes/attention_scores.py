"""Cross-attention probabilities of many layers at once, with diffusers' own scoring.

A captured step collects each layer's query and key projections first and scores them
when the UNet call returns. Layers whose scoring is identical (same heads, scale,
upcast flags, no q/k norms, same shapes and dtype) are stacked and scored with one
``attn.get_attention_scores`` call: SD v1.5's 16 ``attn2`` layers fall into 4 such
groups (one per resolution), so a captured step launches a quarter of the tensor
operations it would layer by layer. Each matrix of a batched matmul and each row of a
softmax is computed on its own, so the probabilities are those of the layer alone
(tests check equality).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from einops import rearrange

# Largest [layers x rows x heads x pixels x tokens] scored at once (float32: 128 MiB), so that
# stacking layers never needs much more memory than the largest layer alone.
MAX_GROUP_VALUES = 1 << 25


@dataclass(frozen=True)
class Reduction:
    """What is kept of each layer's probabilities.

    Attributes:
        rows: which rows of the UNet batch (a CFG half) or None for all of them.
        mean_heads: average over heads (after the softmax).
        tokens: keep the first ``tokens`` text positions (None: all).
        spatial: "native" or the largest side kept; larger maps are average-pooled.
        dtype: dtype of the kept maps.
    """

    rows: slice | None
    mean_heads: bool
    tokens: int | None
    spatial: int | str
    dtype: torch.dtype


def _group_key(attn: Attention, query: torch.Tensor, key: torch.Tensor) -> tuple:
    if attn.norm_q is not None or attn.norm_k is not None:
        return ("alone", id(attn))
    return (
        attn.heads,
        float(attn.scale),
        bool(attn.upcast_attention),
        bool(attn.upcast_softmax),
        tuple(query.shape),
        tuple(key.shape),
        query.dtype,
        key.dtype,
        query.device,
    )


def layer_probabilities(
    pending: Sequence[tuple[Attention, torch.Tensor, torch.Tensor]],
    latent_hw: tuple[int, int],
    reduction: Reduction,
) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Kept probabilities of each (attention module, query projection, key projection).

    Returns:
        In the order of ``pending``: ([rows, head, y*x, token] tensor, (y, x) of its maps).
    """
    groups: dict[tuple, list[int]] = {}
    for index, (attn, query, key) in enumerate(pending):
        groups.setdefault(_group_key(attn, query, key), []).append(index)
    out: list[tuple[torch.Tensor, tuple[int, int]] | None] = [None] * len(pending)
    for members in groups.values():
        attn, query, key = pending[members[0]]
        rows = query.shape[0] if reduction.rows is None else len(range(*reduction.rows.indices(query.shape[0])))
        per_layer = rows * attn.heads * query.shape[1] * key.shape[1]
        size = max(1, MAX_GROUP_VALUES // max(1, per_layer))
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            maps, grid = _score(
                attn, [pending[i][1] for i in chunk], [pending[i][2] for i in chunk], latent_hw, reduction
            )
            for position, index in enumerate(chunk):
                out[index] = (maps[position], grid)
    return out  # type: ignore[return-value]


def _stack_rows(tensors: list[torch.Tensor], rows: slice | None) -> torch.Tensor:
    """[layers * kept rows, ...] from per-layer [batch rows, ...] tensors."""
    if len(tensors) == 1:
        only = tensors[0] if rows is None else tensors[0][rows]
        return only
    stacked = torch.stack(tensors)
    if rows is not None:
        stacked = stacked[:, rows]
    return stacked.flatten(0, 1)


def _score(
    attn: Attention,
    queries: list[torch.Tensor],
    keys: list[torch.Tensor],
    latent_hw: tuple[int, int],
    reduction: Reduction,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """[layers, rows, head, y*x, token] kept probabilities of layers that score alike, and (y, x)."""
    layers = len(queries)
    query, key = _stack_rows(queries, reduction.rows), _stack_rows(keys, reduction.rows)
    q, k = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    probs = attn.get_attention_scores(q, k, None)
    pixels = probs.shape[1]
    # head_to_batch_dim puts each row's heads together: "(layer row head) pixel token" -> split.
    # A plain view here: this runs per group at every captured step, and einops costs ~20 us a call.
    probs = probs.view(layers, -1, attn.heads, pixels, probs.shape[-1])  # [layer, row, head, pixel, token]
    if reduction.tokens is not None and reduction.tokens < probs.shape[-1]:
        probs = probs[..., : reduction.tokens]  # before pooling: later tokens are not kept
    if reduction.mean_heads:
        probs = probs.mean(dim=2, keepdim=True, dtype=torch.float32)
    height, width = layer_grid(latent_hw, pixels)
    pooled = pooled_grid(height, width, reduction.spatial)
    if pooled != (height, width):
        # pooled over (y, x) with the tokens as channels; the rearrangement is a view (only where
        # maps are large enough to pool, so the pooling, not einops' per-call cost, dominates)
        heads = probs.shape[2]
        grid = rearrange(probs, "layer row head (y x) token -> (layer row head) token y x", y=height).float()
        probs = rearrange(
            F.adaptive_avg_pool2d(grid, pooled),
            "(layer row head) token y x -> layer row head (y x) token",
            layer=layers,
            head=heads,
        )
    # a copy either way, so the full-size maps are not kept alive
    return probs.to(reduction.dtype, copy=True), pooled


@functools.lru_cache(maxsize=256)
def pooled_grid(height: int, width: int, spatial: int | str) -> tuple[int, int]:
    """(y, x) of a map after pooling to at most ``spatial`` per side (aspect kept)."""
    if spatial == "native" or max(height, width) <= spatial:
        return height, width
    longest = max(height, width)
    return max(1, round(height * spatial / longest)), max(1, round(width * spatial / longest))


@functools.lru_cache(maxsize=256)
def layer_grid(latent_hw: tuple[int, int], pixels: int) -> tuple[int, int]:
    """Height and width of a layer's feature map from the latent size and its pixel count."""
    height, width = latent_hw
    for level in range(8):
        h, w = height, width
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w == pixels:
            return h, w
    raise RuntimeError(f"{pixels} query positions do not match a downsampling of the {height}x{width} latent")
