"""How many torch threads should ``cemaps demo`` use? Its phases timed at each thread count, alternately.

The demo's time is its training (LoRA, Textual Inversion, DreamBooth of three toy subjects) and the
generation of its captured images, on the toy world's small UNet, where each op is small and
OpenMP's synchronisation can cost more than a second core gives back, worst when other processes
share the cores. This script trains each of the demo's methods (``cemaps.demo.TOY_DEMO_TRAINING``,
``--steps`` steps each) and generates one batch of 8 images at the demo's settings (10 steps,
guidance 5, capture on), once per thread count per round, alternating the order of the thread counts
between rounds so slow drifts in the machine's load hit every setting alike. It prints seconds per
training step and per image for each, with the 1-minute load average at the start of each
measurement. ``--load N`` starts N busy-looping processes for the run (a loaded machine).

Usage:
    OMP_NUM_THREADS=2 python benchmarks/demo_threads.py --threads 1,2 --rounds 2 --steps 20 [--load 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import cemaps
from cemaps.demo import TOY_DEMO_TRAINING, TOY_GUIDANCE_SCALE
from cemaps.models.train import personalize
from cemaps.toyworld import register
from cemaps.toyworld.suite import TOY_SUBJECTS


def _spin() -> None:
    while True:
        pass


def _measure(pipe, threads: int, steps: int, images, work: Path) -> dict[str, float]:
    torch.set_num_threads(threads)
    times: dict[str, float] = {}
    subject = TOY_SUBJECTS[0]
    for method, settings in TOY_DEMO_TRAINING.items():
        token = "<toy-face>" if method == "textual_inversion" else "sks"
        settings = dataclasses.replace(settings, steps=steps)
        started = time.perf_counter()
        personalize(
            pipe,
            method,
            images,
            token,
            subject.class_word,
            work / f"{method}-{threads}",
            settings,
            progress=False,
            overwrite=True,
        )
        times[f"{method} s/step"] = (time.perf_counter() - started) / steps
    probe = cemaps.CrossAttentionProbe(layers="*attn2", timesteps=5, heads="mean", spatial=16)
    prompts = ["a red circle", "two blue rings left of a yellow star", "a warm picture", "a lonely scene"] * 2
    started = time.perf_counter()
    with cemaps.capture(pipe, [probe]):
        pipe(
            prompts,
            num_inference_steps=10,
            guidance_scale=TOY_GUIDANCE_SCALE,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
    times["generation s/image"] = (time.perf_counter() - started) / len(prompts)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps per method per measurement")
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes to start for the run")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for spinner in spinners:
        spinner.start()
    try:
        register()  # the toy world's pipeline alias
        pipe = cemaps.load_pipeline("cemaps/toyworld", device="cpu", dtype="float32")
        pipe.set_progress_bar_config(disable=True)
        images = TOY_SUBJECTS[0].images(4, seed=0)
        results: dict[int, list[dict[str, float]]] = {count: [] for count in counts}
        with tempfile.TemporaryDirectory() as work:
            for round_index in range(args.rounds):
                order = counts if round_index % 2 == 0 else counts[::-1]
                for count in order:
                    load = os.getloadavg()[0]
                    times = _measure(pipe, count, args.steps, images, Path(work))
                    results[count].append(times)
                    shown = ", ".join(f"{k} {v:.3f}" for k, v in times.items())
                    print(f"round {round_index + 1}, {count} thread(s), load {load:.1f}: {shown}", flush=True)
        print(f"median over {args.rounds} rounds (--load {args.load}):")
        for count in counts:
            keys = results[count][0]
            shown = ", ".join(f"{k} {statistics.median(r[k] for r in results[count]):.3f}" for k in keys)
            print(f"  {count} thread(s): {shown}")
    finally:
        for spinner in spinners:
            spinner.terminate()


if __name__ == "__main__":
    main()
