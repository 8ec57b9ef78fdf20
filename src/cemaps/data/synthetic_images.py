"""Synthetic subject images: small, deterministic stand-ins for a subject's photos.

The demo (``cemaps demo --world tiny``) and the tests personalize the tiny model on these
instead of real photos: a cartoon face, an object silhouette on a table, or a full-frame
texture, by the subject's kind in :func:`cemaps.data.load_subjects`' table.

Example:
    >>> images = synthetic_subject_images("face1", n=2, size=32)
    >>> len(images), images[0].size
    (2, (32, 32))
"""

from __future__ import annotations

import colorsys
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from cemaps.data.suite import load_subjects
from cemaps.errors import ConfigError


def synthetic_subject_images(
    subject_id: str, n: int = 4, size: int = 64, seed: int = 0, *, subjects: pd.DataFrame | None = None
) -> list[Image.Image]:
    """Draws a small, deterministic image set standing in for a subject's photos.

    The demo personalizes the tiny model on these instead of real photos. The
    subject's kind picks the motif (a cartoon face, an object silhouette on a
    table, a full-frame texture); its position among subjects of that kind picks
    the variant, and its position in the table the colours, so every shipped
    subject looks different. ``seed`` only jitters pose and texture between the
    ``n`` images; image ``k`` does not depend on ``n``.

    Args:
        subject_id: a ``subject_id`` of ``subjects``.
        n: number of images (>= 1).
        size: image side in pixels (>= 16).
        seed: jitter seed.
        subjects: the subject table; the shipped ``"subjects15"`` when None.

    Returns:
        ``n`` RGB images of ``size`` x ``size``.
    """
    table = load_subjects() if subjects is None else subjects
    matches = np.flatnonzero(table["subject_id"].to_numpy() == subject_id)
    if len(matches) == 0:
        raise ConfigError(f"unknown subject_id {subject_id!r}; expected one of {', '.join(table['subject_id'])}")
    if n < 1:
        raise ConfigError(f"synthetic_subject_images: n={n}; expected at least 1")
    if size < 16:
        raise ConfigError(f"synthetic_subject_images: size={size}; expected at least 16 pixels")
    position = int(matches[0])
    kind = table["kind"].iloc[position]
    variant = int((table["kind"].iloc[:position] == kind).sum())
    # Golden-ratio hue steps keep neighbouring subjects' colours far apart.
    hue = (position * 0.618033988749895) % 1.0
    rng = np.random.default_rng([seed, zlib.crc32(subject_id.encode("utf-8"))])
    draw_motif = {"face": _draw_face, "object": _draw_object, "style": _draw_style}[kind]
    return [draw_motif(size, variant, hue, rng) for _ in range(n)]


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(red * 255), int(green * 255), int(blue * 255)


@dataclass(frozen=True)
class _Box:
    """A rectangle in pixels; drawing coordinates are given as fractions of it."""

    left: float
    top: float
    width: float
    height: float

    def at(self, x: float, y: float) -> tuple[float, float]:
        return self.left + x * self.width, self.top + y * self.height

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (*self.at(x0, y0), *self.at(x1, y1))


def _jittered_box(size: int, rng: np.random.Generator, width: float, height: float) -> _Box:
    """A ``width`` x ``height`` box (fractions of the image side) near the centre, jittered in place and scale."""
    scale = rng.uniform(0.9, 1.1)
    center_x, center_y = size * (0.5 + rng.uniform(-0.06, 0.06, size=2))
    width, height = width * size * scale, height * size * scale
    return _Box(center_x - width / 2, center_y - height / 2, width, height)


def _disc(center: tuple[float, float], radius: float) -> tuple[float, float, float, float]:
    return center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius


_SKIN_TONES = ((241, 194, 160), (198, 134, 92), (224, 172, 105), (255, 219, 186), (141, 85, 54))


