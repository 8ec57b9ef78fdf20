"""Did a personalization learn its subject? The toy subjects recognised from pixels only.

Each toy subject (:data:`cemaps.toyworld.suite.TOY_SUBJECTS`) is a combination the base world
never shows as one unit, so the pixel judge (:mod:`cemaps.toyworld.judge`) can tell it apart:

- ``toyface`` ("an orange face wearing a blue hat"): an orange object with a blue object whose
  centroid is above it (``dy`` in [2, 14] px) and horizontally within 5 px;
- ``toyobject`` ("a purple ring with a yellow cross inside"): a purple object with a yellow object
  whose centroid lies within 4 px of the purple one's;
- ``toystyle`` ("shapes drawn in brown checkers on white"): a white background and a textured
  shape: the foreground's silhouette (closed over 2-px gaps, holes filled, >= 30 px) is at most
  80 % painted, and >= 30 % of the painted pixels are brown. The toy VAE turns 2-px checkers
  into fine diagonal stripes, so the detector asks for texture, not for checkers: a brown
  *striped* shape on white counts too (the base model's rate with the class word is the floor).

Thresholds are in pixels at 32x32 (scaled with the image). The detectors were set on the
renderer's own images of each subject (:meth:`~cemaps.toyworld.suite.ToySubject.images`), which
they all recognise, and on those images passed through the toy VAE (encode, decode): 1.0 / 0.94 /
1.0 of 16; each recognises none of the other subjects' renders
(``tests/toyworld/test_toyworld_ground_truth.py``).

Example:
    >>> from cemaps.toyworld.suite import TOY_SUBJECTS
    >>> import numpy as np
    >>> face = np.asarray(TOY_SUBJECTS[0].images(1)[0])
    >>> shows_subject("toyface", face), shows_subject("toyobject", face)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from cemaps.toyworld.judge import (
    FOREGROUND_DISTANCE,
    JudgedObject,
    background_colour,
    colour_labels,
    judge_image,
    nearest_background,
    palette_labels,
)
from cemaps.toyworld.world import IMAGE_SIZE

SUBJECT_RATE_TARGET = 0.7  # issue 11: the token renders its subject in >= 70 % of images
_HAT_ABOVE = (2.0, 14.0)
_HAT_SIDEWAYS = 5.0
_CROSS_INSIDE = 4.0
_STYLE_MIN_PIXELS = 30  # silhouette pixels at 32x32
_STYLE_GAP = 2  # px: the checkers' cells (closing bridges gaps up to this wide)
_STYLE_BROWN_SHARE = 0.3
_STYLE_MAX_PAINTED = 0.8  # a filled shape paints ~all of its silhouette; checkers (and stripes) about half


def _objects(objects: list[JudgedObject], colour: str) -> list[JudgedObject]:
    return [o for o in objects if o.colour == colour]


def _scale(image: np.ndarray) -> float:
    return image.shape[0] / IMAGE_SIZE


def _face_with_hat(image: np.ndarray) -> bool:
    objects, scale = judge_image(image), _scale(image)
    for face in _objects(objects, "orange"):
        for hat in _objects(objects, "blue"):
            dx, dy = hat.centroid[0] - face.centroid[0], face.centroid[1] - hat.centroid[1]
            if abs(dx) <= _HAT_SIDEWAYS * scale and _HAT_ABOVE[0] * scale <= dy <= _HAT_ABOVE[1] * scale:
                return True
    return False


def _ring_with_cross(image: np.ndarray) -> bool:
    objects, scale = judge_image(image), _scale(image)
    for ring in _objects(objects, "purple"):
        for cross in _objects(objects, "yellow"):
            if np.hypot(*np.subtract(ring.centroid, cross.centroid)) <= _CROSS_INSIDE * scale:
                return True
    return False


def _brown_texture_on_white(image: np.ndarray) -> bool:
    if nearest_background(image) != "white":
        return False
    scale = _scale(image)
    pixels = image.astype(float)
    foreground = np.linalg.norm(pixels - background_colour(image), axis=-1) > FOREGROUND_DISTANCE
    radius = max(1, round(_STYLE_GAP * scale))
    silhouette = ndimage.binary_fill_holes(ndimage.binary_closing(foreground, np.ones((2 * radius + 1,) * 2)))
    if silhouette.sum() < _STYLE_MIN_PIXELS * scale**2:
        return False
    names = [name for name, _ in palette_labels()]
    labels = colour_labels(image)[foreground]
    brown = np.isin(labels, [i for i, name in enumerate(names) if name == "brown"]).sum()
    painted = foreground.sum() / silhouette.sum()
    return bool(brown >= _STYLE_BROWN_SHARE * foreground.sum() and painted <= _STYLE_MAX_PAINTED)


DETECTORS: dict[str, Callable[[np.ndarray], bool]] = {
    "toyface": _face_with_hat,
    "toyobject": _ring_with_cross,
    "toystyle": _brown_texture_on_white,
}


def shows_subject(subject_id: str, image: np.ndarray) -> bool:
    """Whether an RGB image shows the toy subject ``subject_id``, judged from its pixels.

    Args:
        subject_id: one of :data:`DETECTORS` (``toyface``, ``toyobject``, ``toystyle``).
        image: uint8 [H, W, 3].

    Raises:
        KeyError: ``subject_id`` is not a toy subject.
        ValueError: ``image`` is not uint8 [H, W, 3].
    """
    if subject_id not in DETECTORS:
        raise KeyError(f"subject {subject_id!r} is not a toy subject; expected one of {', '.join(DETECTORS)}")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image has dtype {array.dtype} and shape {list(array.shape)}; expected uint8 [H, W, 3]")
    return DETECTORS[subject_id](array)
