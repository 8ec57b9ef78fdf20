"""The toy world's vocabulary and its renderer: small RGB scenes with one mask per object.

A scene is 1-N objects on a plain background. Each object has a shape (or a glyph:
the face for the ``person`` domain, the fish for ``animal``), a colour from a fixed
palette, a size, a centre, and a rendering style. :func:`render` draws it
deterministically with 4x supersampling (anti-aliased edges) and returns the image
and the objects' masks, so every pixel's meaning is known.

Example:
    >>> scene = Scene((ToyObject("circle", "red", "medium", (16.0, 16.0)),))
    >>> image, masks = render(scene)
    >>> image.shape, masks.shape, tuple(int(c) for c in image[16, 16])
    ((32, 32, 3), (1, 32, 32), (220, 40, 40))
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 32
SUPERSAMPLE = 4

# Saturated object colours (RGB). Chosen so that nearest-palette classification is unambiguous.
COLOURS = MappingProxyType(
    {
        "red": (220, 40, 40),
        "orange": (245, 140, 20),
        "yellow": (240, 220, 40),
        "green": (40, 170, 60),
        "cyan": (40, 200, 220),
        "blue": (40, 70, 225),
        "purple": (140, 50, 200),
        "pink": (250, 130, 200),
        "brown": (130, 80, 35),
    }
)
WARM_COLOURS = ("red", "orange", "yellow", "pink")
COOL_COLOURS = ("green", "cyan", "blue", "purple")
# "pale" mixes a colour half-way to white: the calm/delicate abstract words use it.
PALE_MIX = 0.55
BACKGROUNDS = MappingProxyType({"black": (18, 18, 18), "grey": (120, 120, 120), "white": (240, 240, 240)})
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
GLYPHS = ("face", "fish")
KINDS = SHAPES + GLYPHS
# Half-extent (pixels at 32x32) of each size word.
SIZES = MappingProxyType({"small": 4.5, "medium": 6.5, "large": 9.5})
# "checkered" appears in no caption: it is the toy style subject's, for personalization to teach.
STYLES = ("filled", "outline", "striped", "dotted", "checkered")
POSITIONS = MappingProxyType(
    {
        "left": (8.0, 16.0),
        "right": (24.0, 16.0),
        "top": (16.0, 8.0),
        "bottom": (16.0, 24.0),
        "centre": (16.0, 16.0),
    }
)
EXPRESSIONS = ("smiling", "frowning", "sleeping")


@dataclass(frozen=True)
class ToyObject:
    """One object of a scene.

    Attributes:
        kind: a shape of :data:`SHAPES` or a glyph of :data:`GLYPHS`.
        colour: a key of :data:`COLOURS`.
        size: a key of :data:`SIZES`.
        centre: (x, y) in pixels of the 32x32 image.
        style: one of :data:`STYLES`.
        pale: mix the colour half-way to white.
        expression: faces only, one of :data:`EXPRESSIONS`.
        facing: fish only, ``"left"`` or ``"right"``.
    """

    kind: str
    colour: str
    size: str = "medium"
    centre: tuple[float, float] = (16.0, 16.0)
    style: str = "filled"
    pale: bool = False
    expression: str = "smiling"
    facing: str = "right"

    def __post_init__(self) -> None:
        for field, value, known in (
            ("kind", self.kind, KINDS),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, tuple(SIZES)),
            ("style", self.style, STYLES),
            ("expression", self.expression, EXPRESSIONS),
            ("facing", self.facing, ("left", "right")),
        ):
            if value not in known:
                raise ValueError(f"ToyObject.{field} is {value!r}; expected one of {', '.join(known)}")

    @property
    def rgb(self) -> tuple[int, int, int]:
        base = np.array(COLOURS[self.colour], dtype=float)
        if self.pale:
            base = base + PALE_MIX * (255.0 - base)
        return tuple(int(round(c)) for c in base)


@dataclass(frozen=True)
class Scene:
    """Objects drawn in order (later ones on top) on a background of :data:`BACKGROUNDS`."""

    objects: tuple[ToyObject, ...]
    background: str = "black"


def shape_coverage(
    kind: str,
    half_extent: float,
    size: int = IMAGE_SIZE,
    centre: tuple[float, float] | None = None,
    expression: str = "smiling",
    facing: str = "right",
) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage of one shape, and of its glyph details (eyes, mouth), in [0, 1].

    Args:
        kind: a key of :data:`KINDS`.
        half_extent: half the shape's width in pixels of the ``size`` x ``size`` image.
        size: the output side in pixels.
        centre: (x, y) pixel centre; None for the image centre.

    Returns:
        (body, details): float32 [size, size] each. ``details`` are drawn over the body in
        the background colour (a face's eyes and mouth, a fish's eye).
    """
    s = SUPERSAMPLE
    cx, cy = centre if centre is not None else (size / 2, size / 2)
    cx, cy, r = cx * s, cy * s, half_extent * s
    body = Image.new("L", (size * s, size * s), 0)
    details = Image.new("L", (size * s, size * s), 0)
    draw, detail = ImageDraw.Draw(body), ImageDraw.Draw(details)
    if kind in ("circle", "face"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif kind == "square":
        q = 0.85 * r
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=255)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=255)
    elif kind == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + q * np.cos(a), cy - q * np.sin(a)) for q, a in zip(radii, angles, strict=False)], fill=255)
    elif kind == "cross":
        w = 0.32 * r
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
    elif kind == "fish":
        sign = 1 if facing == "right" else -1
        bx = cx + sign * 0.2 * r
        draw.ellipse((bx - 0.8 * r, cy - 0.5 * r, bx + 0.8 * r, cy + 0.5 * r), fill=255)
        tail = cx - sign * 0.55 * r
        draw.polygon([(tail, cy), (cx - sign * r, cy - 0.55 * r), (cx - sign * r, cy + 0.55 * r)], fill=255)
        e = 0.14 * r
        ex = bx + sign * 0.4 * r
        detail.ellipse((ex - e, cy - 0.15 * r - e, ex + e, cy - 0.15 * r + e), fill=255)
    else:
        raise ValueError(f"shape kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    if kind == "face":
        e = 0.16 * r
        for ex in (cx - 0.38 * r, cx + 0.38 * r):
            if expression == "sleeping":
                detail.rectangle((ex - 1.6 * e, cy - 0.3 * r - 0.4 * e, ex + 1.6 * e, cy - 0.3 * r + 0.4 * e), fill=255)
            else:
                detail.ellipse((ex - e, cy - 0.3 * r - e, ex + e, cy - 0.3 * r + e), fill=255)
        width = max(1, int(round(0.14 * r)))
        box = (cx - 0.5 * r, cy - 0.1 * r, cx + 0.5 * r, cy + 0.6 * r)
        if expression == "frowning":
            box = (cx - 0.5 * r, cy + 0.3 * r, cx + 0.5 * r, cy + 1.0 * r)
            detail.arc(box, 200, 340, fill=255, width=width)
        else:
            detail.arc(box, 20, 160, fill=255, width=width)
    return _downsample(body, size), _downsample(details, size)


def _downsample(image: Image.Image, size: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32) / 255.0
    s = array.shape[0] // size
    return array.reshape(size, s, size, s).mean(axis=(1, 3))


def _style_pattern(style: str, size: int, body: np.ndarray, body_hi: np.ndarray | None = None) -> np.ndarray:
    """The fraction of a filled shape's coverage that a rendering style paints, [size, size]."""
    if style == "filled":
        return body
    if style == "outline":
        solid = (body >= 0.5).astype(np.uint8) * 255
        eroded = np.asarray(Image.fromarray(solid).filter(ImageFilter.MinFilter(3)), dtype=np.float32) / 255.0
        return np.clip(body - eroded, 0.0, 1.0)
    y, x = np.mgrid[0:size, 0:size]
    if style == "striped":
        return body * (((x + y) // 2) % 2 == 0)
    if style == "dotted":
        return body * ((x % 3 != 2) & (y % 3 != 2) & (((x // 3) + (y // 3)) % 2 == 0) | ((x % 3 == 0) & (y % 3 == 0)))
    if style == "checkered":
        return body * (((x // 2) + (y // 2)) % 2 == 0)
    raise ValueError(f"style {style!r} is unknown; expected one of {', '.join(STYLES)}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draws a scene; the same scene always gives the same bytes.

    Args:
        scene: the objects and background.
        size: output side in pixels; object geometry is given for 32x32 and scaled.

    Returns:
        (image, masks): uint8 [size, size, 3] RGB, and bool [n_objects, size, size], each
        object's visible silhouette (coverage >= 0.5 minus what later objects cover).
    """
    scale = size / IMAGE_SIZE
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[scene.background]
    background = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    masks = np.zeros((len(scene.objects), size, size), dtype=bool)
    for index, obj in enumerate(scene.objects):
        centre = (obj.centre[0] * scale, obj.centre[1] * scale)
        body, details = shape_coverage(obj.kind, SIZES[obj.size] * scale, size, centre, obj.expression, obj.facing)
        paint = _style_pattern(obj.style, size, body)[..., None]
        canvas = canvas * (1.0 - paint) + np.array(obj.rgb, dtype=np.float32) * paint
        detail = np.minimum(details, body)[..., None]
        canvas = canvas * (1.0 - detail) + background * detail
        silhouette = body >= 0.5
        masks[:index] &= ~silhouette
        masks[index] = silhouette
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), masks


def shape_templates(size: int = 16) -> dict[str, np.ndarray]:
    """Binary silhouettes of every kind, centred and filling a ``size`` x ``size`` box (the judge's templates)."""
    templates = {}
    for kind in KINDS:
        body, _ = shape_coverage(kind, size / 2, size, (size / 2, size / 2))
        templates[kind] = body >= 0.5
    return templates