def _draw_face(size: int, variant: int, hue: float, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (size, size), _rgb(hue, 0.25, 0.95))
    draw = ImageDraw.Draw(image)
    hair = _rgb(hue + 0.5, 0.7, 0.35)
    look = variant % 5  # 0 long hair, 1 bald, 2 beard, 3 small round (child) face, 4 hair bun
    width, height = ((0.52, 0.68), (0.52, 0.68), (0.52, 0.68), (0.48, 0.52), (0.48, 0.72))[look]
    face = _jittered_box(size, rng, width, height)
    if look == 0:
        draw.rectangle(face.rect(-0.12, 0.2, 1.12, 1.0), fill=hair)
    if look == 4:
        draw.ellipse(face.rect(0.3, -0.3, 0.7, 0.1), fill=hair)
    draw.ellipse(face.rect(0.0, 0.0, 1.0, 1.0), fill=_SKIN_TONES[look])
    if look in (0, 4):
        draw.chord(face.rect(0.0, 0.0, 1.0, 0.6), 180, 360, fill=hair)
    if look == 2:
        draw.chord(face.rect(0.0, 0.35, 1.0, 1.0), 0, 180, fill=hair)
    for eye_x in (0.32, 0.68):
        draw.ellipse(_disc(face.at(eye_x, 0.45), max(1.0, 0.06 * face.width)), fill=(30, 30, 30))
    smile = rng.uniform(0.02, 0.08)
    draw.arc(face.rect(0.3, 0.72 - smile, 0.7, 0.72 + smile), 0, 180, fill=(150, 40, 40), width=max(1, size // 32))
    return image


def _draw_object(size: int, variant: int, hue: float, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (size, size), (225, 225, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, int(size * 0.7), size, size), fill=(150, 115, 80))  # table top
    color, dark = _rgb(hue, 0.75, 0.85), _rgb(hue, 0.8, 0.4)
    line = max(1, size // 32)
    look = variant % 5  # 0 mug, 1 backpack, 2 toy car, 3 vase, 4 sneaker
    if look == 0:
        mug = _jittered_box(size, rng, 0.36, 0.44)
        draw.ellipse(mug.rect(0.72, 0.2, 1.33, 0.75), outline=color, width=2 * line)  # handle
        draw.rectangle(mug.rect(0.0, 0.0, 1.0, 1.0), fill=color, outline=dark, width=line)
    elif look == 1:
        bag = _jittered_box(size, rng, 0.44, 0.56)
        draw.rounded_rectangle(bag.rect(0.0, 0.0, 1.0, 1.0), radius=0.08 * size, fill=color, outline=dark, width=line)
        draw.rectangle(bag.rect(0.2, 0.55, 0.8, 0.92), fill=dark)  # front pocket
    elif look == 2:
        car = _jittered_box(size, rng, 0.64, 0.28)
        draw.rectangle(car.rect(0.25, -0.6, 0.75, 0.0), fill=dark)  # cabin
        draw.rectangle(car.rect(0.0, 0.0, 1.0, 1.0), fill=color)
        for wheel_x in (0.22, 0.78):
            draw.ellipse(_disc(car.at(wheel_x, 1.0), 0.09 * size), fill=(25, 25, 25))
    elif look == 3:
        vase = _jittered_box(size, rng, 0.32, 0.6)
        outline = [(0.35, 0.0), (0.65, 0.0), (1.0, 0.55), (0.8, 1.0), (0.2, 1.0), (0.0, 0.55)]
        draw.polygon([vase.at(x, y) for x, y in outline], fill=color, outline=dark)
    else:
        shoe = _jittered_box(size, rng, 0.68, 0.28)
        outline = [(0.0, 1.0), (0.0, 0.1), (0.4, 0.0), (0.55, 0.5), (1.0, 0.6), (1.0, 1.0)]
        draw.polygon([shoe.at(x, y) for x, y in outline], fill=color, outline=dark)
        draw.rectangle(shoe.rect(0.0, 0.8, 1.0, 1.0), fill=(245, 245, 245))  # sole
    return image


def _draw_style(size: int, variant: int, hue: float, rng: np.random.Generator) -> Image.Image:
    palette = [
        _rgb(hue + shift, saturation, value)
        for shift, saturation, value in ((0.0, 0.7, 0.9), (0.08, 0.6, 0.6), (0.5, 0.5, 0.8), (0.0, 0.2, 0.98))
    ]
    line = max(1, size // 32)
    # Variants: oil (thick strokes), watercolour (soft blobs), pencil (hatching),
    # woodblock (flat wave bands), pixel art (coarse grid).
    if variant % 5 == 0:
        image = Image.new("RGB", (size, size), palette[1])
        draw = ImageDraw.Draw(image)
        for _ in range(40):
            x, y = rng.uniform(0, size, 2)
            dx, dy = rng.uniform(-0.15, 0.15, 2) * size
            draw.line((x, y, x + dx, y + dy), fill=palette[int(rng.integers(0, 3))], width=3 * line)
        return image
    if variant % 5 == 1:
        image = Image.new("RGB", (size, size), palette[3])
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x, y = rng.uniform(0, size, 2)
            radius = rng.uniform(0.1, 0.25) * size
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=palette[int(rng.integers(0, 3))])
        return image.filter(ImageFilter.GaussianBlur(radius=size / 16))
    if variant % 5 == 2:
        image = Image.new("RGB", (size, size), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        for _ in range(30):
            x, y = rng.uniform(0, size, 2)
            length = rng.uniform(0.1, 0.3) * size
            gray = int(rng.integers(60, 140))
            draw.line((x, y, x + length, y - length), fill=(gray, gray, gray), width=1)
        return image
    if variant % 5 == 3:
        rows = np.arange(size)[:, None]
        columns = np.arange(size)[None, :]
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(columns * 2 * np.pi / size * 2 + phase) * size / 10
        band = ((rows + wave) // (size / 6)).astype(int) % 3
        pixels = np.asarray(palette[:3], dtype=np.uint8)[band]
        pixels[((rows + wave) % (size / 6)) < line] = (20, 20, 20)  # carved outlines between bands
        return Image.fromarray(pixels)
    cells = 8
    indices = rng.integers(0, 4, size=(cells, cells))
    pixels = np.asarray(palette, dtype=np.uint8)[indices]
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
