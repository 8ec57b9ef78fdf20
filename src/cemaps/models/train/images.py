"""Instance and class images: reading them (a folder or PIL images), hashing them, and turning them into pixels.

Pixels follow diffusers' example scripts with ``--center_crop``: bilinear resize, centre crop,
[-1, 1]; no random augmentation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from cemaps.errors import ConfigError
from cemaps.models.hashing import file_sha256

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class SourceImage:
    """An instance (or class) image and where it came from."""

    image: Image.Image
    name: str
    sha256: str


def load_instance_images(images: list[Image.Image] | str | Path) -> list[SourceImage]:
    """Reads instance images from a folder (every readable image file, sorted by name) or a list.

    Raises:
        ConfigError: the folder is missing, empty, holds a corrupt image file or no readable image;
            the list is empty or holds something other than PIL images.
    """
    if isinstance(images, list | tuple):
        if not images:
            raise ConfigError("images list is empty; expected at least one PIL image")
        sources = []
        for index, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ConfigError(f"images[{index}] is a {type(image).__name__}; expected a PIL.Image.Image")
            sources.append(SourceImage(image.convert("RGB"), f"images[{index}]", _pil_sha256(image)))
        return sources
    folder = Path(images).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"images folder {str(folder)!r} does not exist or is not a folder; expected a folder of images"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"images folder {str(folder)!r} is empty; expected image files (.png, .jpg, ...)")
    sources = []
    for path in files:
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                raise ConfigError(
                    f"image file {str(path)!r} is not readable ({error}); expected a valid image"
                ) from None
            continue  # notes, captions and other non-image files are allowed beside the images
        sources.append(SourceImage(image, path.name, file_sha256(path)))
    if not sources:
        raise ConfigError(f"images folder {str(folder)!r} has no readable images; expected .png/.jpg/... files")
    return sources


def _pil_sha256(image: Image.Image) -> str:
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def images_to_pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resize (bilinear) + centre crop + [-1, 1], as diffusers' scripts with ``--center_crop``.

    Returns:
        [n, 3, resolution, resolution] float32.
    """
    transform = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    return torch.stack([transform(image) for image in images])
