"""The attention-shift pass's inner loop: JS divergence of base distributions against raw
personalized maps, block by block, in few passes over memory (see
:mod:`cemaps.analysis.shift.attention_shift` for the definition; ``_js_divergence`` there is the
reference arithmetic, and tests/analysis/shift/test_shift_kernel.py checks this one against scipy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

# x * ln(x / m) is 0 at x = 0; clamping the ratio keeps 0 * ln(0) from becoming NaN
# (float16 maps underflow to exact zeros).
_TINY = float(torch.finfo(torch.float32).tiny)

_LN2 = float(np.log(2.0))


class Workspace:
    """Reusable buffers for the store pass: allocating fresh ~0.5-3 MiB temporaries per block
    and chunk cost as much as the arithmetic on them (each is new memory the kernel must fault
    in; 0.65 vs 0.24 ns per value for an add into a fresh vs a reused tensor)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        size = int(np.prod(shape))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            # a quarter more than asked, so chunks a few tokens longer do not reallocate
            buffer = self._buffers[key] = torch.empty(max(size + size // 4, 1 << 17), dtype=dtype)
        return buffer[:size].view(tuple(shape))


def shift_block(
    p: torch.Tensor, maps: torch.Tensor, permutation: list[int], half_index: int, workspace: Workspace
) -> torch.Tensor:
    """JS divergence, base 2, [token, step], of base distributions ``p`` against raw personalized ``maps``.

    The same divergence as ``attention_shift._js_divergence(p, attention_shift._spatial(maps, ...))`` in fewer passes over memory:
    the personalized maps are never normalised (q = Q / S enters the mixture through one
    ``addcmul`` and KL(q||m) through a per-row factor 1/S), natural logs (cheaper than log2 in
    torch) are scaled to bits once per row, and temporaries live in ``workspace``.

    Args:
        p: float32 [token, step, y*x] base distributions (rows sum to 1).
        maps: the personalized maps of the same tokens, axes permuted to (token, step, half, head, y, x) by ``permutation``.
    """
    chosen = maps.permute(*permutation)[:, :, half_index].flatten(3)  # [token, step, head, y*x]
    raw = workspace.get("q", p.shape)
    if chosen.shape[2] == 1:
        raw.copy_(chosen[:, :, 0])  # float16 -> float32 straight into the buffer
    else:
        torch.mean(chosen.float(), dim=2, out=raw)
    inverse_total = raw.sum(dim=-1, keepdim=True).reciprocal_()  # 1/S; inf where a map sums to 0 -> NaN below
    total = torch.addcmul(p, raw, inverse_total, out=workspace.get("m", p.shape)).clamp_(min=_TINY)  # p + q = 2m
    ratio = torch.div(p, total, out=total).mul_(2.0).clamp_(min=_TINY)  # p / m (the same rounding: 2 is exact)
    logs = torch.log(ratio, out=workspace.get("log", p.shape))
    kl_p = torch.mul(p, logs, out=logs).sum(dim=-1)
    complement = ratio.neg_().add_(2.0).clamp_(min=_TINY).log_()  # ln(q / m), since p / m + q / m = 2
    kl_q = torch.mul(raw, complement, out=complement).sum(dim=-1).mul_(inverse_total.squeeze(-1))
    # Identical rows give exactly 0; rounding may leave -1e-9, which is 0.
    return kl_p.add_(kl_q).mul_(0.5 / _LN2).clamp_(0.0, 1.0)


def blocks(
    twins: list[torch.Tensor],
    personalized: list[np.ndarray],
    counts: list[int],
    token_axis: int,
    dtype: torch.dtype,
    workspace: Workspace,
    block_values: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(base distributions, personalized maps) of consecutive whole records, ~``block_values`` values each."""
    row_values = max(1, twins[0][0].numel())
    start = 0
    while start < len(counts):
        stop, rows = start + 1, counts[start]
        while stop < len(counts) and (rows + counts[stop]) * row_values <= block_values:
            rows += counts[stop]
            stop += 1
        shape = list(personalized[start].shape)
        shape[token_axis] = rows
        maps = workspace.get("maps", shape, dtype)
        np.concatenate(personalized[start:stop], axis=token_axis, out=maps.numpy())
        yield torch.cat(twins[start:stop], out=workspace.get("p", (rows, *twins[start].shape[1:]))), maps
        start = stop
