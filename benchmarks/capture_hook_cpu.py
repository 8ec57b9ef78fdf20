"""CPU time spent in capture's own Python code per image (hooks, probes, scoring, einops).

Whole-image timing ratios (``capture_overhead.py``) need minutes and a quiet machine to
resolve 1 %; this measures capture's own Python directly: the thread CPU time (not wall
time, so other processes on a shared VM do not count) that cProfile attributes to
functions in ``cemaps/hooks``, ``cemaps/probes``, ``cemaps/labelled`` and ``einops``
themselves, excluding the torch operations they call. To compare two trees, run it
alternately with each on the path:

    PYTHONPATH=/path/to/tree-a/src python benchmarks/capture_hook_cpu.py
    PYTHONPATH=/path/to/tree-b/src python benchmarks/capture_hook_cpu.py
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import cemaps
from cemaps.probes import CrossAttentionProbe

OWN = ("/cemaps/hooks/", "/cemaps/probes/", "/cemaps/labelled", "/einops/")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = cemaps.tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)

    def one_image() -> None:
        with cemaps.capture(pipe, [CrossAttentionProbe()]) as run:
            pipe(
                "a watercolor of a lighthouse",
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
            )
        run.records()

    one_image()  # warm-up
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    for _ in range(args.images):
        one_image()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    own = sum(tt for (file, _, _), (_, _, tt, _, _) in stats.items() if any(part in file for part in OWN))
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    if args.images < 0:
        pass
    print(
        f"{cemaps.__file__}: capture's own Python {1000 * own / args.images:.2f} ms CPU per image "
        f"of {1000 * total / args.images:.0f} ms profiled ({100 * own / total:.2f} %), "
        f"tiny 64x64, {args.steps} PNDM steps, default probe (5 captured steps)"
    )


if __name__ == "__main__":
    main()
