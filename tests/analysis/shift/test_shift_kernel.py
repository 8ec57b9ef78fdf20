"""The fused block kernel the store pass uses gives the reference divergence (scipy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

import cemaps.analysis.shift.attention_shift as shift

AXES = ("token", "step", "half", "head", "y", "x")


def block_shift(base: np.ndarray, personalized: np.ndarray, axes=AXES, halves=("cond",), half="cond") -> np.ndarray:
    """What the store pass computes for one block: base distributions against raw personalized maps."""
    permutation, half_index = shift._check_axes(axes, base.ndim, list(halves), half)
    p = shift._spatial(torch.from_numpy(base), permutation, half_index, len(halves))
    return shift._shift_block(p, torch.from_numpy(personalized), permutation, half_index, shift._Workspace()).numpy()


def scipy_reference(base: np.ndarray, personalized: np.ndarray) -> np.ndarray:
    """float64 JS divergence (base 2) of head-averaged, spatially normalised cond maps, [token, step]."""

    def dist(maps: np.ndarray) -> np.ndarray:
        flat = maps[:, :, -1].astype(np.float64).mean(axis=2).reshape(*maps.shape[:2], -1)
        return flat / flat.sum(axis=-1, keepdims=True)

    return jensenshannon(dist(base), dist(personalized), base=2, axis=-1) ** 2


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_block_kernel_matches_scipy(dtype):
    rng = np.random.default_rng(11)
    base = rng.dirichlet(np.ones(64), size=(40, 3)).reshape(40, 3, 1, 1, 8, 8)
    personalized = base * np.exp(0.5 * rng.standard_normal(base.shape))  # unnormalised, as stored
    base, personalized = base.astype(dtype), personalized.astype(dtype)
    np.testing.assert_allclose(
        block_shift(base, personalized), scipy_reference(base, personalized), rtol=1e-4, atol=1e-7
    )


def test_block_kernel_equals_the_reference_kernel_on_float16_maps():
    rng = np.random.default_rng(12)
    base = rng.random((30, 5, 2, 3, 16, 16)).astype(np.float16)  # two halves, three heads
    personalized = (base * rng.uniform(0.8, 1.25, base.shape)).astype(np.float16)
    personalized[0, 0] = base[0, 0]  # an identical row: exactly 0
    base[1, :, :, :, :4] = 0.0  # structural zeros in both
    personalized[1, :, :, :, :4] = 0.0
    permutation, half_index = shift._check_axes(AXES, 6, ["uncond", "cond"], "cond")
    p = shift._spatial(torch.from_numpy(base), permutation, half_index, 2)
    q = shift._spatial(torch.from_numpy(personalized), permutation, half_index, 2)
    reference = shift._js_divergence(p, q).numpy()
    fused = block_shift(base, personalized, halves=("uncond", "cond"))
    np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fused, scipy_reference(base, personalized), rtol=1e-4, atol=1e-7)
    assert np.all(fused[0, 0] == 0.0)


def test_block_kernel_zero_probabilities_and_empty_maps():
    base = np.array([0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0]).reshape(2, 1, 1, 1, 1, 4)
    personalized = np.array([0.0, 0.25, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0]).reshape(2, 1, 1, 1, 1, 4)  # 2nd sums to 0
    result = block_shift(base, personalized)
    assert result[0, 0] == pytest.approx(jensenshannon([0, 0.5, 0.5, 0], [0, 0.25, 0.75, 0], base=2) ** 2, abs=1e-6)
    assert np.isnan(result[1, 0])  # as the reference: a map that sums to 0 has no distribution
    disjoint = block_shift(
        np.array([1.0, 0.0]).reshape(1, 1, 1, 1, 1, 2), np.array([0.0, 3.0]).reshape(1, 1, 1, 1, 1, 2)
    )
    assert disjoint[0, 0] == pytest.approx(1.0)


def test_block_kernel_with_permuted_axes():
    rng = np.random.default_rng(13)
    base, personalized = rng.random((4, 2, 1, 1, 4, 4)) + 0.05, rng.random((4, 2, 1, 1, 4, 4)) + 0.05
    order = (4, 0, 5, 2, 1, 3)
    permuted = tuple(AXES[i] for i in order)
    np.testing.assert_allclose(
        block_shift(base.transpose(order), personalized.transpose(order), axes=permuted),
        scipy_reference(base, personalized),
        rtol=1e-4,
        atol=1e-7,
    )
