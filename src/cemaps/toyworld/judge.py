"""The pixel judge: what a toy-world image shows, read from its pixels only.

No model is involved (not the toy CLIP, not the training captions): the background is
the median border colour; foreground pixels are those far from it; each is given the
nearest palette colour (saturated or pale) when one is close; objects are the
8-connected components of each colour; an object's position is its mask's centroid
and its shape the renderer template with the highest IoU after both are cropped to
their bounding boxes and resampled to 16x16.

Example:
    >>> from cemaps.toyworld.world import Scene, ToyObject, render
    >>> image, _ = render(Scene((ToyObject("star", "blue", "large", (16.0, 16.0)),)))
    >>> [(o.colour, o.kind) for o in judge_image(image)]
    [('blue', 'star')]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage

from cemaps.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    COOL_COLOURS,
    IMAGE_SIZE,
    KINDS,
    PALE_MIX,
    POSITIONS,
    WARM_COLOURS,
    shape_coverage,
)

TEMPLATE_SIZE = 16
FOREGROUND_DISTANCE = 60.0
PALETTE_DISTANCE = 75.0
MIN_AREA = 6
FACE_HOLE_PIXELS = 2


@dataclass(frozen=True)
class JudgedObject:
    """One object found in an image.

    Attributes:
        colour: palette name; ``pale`` says whether it is the pale variant.
        kind: best-matching template (a shape or glyph name).
        kind_iou: IoU with that template, in [0, 1].
        centroid: (x, y) in pixels.
        area: pixels in the mask.
        mask: bool [H, W].
    """

    colour: str
    pale: bool
    kind: str
    kind_iou: float
    centroid: tuple[float, float]
    area: int
    mask: np.ndarray

    @property
    def position(self) -> str:
        """The nearest of the world's position words (left/right/top/bottom/centre)."""
        scale = self.mask.shape[1] / IMAGE_SIZE
        x, y = self.centroid[0] / scale, self.centroid[1] / scale
        return min(POSITIONS, key=lambda name: np.hypot(x - POSITIONS[name][0], y - POSITIONS[name][1]))


def _palette() -> tuple[np.ndarray, list[tuple[str, bool]]]:
    colours, labels = [], []
    for name, rgb in COLOURS.items():
        base = np.array(rgb, dtype=float)
        colours += [base, base + PALE_MIX * (255.0 - base)]
        labels += [(name, False), (name, True)]
    return np.stack(colours), labels


@cache
def _width_ratio(kind: str) -> float:
    """Bounding-box width of a kind's silhouette divided by its half-extent."""
    body, _ = shape_coverage(kind, 24.0, 64, (32.0, 32.0))
    cols = np.nonzero((body >= 0.5).any(axis=0))[0]
    return (cols.max() - cols.min() + 1) / 24.0


@cache
def _template(kind: str, facing: str, half_extent_tenths: int) -> np.ndarray:
    """A kind's silhouette drawn at the object's own pixel scale (so small glyphs lose their
    details as the generated ones do), cropped and resampled to TEMPLATE_SIZE."""
    half_extent = half_extent_tenths / 10.0
    body, details = shape_coverage(kind, half_extent, IMAGE_SIZE, (16.0, 16.0), facing=facing)
    return _normalise((body >= 0.5) & (details < 0.5))


