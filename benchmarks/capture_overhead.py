"""Capture overhead: time(generation with capture) / time(plain diffusers generation).

Both are run interleaved in one process (pairs in alternating order, ABBA) with
the same prompt and seed, and the median of the per-pair ratios is reported.

    python benchmarks/capture_overhead.py                 # tiny pipeline + SD v1.5 geometry at 512x512
    python benchmarks/capture_overhead.py --skip-sd15     # tiny pipeline only (seconds)

SD v1.5 geometry runs use output_type="latent" (no VAE decode) and no guidance, which
make the ratio larger, not smaller: the decode and the second CFG half add the same time
to both sides while capture work stays the same. On 2 CPU cores one 512x512 UNet call
takes tens of seconds, so these runs take minutes; the first pair includes warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from cemaps import CrossAttentionProbe, capture, tiny_pipeline  # noqa: E402


def _generate(pipe, steps, size, output_type, guidance_scale=7.5):
    return pipe("an oil painting of a lighthouse on a cliff at dusk", num_inference_steps=steps, height=size,
                width=size, generator=torch.Generator().manual_seed(0), output_type=output_type,
                guidance_scale=guidance_scale)


def overhead(pipe, steps: int, size: int, pairs: int, probe_kwargs: dict, output_type: str,
             guidance_scale: float = 7.5, warmup: bool = True) -> dict:
    if warmup:
        _generate(pipe, steps, size, output_type, guidance_scale)
        with capture(pipe, [CrossAttentionProbe(**probe_kwargs)]):
            _generate(pipe, steps, size, output_type, guidance_scale)
    ratios, plain_times, capture_times = [], [], []
    for pair in range(pairs):
        # Alternate which run goes first (ABBA), so that order effects (allocator, caches,
        # garbage left by the previous run) do not all land on one side.
        order = ("plain", "capture") if pair % 2 == 0 else ("capture", "plain")
        timings = {}
        for kind in order:
            start = time.perf_counter()
            if kind == "plain":
                _generate(pipe, steps, size, output_type, guidance_scale)
            else:
                with capture(pipe, [CrossAttentionProbe(**probe_kwargs)]) as run:
                    _generate(pipe, steps, size, output_type, guidance_scale)
                run.records()  # collecting to numpy is part of the cost
            timings[kind] = time.perf_counter() - start
        plain, captured = timings["plain"], timings["capture"]
        ratios.append(captured / plain)
        plain_times.append(plain)
        capture_times.append(captured)
    return {"median_ratio": statistics.median(ratios), "ratios": ratios, "plain_s": statistics.median(plain_times),
            "ratio_of_medians": statistics.median(capture_times) / statistics.median(plain_times),
            "ratio_of_minimums": min(capture_times) / min(plain_times)}


def report(label: str, result: dict) -> None:
    ratios = ", ".join(f"{r:.2f}" for r in result["ratios"])
    print(f"{label:<58} median of pair ratios {result['median_ratio']:.3f}x, ratio of medians "
          f"{result['ratio_of_medians']:.3f}x, ratio of minimums {result['ratio_of_minimums']:.3f}x "
          f"(plain {result['plain_s']:.2f} s; {len(result['ratios'])} pairs: {ratios})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--sd15-steps", type=int, default=5)
    parser.add_argument("--tiny-pairs", type=int, default=31)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--every-step", action="store_true", help="also time every-step capture at SD geometry")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if not args.skip_tiny:
        tiny = tiny_pipeline(seed=0)
        report("tiny 64x64, 20 steps, defaults (5 of 20 steps)", overhead(tiny, 20, 64, args.tiny_pairs, {}, "np"))
        report("tiny 64x64, 20 steps, every step", overhead(tiny, 20, 64, args.tiny_pairs, {"timesteps": "all"}, "np"))
    if args.skip_sd15:
        return
    from diffusers import DDIMScheduler
    from sd15_geometry import sd15_pipeline

    sd = sd15_pipeline()
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)  # exactly one UNet call per step
    print(f"SD v1.5 geometry UNet: {sum(p.numel() for p in sd.unet.parameters()) / 1e6:.1f}M parameters")
    # Without guidance the UNet runs on one half only while capture still scores the cond half:
    # the ratio is an upper bound of the guided (CFG) case. The defaults capture every step here
    # (timesteps=10 >= steps), so this is also the every-step figure.
    steps = args.sd15_steps
    # The defaults capture 5 of 50 steps; keep at least that share of captured steps here.
    share = {"timesteps": max(1, -(-steps * 5 // 50))}
    report(f"SD v1.5 512x512, {steps} DDIM steps, no CFG, {share['timesteps']} of {steps} steps captured",
           overhead(sd, steps, 512, args.pairs, share, "latent", guidance_scale=1.0, warmup=False))
    if args.every_step:
        report(f"SD v1.5 512x512, {steps} DDIM steps, no CFG, every step",
               overhead(sd, steps, 512, args.pairs, {"timesteps": "all"}, "latent", guidance_scale=1.0, warmup=False))

if __name__ == "__main__":
    main()
