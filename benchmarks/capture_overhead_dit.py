"""Capture overhead, peak extra memory of a captured step, and bytes per record on SD3 and Flux geometry (CPU).

Random weights at a reduced geometry that keeps the shape of the real models' attention (image
tokens of a 512x512 image with patch size 2, 1024; a 128-token T5 context; 64-dim heads; a width of
0.4x the sequence length, between SD3-medium's 0.35 and Flux's 0.67 at 1024 px) with fewer and
narrower blocks, so that it runs on a CPU, and diffusers' default 28 steps:

* SD3: 4 joint blocks (RMS QK norms), 8 heads of 64; CLIP-L+G (77 tokens) then T5 (128 tokens).
* Flux: 2 double-stream and 4 single-stream blocks, 8 heads of 64, rotary; T5 (128 tokens).

The overhead is the lockstep ratio of ``benchmarks/capture_overhead.py`` (plain and captured
generation take turns at every transformer call, so CPU-speed drift cancels): median over pairs of
captured / plain seconds, with ``cemaps.CrossAttentionProbe()`` defaults (every text-attending layer,
5 of the steps, heads averaged, prompt tokens, 16x16 maps, float16). Peak extra memory is the peak of
torch's CPU allocations during one transformer call (torch.profiler, ``profile_memory``: running sum of
each op's own allocations and frees in time order) with capture on minus with it off. Bytes per record
are those of the arrays one image yields (uncompressed).

    python benchmarks/capture_overhead_dit.py --pairs 6
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

sys.path.insert(0, str(Path(__file__).parent))

import lockstep  # noqa: E402
from capture_overhead import summarize  # noqa: E402

from cemaps import CrossAttentionProbe, capture  # noqa: E402
from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: E402

PROMPT = "an oil painting of a lighthouse on a cliff at dusk"
SIZE, STEPS, TEXT = 512, 28, 128  # 28: diffusers' default steps for SD3 and FLUX.1-dev


def reduced(family: str):
    pipe = tiny_sd3_pipeline(seed=0) if family == "sd3" else tiny_flux_pipeline(seed=0)
    torch.manual_seed(0)
    if family == "sd3":
        pipe.transformer = SD3Transformer2DModel(
            sample_size=64, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=64, num_attention_heads=8,
            caption_projection_dim=512, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
            qk_norm="rms_norm",
        ).eval()  # fmt: skip
    else:
        pipe.transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=2, num_single_layers=4, attention_head_dim=64,
            num_attention_heads=8, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=[16, 24, 24],
        ).eval()  # fmt: skip
    return pipe


def generate(pipe):
    return pipe(
        PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, max_sequence_length=TEXT, output_type="latent",
        generator=torch.Generator().manual_seed(0), guidance_scale=3.5,
    )  # fmt: skip


def lockstep_pair(pipes, capture_index: int, first: int) -> tuple[float, float]:
    """(plain seconds, captured seconds) of one generation each, in turns at every transformer call, 1 thread."""
    pair = lockstep.lockstep_pair(pipes, generate, {}, capture_index, first, denoiser="transformer", threads=1)
    return pair["plain_s"], pair["capture_s"]


def peak_call_bytes(pipe, captured: bool) -> int:
    """Peak of torch's CPU allocations during the first transformer call (a captured step when ``captured``)."""
    from torch.profiler import ProfilerActivity, profile

    calls = []
    stop = pipe.transformer.register_forward_hook(lambda m, a, o: calls.append(1))

    def one_call():
        prof_holder = {}

        def start(module, args, kwargs):
            if not calls and "prof" not in prof_holder:
                prof_holder["prof"] = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                prof_holder["prof"].__enter__()

        def end(module, args, output):
            if "prof" in prof_holder and len(calls) == 1:
                prof_holder["prof"].__exit__(None, None, None)

        handles = [
            pipe.transformer.register_forward_pre_hook(start, with_kwargs=True),
            pipe.transformer.register_forward_hook(end),
        ]
        try:
            if captured:
                with capture(pipe, [CrossAttentionProbe()]):
                    generate(pipe)
            else:
                generate(pipe)
        finally:
            for handle in handles:
                handle.remove()
        return prof_holder["prof"]

    try:
        prof = one_call()
    finally:
        stop.remove()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    running = peak = 0
    for event in events:
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def record_bytes(pipe) -> int:
    with capture(pipe, [CrossAttentionProbe()]) as run:
        generate(pipe)
    record = run.records()[0]
    return sum(array.values.nbytes for array in record.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--families", default="sd3,flux")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for family in args.families.split(","):
        pipe = reduced(family)
        pipes = (pipe, copy.deepcopy(pipe))
        lockstep_pair(pipes, 1, 0)  # warm-up
        plain, captured = [], []
        for pair in range(args.pairs):
            p, c = lockstep_pair(pipes, pair % 2, (pair // 2) % 2)
            plain.append(p)
            captured.append(c)
        result = summarize(plain, captured)
        # printed as each figure is known: a run cut short by a time limit keeps what it measured
        print(
            f"{family}: lockstep ratio {result['median_ratio']:.3f} (pairs {args.pairs}, plain {result['plain_s']:.1f} s "
            f"per {STEPS}-step image; ratios {', '.join(f'{r:.3f}' for r in result['ratios'])}; median plain/captured "
            f"{statistics.median(plain):.2f}/{statistics.median(captured):.2f} s)",
            flush=True,
        )
        print(f"{family}: {record_bytes(pipe) / 1024:.1f} kB per record", flush=True)
        extra = peak_call_bytes(pipe, True) - peak_call_bytes(pipe, False)
        print(f"{family}: peak extra memory of a captured step {extra / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
