"""Cross-attention maps scored as segmentations against the judge's object masks (mIoU).

DAAM's evaluation [Tang et al. 2023, "What the DAAM"]: a word's heat map is upsampled to
the image, normalised to [0, 1] by its maximum and thresholded at tau = 0.4, and the
binary map is compared with the object's mask by IoU. Here the mask comes from the pixel
judge (the generated object's colour segment), so the check needs no annotation.

Example:
    >>> heat = np.zeros((16, 16)); heat[4:8, 4:8] = 1.0
    >>> mask = np.zeros((32, 32), dtype=bool); mask[8:16, 8:16] = True
    >>> round(iou(heatmap_mask(heat, 32), mask), 2)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DAAM_THRESHOLD = 0.4


def heatmap_mask(heatmap: np.ndarray, size: int, threshold: float = DAAM_THRESHOLD) -> np.ndarray:
    """Bilinear upsampling of a [h, w] map to [size, size], max-normalised, thresholded (bool)."""
    tensor = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    up = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    up = up - up.min()
    peak = up.max()
    return up >= threshold * peak if peak > 0 else np.zeros((size, size), dtype=bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def word_token_positions(tokens: Sequence[str], word: str) -> list[int]:
    """Positions of a word's BPE tokens in a captured token list (CLIP BPE marks word ends with ``</w>``)."""
    target = word.lower() + "</w>"
    return [i for i, token in enumerate(tokens) if token == target]


def word_heatmap(maps: np.ndarray, axes: Sequence[str], positions: Sequence[int]) -> np.ndarray:
    """A word's [y, x] heat map: the mean over its tokens, captured steps, guidance halves and heads.

    Args:
        maps: one image's probabilities of one layer, axes ``(token, step, half, head, y, x)``.
        axes: the axis names of ``maps``.
        positions: token positions of the word.
    """
    array = np.asarray(maps, dtype=np.float32)
    token_axis = list(axes).index("token")
    selected = np.take(array, list(positions), axis=token_axis)
    keep = [list(axes).index("y"), list(axes).index("x")]
    reduce = tuple(i for i in range(array.ndim) if i not in keep)
    return selected.mean(axis=reduce)


def layer_ious(
    record: dict, words: Sequence[str], mask: np.ndarray, probe_prefix: str = "cross_attention/"
) -> dict[str, dict[str, float]]:
    """IoU per layer (plus ``"all layers"``: maps upsampled and averaged first) of each word's map with ``mask``.

    Args:
        record: one image's captured arrays, ``{"cross_attention/<layer>": LabelledArray}``
            (:meth:`cemaps.hooks.CaptureRun.records`).
        words: e.g. ``["red", "circle"]``; a word missing from the tokens is skipped.
        mask: bool [H, W], the object's mask.

    Returns:
        ``{layer: {word: IoU}}``.
    """
    size = mask.shape[0]
    result: dict[str, dict[str, float]] = {}
    combined: dict[str, list[np.ndarray]] = {}
    for key, array in record.items():
        if not key.startswith(probe_prefix):
            continue
        layer = key[len(probe_prefix) :]
        tokens = array.coords["token"]
        for word in words:
            positions = word_token_positions(tokens, word)
            if not positions:
                continue
            heat = word_heatmap(array.values, array.axes, positions)
            result.setdefault(layer, {})[word] = iou(heatmap_mask(heat, size), mask)
            tensor = torch.as_tensor(heat)[None, None]
            up = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
            combined.setdefault(word, []).append(up / max(float(up.max()), 1e-12))
    for word, heats in combined.items():
        result.setdefault("all layers", {})[word] = iou(heatmap_mask(np.mean(heats, axis=0), size), mask)
    return result
