"""The text block of a joint-attention softmax, computed in chunks of queries.

In a multimodal DiT (SD3's ``JointTransformerBlock``, Flux's double- and single-stream
blocks) image and text tokens attend together: each image query's softmax runs over the
image keys and the text keys at once. The text-attention map of such a layer is the
image-query x text-key block of that softmax, with the whole row's denominator::

    P[q, t] = exp(s[q, t]) / (sum_t' exp(s[q, t']) + sum_i exp(s[q, i])),   s = q.k / sqrt(d)

(``d`` the head dimension: the scale ``F.scaled_dot_product_attention`` uses when none is
given, as SD3's and Flux's processors call it). Its row sum over the text keys,
``text_mass[q]``, is the share of query ``q``'s attention that goes to text; the rest goes to
image tokens. Slicing the text columns out of a softmax taken over text keys alone (or
renormalising them) would describe a different attention than the one the model used.

Rows are computed ``chunk`` queries at a time with a log-sum-exp over each full row, so the
memory is bounded by ``chunk x keys`` per head, never ``queries x keys``.
"""

from __future__ import annotations

import math

import torch

# Largest [rows x heads x chunk x keys] float32 logits held at once (64 MiB).
MAX_CHUNK_VALUES = 1 << 24


def joint_text_block(
    query: torch.Tensor,
    key: torch.Tensor,
    text: slice,
    kept: torch.Tensor | None = None,
    *,
    mean_heads: bool = False,
    max_values: int = MAX_CHUNK_VALUES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-query x text-key probabilities of a joint softmax, and each query's text mass.

    Args:
        query: ``[batch, head, queries, d]`` image queries as the layer uses them (after its QK
            norm and rotary embedding).
        key: ``[batch, head, keys, d]`` all keys of the joint sequence (image and text), likewise.
        text: where the text keys are in ``key`` (SD3: after the image keys; Flux: before them).
        kept: positions within the text keys to return (None: all of them, in order).
        mean_heads: average over heads after the softmax (the head axis is kept, of length 1).
        max_values: bound on the float32 logits held at once; sets the query chunk.

    Returns:
        ``block`` ``[batch, head, queries, kept]`` and ``text_mass`` ``[batch, head, queries]``,
        float32. ``text_mass`` sums the probabilities of every text key, kept or not.
    """
    batch, heads, queries, dim = query.shape
    keys = key.shape[2]
    first, stop, _ = text.indices(keys)
    scale = 1.0 / math.sqrt(dim)
    key32 = key.float()
    chunk = max(1, max_values // max(1, batch * heads * keys))
    blocks, masses = [], []
    key_t = key32.transpose(-1, -2)
    for start in range(0, queries, chunk):
        # the scale goes on the (smaller) queries; one exp pass over the row, in place: the softmax of the
        # whole row, of which only the text columns are kept
        weights = torch.matmul(query[:, :, start : start + chunk].float() * scale, key_t)
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        block = weights[..., first:stop] / weights.sum(dim=-1, keepdim=True)
        mass = block.sum(dim=-1)
        if kept is not None:
            block = block.index_select(-1, kept.to(block.device))
        if mean_heads:
            block, mass = block.mean(dim=1, keepdim=True), mass.mean(dim=1, keepdim=True)
        blocks.append(block)
        masses.append(mass)
    return torch.cat(blocks, dim=2), torch.cat(masses, dim=2)