def _normalise(mask: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    resized = Image.fromarray(crop.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(resized) >= 128


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """The template kind with the highest IoU against ``mask`` (bool [H, W], 32x32 scale), and that IoU."""
    shape = _normalise(mask)
    cols = np.nonzero(mask.any(axis=0))[0]
    width = (cols.max() - cols.min() + 1) * IMAGE_SIZE / mask.shape[1]
    best, best_iou = "circle", -1.0
    for kind in KINDS:
        half_extent_tenths = int(np.clip(round(10 * width / _width_ratio(kind)), 20, 150))
        for facing in ("left", "right") if kind == "fish" else ("right",):
            template = _template(kind, facing, half_extent_tenths)
            iou = float((shape & template).sum() / max(1, (shape | template).sum()))
            if iou > best_iou:
                best, best_iou = kind, iou
    if best in ("circle", "face"):
        # a face is a disc with holes (eyes, mouth); at 32x32 the templates alone barely tell them apart
        holes = int((ndimage.binary_fill_holes(mask) & ~mask).sum())
        best = "face" if holes >= FACE_HOLE_PIXELS else "circle"
    return best, best_iou


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median RGB of the one-pixel border, float [3]."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
    return np.median(border, axis=0)


def colour_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index (``-1``: background or no palette colour near), int [H, W].

    Index ``i`` names ``(colour, pale)`` = :func:`palette_labels` ``()[i]``.
    """
    pixels = image.astype(float)
    background = background_colour(image)
    foreground = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    palette, _ = _palette()
    distances = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)
    nearest = distances.argmin(axis=-1)
    close = distances.min(axis=-1) < PALETTE_DISTANCE
    return np.where(foreground & close, nearest, -1)


def palette_labels() -> list[tuple[str, bool]]:
    return _palette()[1]


def judge_image(image: np.ndarray, min_area: int = MIN_AREA) -> list[JudgedObject]:
    """Objects in an RGB image, largest first.

    Args:
        image: uint8 [H, W, 3].
        min_area: smallest component kept, in pixels at 32x32 (scaled with the image).

    Returns:
        One :class:`JudgedObject` per connected component of one palette colour.
    """
    labels = colour_labels(image)
    names = palette_labels()
    scale = (image.shape[0] / IMAGE_SIZE) ** 2
    colour_of = np.array([name for name, _ in names] + [""])[labels]  # -1 indexes the "" sentinel
    pale_of = np.array([pale for _, pale in names] + [False])[labels]
    found = []
    for colour in sorted(set(colour_of[labels >= 0].tolist())):
        # pale and saturated variants of a colour are one object (its anti-aliased edge on a light background)
        components, count = ndimage.label(colour_of == colour, structure=np.ones((3, 3)))
        for component in range(1, count + 1):
            mask = components == component
            area = int(mask.sum())
            if area < min_area * scale:
                continue
            ys, xs = np.nonzero(mask)
            kind, iou = classify_shape(mask)
            pale = bool(pale_of[mask].mean() > 0.5)
            found.append(JudgedObject(colour, pale, kind, iou, (float(xs.mean()), float(ys.mean())), area, mask))
    return sorted(found, key=lambda o: -o.area)


def _hue_share(image: np.ndarray, wanted: tuple[str, ...]) -> float:
    labels = colour_labels(image)
    names = palette_labels()
    colours = [names[i][0] for i in labels[labels >= 0]]
    # brown is neither warm nor cool (and anti-aliased edges of orange on black fall near it)
    hues = [c for c in colours if c in WARM_COLOURS or c in COOL_COLOURS]
    return float(np.mean([c in wanted for c in hues])) if hues else float("nan")


def warm_share(image: np.ndarray) -> float:
    """Share of warm (red, orange, yellow, pink) among warm and cool foreground pixels; NaN if none."""
    return _hue_share(image, WARM_COLOURS)


def cool_share(image: np.ndarray) -> float:
    """Share of cool (green, cyan, blue, purple) among warm and cool foreground pixels; NaN if none."""
    return _hue_share(image, COOL_COLOURS)


def pale_share(image: np.ndarray) -> float:
    """Share of foreground palette pixels nearest a pale colour; NaN if none."""
    labels = colour_labels(image)
    names = palette_labels()
    pales = [names[i][1] for i in labels[labels >= 0]]
    return float(np.mean(pales)) if pales else float("nan")


def nearest_background(image: np.ndarray) -> str:
    """The background name whose colour is nearest the border median."""
    colour = background_colour(image)
    return min(BACKGROUNDS, key=lambda name: np.linalg.norm(colour - np.array(BACKGROUNDS[name])))
