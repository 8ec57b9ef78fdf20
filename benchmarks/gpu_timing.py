"""Capture overhead, throughput, memory and store size of one geometry, on a GPU (or a CPU, smoke).

Overhead is measured in *lockstep* (``lockstep.py``, shared with ``capture_overhead.py``): two identical
pipelines generate in two threads that take turns at every denoiser call, one plain and one
captured, so both sides see the same clocks and the same thermal state; each side's time is
the sum of its own turns. On CUDA every turn starts after ``torch.cuda.synchronize()`` and is
timed by a pair of CUDA events recorded on the stream, the second one synchronised before the
turn is handed over, so no queued kernel of one side runs in the other's turn. Which pipeline
object captures and which side starts alternate from pair to pair.

Throughput is images per second of each side in the lockstep pairs (batch / median seconds per
generation, VAE decode and collecting the captured arrays included). Peak memory is
``torch.cuda.max_memory_allocated`` over one plain and one captured generation of the same
pipeline after its twin is freed. Bytes per record: the default capture written by
``run_study`` into a fresh store, the store's size on disk over its records.
"""

from __future__ import annotations

import copy
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lockstep  # benchmarks/ is on sys.path
import torch
from lockstep import StepClock  # noqa: F401 - gpu_capture.py times with timing.StepClock

from cemaps import CrossAttentionProbe, capture


def lockstep_pair(
    pipes: tuple[Any, Any],
    denoiser: str,
    generate: Callable[[Any], Any],
    probe_kwargs: dict,
    capture_index: int,
    first: int,
    device: torch.device,
) -> dict:
    """One image batch per side in turns at every ``denoiser`` call (:func:`lockstep.lockstep_pair`)."""
    return lockstep.lockstep_pair(pipes, generate, probe_kwargs, capture_index, first, device=device, denoiser=denoiser)


def overhead_lockstep(
    pipes: tuple[Any, Any],
    denoiser: str,
    generate: Callable[[Any], Any],
    probe_kwargs: dict,
    device: torch.device,
    *,
    budget_s: float,
    min_pairs: int,
    max_pairs: int,
    warmup: bool = True,
) -> dict:
    """Lockstep pairs (after one warm-up pair), as many as fit ``budget_s`` (at least ``min_pairs``).

    Returns the pair ratios, their median with a bootstrap 95 % interval, the ratio of medians,
    each side's median seconds and its median denoiser-call turn in ms.
    """
    from capture_overhead import median_interval  # noqa: PLC0415 - benchmarks/ is on sys.path

    started = time.perf_counter()
    if warmup:
        lockstep_pair(pipes, denoiser, generate, probe_kwargs, 1, 0, device)  # allocator, kernels, caches
    warm_s = time.perf_counter() - started
    pairs: list[dict] = []
    while len(pairs) < max_pairs:
        elapsed = time.perf_counter() - started
        pair_s = (elapsed - warm_s) / len(pairs) if pairs else warm_s
        if len(pairs) >= min_pairs and elapsed + pair_s > budget_s:
            break
        index = len(pairs)
        pairs.append(lockstep_pair(pipes, denoiser, generate, probe_kwargs, index % 2, (index // 2) % 2, device))
    ratios = [p["capture_s"] / p["plain_s"] for p in pairs]
    low, high = median_interval(ratios)
    plain = [p["plain_s"] for p in pairs]
    captured = [p["capture_s"] for p in pairs]
    # turns between two denoiser calls: index 1..-2 (0 is the encoding, -1 holds the decode)
    plain_steps = [t for p in pairs for t in p["plain_turns"][1:-1]]
    capture_steps = [t for p in pairs for t in p["capture_turns"][1:-1]]
    return {
        "pairs": len(pairs),
        "ratios": [round(r, 5) for r in ratios],
        "median_ratio": statistics.median(ratios),
        "ci_low": low,
        "ci_high": high,
        "ratio_of_medians": statistics.median(captured) / statistics.median(plain),
        "plain_s": statistics.median(plain),
        "capture_s": statistics.median(captured),
        "plain_step_ms": 1000 * statistics.median(plain_steps) if plain_steps else None,
        "capture_step_ms": 1000 * statistics.median(capture_steps) if capture_steps else None,
        "warmup_pair_s": warm_s if warmup else None,
        "seconds": time.perf_counter() - started,
    }


def peak_memory(pipe: Any, generate: Callable[[Any], Any], device: torch.device) -> dict:
    """Peak allocated bytes of one plain and one captured (defaults) generation; None off CUDA."""
    result: dict[str, Any] = {"weights_bytes": None, "plain_peak_bytes": None, "capture_peak_bytes": None}
    if device.type != "cuda":
        return result
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    result["weights_bytes"] = torch.cuda.memory_allocated()
    for kind in ("plain", "capture"):
        torch.cuda.reset_peak_memory_stats()
        if kind == "plain":
            generate(pipe)
        else:
            with capture(pipe, [CrossAttentionProbe()]) as run:
                generate(pipe)
            run.records()
        torch.cuda.synchronize()
        result[f"{kind}_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def store_bytes_per_record(pipe: Any, size: int, steps: int, guidance: float, batch: int) -> dict:
    """``run_study`` with the default capture into a fresh store: its size on disk per record."""
    from cemaps.probes import CrossAttentionSettings
    from cemaps.store import open_store
    from cemaps.study.config import GenerationSettings, StudyConfig
    from cemaps.study.runner import run_study

    prompts = [
        "an oil painting of a lighthouse on a cliff at dusk",
        "the quiet joy of a rainy sunday morning",
        "three red apples in a blue bowl beside a candle",
        "a portrait of an old fisherman",
    ][:batch]
    config = StudyConfig(
        prompts=prompts,
        seeds=(0,),
        capture=CrossAttentionSettings(),
        generation=GenerationSettings(steps=steps, guidance_scale=guidance, height=size, width=size, batch_size=batch),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.h5"
        run_study(config, path, progress=False, pipe=pipe)
        with open_store(path) as store:
            records = len(store.records)
            total = store.size_on_disk()
            schema = int(store.schema_version)
    return {"records": records, "bytes_per_record": total / records, "schema_version": schema}


def twin(pipe: Any) -> Any:
    """A second, identical pipeline for the lockstep (same weights, its own modules)."""
    return copy.deepcopy(pipe)
