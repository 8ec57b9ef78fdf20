"""Did a personalization learn its subject? The toy subjects recognised from pixels only.

Each toy subject (:data:`cemaps.toyworld.suite.TOY_SUBJECTS`) is a combination the base world
never shows as one unit, so the pixel judge (:mod:`cemaps.toyworld.judge`) can tell it apart:

- ``toyface`` ("an orange face wearing a blue hat"): an orange object with a blue object whose
  centroid is above it (``dy`` in [2, 14] px) and horizontally within 5 px;
- ``toyobject`` ("a purple ring with a yellow cross inside"): a purple object with a yellow object
  whose centroid lies within 4 px of the purple one's;
- ``toystyle`` ("shapes drawn in brown checkers on white"): a white background and brown pixels
  (>= 12 at 32x32) that enclose background holes: filling the holes of the brown mask grows it by
  >= 30 % (checkers and outlines do; a filled brown shape does not).

Thresholds are in pixels at 32x32 (scaled with the image). The detectors were set on the
renderer's own images of each subject (:meth:`~cemaps.toyworld.suite.ToySubject.images`), which
they all recognise (``tests/toyworld/test_toyworld_subject_check.py``), and each recognises
none of the other subjects' renders.

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

from cemaps.toyworld.judge import JudgedObject, colour_labels, judge_image, nearest_background, palette_labels
from cemaps.toyworld.world import IMAGE_SIZE

SUBJECT_RATE_TARGET = 0.7  # issue 11: the token renders its subject in >= 70 % of images
_HAT_ABOVE = (2.0, 14.0)
_HAT_SIDEWAYS = 5.0
_CROSS_INSIDE = 4.0
_STYLE_MIN_PIXELS = 12
_STYLE_HOLE_GROWTH = 1.3


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


def _brown_checkers_on_white(image: np.ndarray) -> bool:
    if nearest_background(image) != "white":
        return False
    names = [name for name, _ in palette_labels()]
    labels = colour_labels(image)
    brown = np.isin(labels, [i for i, name in enumerate(names) if name == "brown"])
    if brown.sum() < _STYLE_MIN_PIXELS * _scale(image) ** 2:
        return False
    filled = ndimage.binary_fill_holes(brown)
    return bool(filled.sum() >= _STYLE_HOLE_GROWTH * brown.sum())


DETECTORS: dict[str, Callable[[np.ndarray], bool]] = {
    "toyface": _face_with_hat,
    "toyobject": _ring_with_cross,
    "toystyle": _brown_checkers_on_white,
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
