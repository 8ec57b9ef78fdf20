"""Bytes on disk per record at SD v1.5 (or SDXL) geometry with the default capture settings.

    python benchmarks/store_size.py [--records 2] [--steps 10]
    python benchmarks/store_size.py --geometry sdxl --steps 2 [--width-divisor 8]   # 1024x1024

Generates real records (random-weight SD v1.5 geometry at 512x512, the default
CrossAttentionProbe, PNG images) into a fresh store with `run_study` and divides the
store's size on disk by the record count. Also prints, computed from the layer shapes,
what full-resolution, per-head, every-step, both-halves, all-77-token capture would cost.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cemaps.probes import CrossAttentionSettings  # noqa: E402
from cemaps.store import open_store  # noqa: E402
from cemaps.study.config import GenerationSettings, StudyConfig  # noqa: E402
from cemaps.study.runner import run_study  # noqa: E402

PROMPTS = [
    "an oil painting of a lighthouse on a cliff at dusk",
    "the quiet joy of a rainy sunday morning",
    "three red apples in a blue bowl beside a candle",
    "a portrait of an old fisherman",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--geometry", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--width-divisor", type=int, default=8, help="SDXL widths / this (see sdxl_geometry.py)")
    args = parser.parse_args()
    if args.geometry == "sdxl":
        from sdxl_geometry import sdxl_pipeline

        pipe, size = sdxl_pipeline(width_divisor=args.width_divisor), 1024
    else:
        from sd15_geometry import sd15_pipeline

        pipe, size = sd15_pipeline(), 512
    capture = CrossAttentionSettings()
    config = StudyConfig(
        prompts=PROMPTS[: args.records],
        seeds=(0,),
        capture=capture,
        generation=GenerationSettings(steps=args.steps, height=size, width=size, batch_size=1),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.h5"
        run_study(config, path, progress=True, pipe=pipe)
        with open_store(path) as store:
            n = len(store.records)
            total = store.size_on_disk()
            raw_maps = sum(store.read_one(name, r).nbytes for name in store.array_names for r in range(n)) / n
            tokens = np.mean([store.read_one(store.array_names[0], r).shape[0] for r in range(n)])
            png = np.mean([len(_png(image)) for image in store.images(range(n))])
            shapes = {name: store.trailing_shape(name) for name in store.array_names}
        from cemaps.study.plan import _part_sizes

        map_disk, image_disk, _ = (sum(sizes) / n for sizes in _part_sizes(path))
    print(f"{args.geometry} geometry at {size}x{size}; {len(shapes)} layers captured")
    print(f"defaults: {capture.to_dict()}; {args.steps} denoising steps")
    print(f"records: {n}; mean prompt tokens {tokens:.1f}")
    print(
        f"store size on disk: {total / n / 1e6:.3f} MB/record "
        f"(maps {raw_maps / 1e6:.3f} MB raw float16 before compression; image PNG {png / 1e6:.3f} MB)"
    )
    print(
        f"on disk per record: maps {map_disk / 1e6:.3f} MB compressed, image {image_disk / 1e6:.3f} MB "
        "(random weights: the image is noise, the least compressible case)"
    )
    full = full_capture_bytes(pipe, steps=50, size=size)
    print(
        f"full-resolution, per-head, every-step (50), both halves, 77 tokens, float16: {full / 1e9:.2f} GB/record "
        "(computed from the layer shapes)"
    )
    print(
        "per-layer stored map shape (token first, ragged):",
        {k.split("/")[-1]: v for k, v in list(shapes.items())[:2]},
        "...",
    )


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def full_capture_bytes(pipe, steps: int, size: int = 512, tokens: int = 77, halves: int = 2) -> int:
    from cemaps.probes.settings import is_cross_attention

    latent = size // pipe.vae_scale_factor
    deepest = len(pipe.unet.config.block_out_channels) - 1
    total = 0
    for name, module in pipe.unet.named_modules():
        if is_cross_attention(name, module):
            level = (
                int(name.split(".")[1])
                if name.startswith("down_blocks")
                else (deepest - int(name.split(".")[1]) if name.startswith("up_blocks") else deepest)
            )
            side = latent // 2**level
            total += side * side * module.heads * tokens * halves * steps * 2
    return total


if __name__ == "__main__":
    main()
