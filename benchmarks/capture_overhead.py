"""Capture overhead: time(generation with capture) / time(plain diffusers generation).

Two interleavings, both in one process, both with the same prompt and seed:

* ``lockstep`` (the headline figure): two identical pipelines generate side by side in
  two threads that take turns at every UNet call, so plain and captured generation
  alternate every denoising step (tens of ms) instead of every image. Only one thread
  runs at a time; each side's time is the sum of its own turns. On a shared 2-core VM
  the speed of the CPU drifts by 10-30 % over seconds (consecutive UNet calls' times
  correlate at 0.85, calls one image apart at 0.15), which makes whole-image pairs too
  noisy to resolve a few percent; step-level turns cancel that drift. Which side runs
  first and which pipeline object captures alternate from pair to pair.
* ``abba``: whole generations in alternating order (plain, capture, capture, plain, ...).

The median of the per-pair ratios is reported for each, with the ratio of medians.

    python benchmarks/capture_overhead.py                 # tiny pipeline + SD v1.5 geometry at 512x512
    python benchmarks/capture_overhead.py --skip-sd15     # tiny pipelines only (about 10 minutes each)
    python benchmarks/capture_overhead.py --skip-sd15 --skip-tiny --method lockstep   # tiny SDXL only

The tiny SDXL (diffusers' dummy sizes, Euler, guidance 5 as diffusers' SDXL fast tests use) runs
beside the tiny SD 1.x with the same defaults; ``--skip-sdxl`` leaves it out.

SD v1.5 geometry runs use output_type="latent" (no VAE decode) and no guidance, which
make the ratio larger, not smaller: the decode and the second CFG half add the same time
to both sides while capture work stays the same. On 2 CPU cores one 512x512 UNet call
takes seconds, so these runs take minutes; the first pair includes warm-up.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))

from lockstep import lockstep_pair  # noqa: E402

from cemaps import CrossAttentionProbe, capture, tiny_pipeline  # noqa: E402
from cemaps.models.tiny import tiny_sdxl_pipeline  # noqa: E402


def _generate(pipe, steps, size, output_type, guidance_scale=7.5):
    return pipe(
        "an oil painting of a lighthouse on a cliff at dusk",
        num_inference_steps=steps,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(0),
        output_type=output_type,
        guidance_scale=guidance_scale,
    )


def overhead(
    pipe,
    steps: int,
    size: int,
    pairs: int,
    probe_kwargs: dict,
    output_type: str,
    guidance_scale: float = 7.5,
    warmup: bool = True,
) -> dict:
    if warmup:
        _generate(pipe, steps, size, output_type, guidance_scale)
        with capture(pipe, [CrossAttentionProbe(**probe_kwargs)]):
            _generate(pipe, steps, size, output_type, guidance_scale)
    plain_times, capture_times = [], []
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
        plain_times.append(timings["plain"])
        capture_times.append(timings["capture"])
    return summarize(plain_times, capture_times)


def summarize(plain_times: list[float], capture_times: list[float]) -> dict:
    """Ratios of paired timings: per pair, of medians and of minimums."""
    ratios = [captured / plain for plain, captured in zip(plain_times, capture_times, strict=True)]
    return {
        "median_ratio": statistics.median(ratios),
        "ratios": ratios,
        "plain_s": statistics.median(plain_times),
        "ratio_of_medians": statistics.median(capture_times) / statistics.median(plain_times),
        "ratio_of_minimums": min(capture_times) / min(plain_times),
    }


def _lockstep_pair(
    pipes,
    capture_index: int,
    first: int,
    steps: int,
    size: int,
    output_type: str,
    guidance_scale: float,
    probe_kwargs: dict,
    threads: int,
) -> tuple[float, float]:
    """(plain seconds, captured seconds) of one image each, generated in turns at every denoiser call."""
    pair = lockstep_pair(
        pipes,
        lambda pipe: _generate(pipe, steps, size, output_type, guidance_scale),
        probe_kwargs,
        capture_index,
        first,
        threads=threads,
    )
    return pair["plain_s"], pair["capture_s"]


def overhead_lockstep(
    pipe,
    steps: int,
    size: int,
    pairs: int,
    probe_kwargs: dict,
    output_type: str,
    guidance_scale: float = 7.5,
    threads: int | None = None,
) -> dict:
    """Median ratio over ``pairs`` images generated in step-level turns with a twin of ``pipe``."""
    pipes = (pipe, copy.deepcopy(pipe))
    threads = threads or torch.get_num_threads()
    _lockstep_pair(pipes, 1, 0, steps, size, output_type, guidance_scale, probe_kwargs, threads)  # warm-up
    plain_times, capture_times = [], []
    for pair in range(pairs):
        # alternate which pipeline object captures and which side takes the first turn
        plain, captured = _lockstep_pair(
            pipes, pair % 2, (pair // 2) % 2, steps, size, output_type, guidance_scale, probe_kwargs, threads
        )
        plain_times.append(plain)
        capture_times.append(captured)
    return summarize(plain_times, capture_times)


def median_interval(ratios: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap (BCa) confidence interval of the median pair ratio."""
    if len(ratios) < 3:
        return float("nan"), float("nan")
    result = stats.bootstrap(
        (np.asarray(ratios),),
        np.median,
        confidence_level=confidence,
        n_resamples=9999,
        random_state=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def report(label: str, result: dict) -> None:
    ratios = ", ".join(f"{r:.3f}" for r in result["ratios"])
    low, high = median_interval(result["ratios"])
    print(
        f"{label:<62} median of pair ratios {result['median_ratio']:.3f}x (95% CI {low:.3f}-{high:.3f}), "
        f"ratio of medians {result['ratio_of_medians']:.3f}x, ratio of minimums {result['ratio_of_minimums']:.3f}x "
        f"(plain {result['plain_s']:.2f} s; {len(result['ratios'])} pairs: {ratios})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="pairs at SD v1.5 geometry")
    parser.add_argument("--sd15-steps", type=int, default=5)
    parser.add_argument("--tiny-pairs", type=int, default=101, help="pairs for the tiny pipeline's defaults")
    parser.add_argument("--every-step-pairs", type=int, default=31, help="pairs for tiny every-step capture")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--method", choices=("lockstep", "abba", "both"), default="both")
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-sdxl", action="store_true", help="leave out the tiny SDXL")
    parser.add_argument("--every-step", action="store_true", help="also time every-step capture at SD geometry")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = ("lockstep", "abba") if args.method == "both" else (args.method,)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")

    def measure(label, pipe, steps, size, pairs, probe_kwargs, output_type, guidance_scale=7.5, warmup=True):
        for method in methods:
            if method == "lockstep":
                result = overhead_lockstep(
                    pipe, steps, size, pairs, probe_kwargs, output_type, guidance_scale, args.threads
                )
            else:
                result = overhead(pipe, steps, size, pairs, probe_kwargs, output_type, guidance_scale, warmup)
            report(f"{label} [{method}]", result)

    if not args.skip_tiny:
        tiny = tiny_pipeline(seed=0)
        measure("tiny 64x64, 20 steps, defaults (5 of 20 steps)", tiny, 20, 64, args.tiny_pairs, {}, "np")
        measure("tiny 64x64, 20 steps, every step", tiny, 20, 64, args.every_step_pairs, {"timesteps": "all"}, "np")
    if not args.skip_sdxl:
        xl = tiny_sdxl_pipeline(seed=0)
        measure("tiny SDXL 64x64, 20 steps, defaults (5 of 20 steps)", xl, 20, 64, args.tiny_pairs, {}, "np", 5.0)
    if args.skip_sd15:
        return
    from diffusers import DDIMScheduler
    from sd15_geometry import sd15_pipeline

    sd = sd15_pipeline()
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)  # exactly one UNet call per step
    print(f"SD v1.5 geometry UNet: {sum(p.numel() for p in sd.unet.parameters()) / 1e6:.1f}M parameters")
    # Without guidance the UNet runs on one half only while capture still scores the cond half:
    # the ratio is an upper bound of the guided (CFG) case.
    steps = args.sd15_steps
    # The defaults capture 5 of 50 steps; keep at least that share of captured steps here.
    share = {"timesteps": max(1, -(-steps * 5 // 50))}
    measure(
        f"SD v1.5 512x512, {steps} DDIM steps, no CFG, {share['timesteps']} of {steps} captured",
        sd,
        steps,
        512,
        args.pairs,
        share,
        "latent",
        guidance_scale=1.0,
        warmup=False,
    )
    if args.every_step:
        measure(
            f"SD v1.5 512x512, {steps} DDIM steps, no CFG, every step",
            sd,
            steps,
            512,
            args.pairs,
            {"timesteps": "all"},
            "latent",
            guidance_scale=1.0,
            warmup=False,
        )


if __name__ == "__main__":
    main()
