"""Attention shift on arrays: spatial distributions, Jensen-Shannon divergence, reduction.

The pure functions behind :mod:`cemaps.analysis.shift.attention_shift` (whose docstring gives the
formula and why it is not ``scipy.spatial.distance.jensenshannon``); the store pass there
streams records through them. No I/O here.

Example:
    >>> import numpy as np
    >>> p = np.array([[0.5, 0.5, 0.0]]); q = np.array([[0.0, 0.5, 0.5]])
    >>> round(float(js_divergence(p, q)[0]), 3)
    0.5
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from cemaps.errors import ConfigError
from cemaps.labelled import CROSS_ATTENTION_AXES as MAP_AXES

REDUCIBLE_AXES = ("token", "step")
# x * log2(x / m) is 0 at x = 0; clamping the ratio keeps 0 * log2(0) from becoming NaN
# (float16 maps underflow to exact zeros).
_TINY = float(torch.finfo(torch.float32).tiny)


def _check_axes(axes: Sequence[str], ndim: int, halves: Sequence[str], half: str) -> tuple[list[int], int]:
    """(permutation to MAP_AXES order, index of ``half``), or a ConfigError naming what is wrong."""
    axes = tuple(axes)
    if sorted(axes) != sorted(MAP_AXES):
        raise ConfigError(f"attention map axes {axes}; expected a permutation of {MAP_AXES}")
    if ndim != len(axes):
        raise ConfigError(f"attention map has {ndim} dims but axes {axes} name {len(axes)}")
    halves = list(halves)
    if half not in halves:
        raise ConfigError(f"half {half!r} is not among the captured halves {halves}; expected one of them")
    return [axes.index(name) for name in MAP_AXES], halves.index(half)


def _spatial(maps: torch.Tensor, permutation: list[int], half_index: int, n_halves: int) -> torch.Tensor:
    """[token, step, y*x] float32 spatial distributions from maps in any axis order (see spatial_distributions)."""
    ordered = maps.permute(*permutation)
    if ordered.shape[2] != n_halves:
        raise ConfigError(f"attention map has {ordered.shape[2]} halves but {n_halves} are listed")
    chosen = ordered[:, :, half_index].flatten(3)  # [token, step, head, y*x]
    # heads first: a head-averaged map is what the layer attends to as a whole
    spatial = chosen[:, :, 0].float() if chosen.shape[2] == 1 else chosen.float().mean(dim=2)
    return spatial / spatial.sum(dim=-1, keepdim=True)


def spatial_distributions(
    maps: np.ndarray, axes: Sequence[str], halves: Sequence[str], half: str = "cond"
) -> np.ndarray:
    """Each token's map at each step as a probability distribution over space.

    Args:
        maps: cross-attention probabilities whose axes are named by ``axes``
            (a permutation of ``("token", "step", "half", "head", "y", "x")``).
        axes: the name of each axis of ``maps``.
        halves: the CFG halves along the ``half`` axis, e.g. ``["uncond", "cond"]``.
        half: which half to use.

    Returns:
        float32 [token, step, y*x]; heads averaged; each row sums to 1 (NaN where a map sums to 0).
    """
    maps = np.asarray(maps)
    permutation, half_index = _check_axes(axes, maps.ndim, halves, half)
    return _spatial(torch.from_numpy(maps), permutation, half_index, len(halves)).numpy()


def _js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    mixture = (p + q).mul_(0.5).clamp_(min=_TINY)
    ratio = p / mixture
    complement = 2.0 - ratio  # q / m, since p / m + q / m = 2: one division instead of two
    kl_p = torch.linalg.vecdot(p, torch.log2(ratio.clamp_(min=_TINY)))
    kl_q = torch.linalg.vecdot(q, torch.log2(complement.clamp_(min=_TINY)))
    # Identical rows give exactly 0; rounding may leave -1e-9, which is 0.
    return ((kl_p + kl_q) * 0.5).clamp_(0.0, 1.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence, base 2, between distributions along the last axis.

    Args:
        p: [..., n] probabilities, each row summing to 1.
        q: same shape as ``p``.

    Returns:
        float32 [...] in [0, 1]; NaN where a row of p or q holds NaN.
    """
    p, q = np.asarray(p, dtype=np.float32), np.asarray(q, dtype=np.float32)
    if p.shape != q.shape:
        raise ConfigError(f"distributions have shapes {p.shape} and {q.shape}; expected equal shapes")
    return _js_divergence(torch.from_numpy(p), torch.from_numpy(q)).numpy()


def reduce_shift(per_token_step: np.ndarray, reduce: Sequence[str] = REDUCIBLE_AXES) -> np.ndarray:
    """Averages a [token, step] shift over the named axes, skipping NaN (maps that summed to 0).

    Returns:
        0-d for ("token", "step"), [token] for ("step",), [step] for ("token",), the input for ().
    """
    axis = _reduce_axes(reduce)
    if not axis:
        return np.asarray(per_token_step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice averages to NaN, as it should
        return np.asarray(np.nanmean(per_token_step, axis=axis))


def _reduce_axes(reduce: Sequence[str]) -> tuple[int, ...]:
    reduce = tuple(reduce)
    if any(name not in REDUCIBLE_AXES for name in reduce) or len(set(reduce)) != len(reduce):
        raise ConfigError(f"reduce={reduce}; expected distinct names from {REDUCIBLE_AXES}")
    return tuple(REDUCIBLE_AXES.index(name) for name in reduce)


def attention_shift(
    base: np.ndarray,
    personalized: np.ndarray,
    axes: Sequence[str],
    halves: Sequence[str],
    half: str = "cond",
    reduce: Sequence[str] = REDUCIBLE_AXES,
) -> np.ndarray:
    """Jensen-Shannon divergence between base and personalized spatial maps of the same tokens.

    Args:
        base: the base model's cross-attention probabilities, axes named by ``axes``
            (token, step, half, head, y, x in any order); heads are averaged first.
        personalized: its personalized twin's (same prompt, seed and shape).
        axes: axis names of both arrays.
        halves: the CFG halves along ``half``, e.g. ``["cond"]``.
        half: which CFG half to compare.
        reduce: which of (token, step) to average over.

    Returns:
        float in [0, 1]: 0-d by default; [token] for ``reduce=("step",)``;
        [step] for ``reduce=("token",)``; [token, step] for ``reduce=()``.
    """
    base, personalized = np.asarray(base), np.asarray(personalized)
    if base.shape != personalized.shape:
        raise ConfigError(
            f"base maps have shape {base.shape} but personalized {personalized.shape}; "
            "expected twins of the same prompt and seed"
        )
    _reduce_axes(reduce)
    p = spatial_distributions(base, axes, halves, half)
    q = spatial_distributions(personalized, axes, halves, half)
    return reduce_shift(js_divergence(p, q), reduce)
