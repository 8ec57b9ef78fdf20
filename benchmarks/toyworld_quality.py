"""Does the shipped toy world draw what its prompts say, and do its attention maps localise?

Generates, for single-object concrete prompts (every colour and kind at least twice),
positioned prompts, counted prompts (1-3) and abstract words, ``--seeds`` images each,
judges them from pixels only (cemaps.toyworld.judge), and prints side by side the same
checks on the world's own renders of the same prompts (the judge's ceiling) and on those
renders after the pipeline's VAE (a reference for a UNet that decodes through it). Then the
colour and shape tokens' cross-attention maps of the single-object images are scored as
segmentations against the judged object masks (DAAM's protocol: upsample, max-normalise,
threshold 0.4, IoU), per layer and for the map averaged over layers.

Usage:
    python benchmarks/toyworld_quality.py                     # 8 seeds, 20 steps
    python benchmarks/toyworld_quality.py --seeds 2 --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

import cemaps
from cemaps.toyworld import register
from cemaps.toyworld.evaluate import evaluate_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="cemaps/toyworld", help="pipeline to judge (default: the shipped toy world)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--no-attention", action="store_true")
    parser.add_argument("--json", default=None, help="also write the tables here")
    parser.add_argument("--device", default="cpu", help="torch device; the pipeline runs in float32 on any device")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    register()  # the alias "cemaps/toyworld"
    pipe = cemaps.load_pipeline(args.base, device=args.device, dtype=torch.float32)
    tables = evaluate_pipeline(
        pipe,
        seeds=list(range(args.seeds)),
        steps=args.steps,
        guidance_scale=args.guidance,
        with_attention=not args.no_attention,
        batch_size=args.batch_size,
    )
    pd.set_option("display.width", 160)
    print(
        f"base {args.base}: {args.seeds} seeds, {args.steps} steps, guidance {args.guidance}, {args.device} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    accuracy = tables["accuracy"].pivot_table(index="check", columns="source", values="accuracy", sort=False)
    accuracy["images"] = tables["accuracy"].groupby("check", sort=False)["images"].first()
    print("\naccuracy (judged from pixels)\n" + accuracy.round(3).to_string())
    print("\nabstract words: the defining feature\n" + tables["abstract"].round(3).to_string(index=False))
    if "miou" in tables:
        miou = tables["miou"]
        print(f"\nmIoU of token maps vs judged object masks ({tables['miou_images']} images with the object found)")
        print(miou.round(3).to_string())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    name: table.reset_index().to_dict(orient="records") if isinstance(table, pd.DataFrame) else table
                    for name, table in tables.items()
                },
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
