"""Part 1-2 of the GPU session: capture overhead, throughput, memory and bytes per record per geometry.

Run by ``gpu_session.py`` as a child process (so that a time box can end it); after each geometry
it rewrites its JSON file, so a killed run still leaves every geometry it finished. Each geometry:

1. support: one 2-step captured generation of the family at diffusers' test widths on the CPU;
   an exception there (today: SD3 and Flux pipelines have no ``unet``) reports the geometry as
   ``unsupported by this cemaps version`` with the exception's one-line text, and nothing is built;
2. the pipeline at full size (``gpu_geometries``), its twin, and lockstep pairs with the default
   capture, then with every step captured (no second warm-up: the pipelines are warm);
3. the twin freed, peak memory of one plain and one captured generation;
4. bytes per record of the default capture through ``run_study``.
Steps 2-4 stop early at the geometry's deadline; what was not measured says ``skipped: time box``.
"""

from __future__ import annotations

import gc
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

import gpu_geometries as geometries
import gpu_timing as timing
import torch

from cemaps.errors import one_line

UNSUPPORTED = "unsupported by this cemaps version"


def capture_support(spec: geometries.Geometry) -> str | None:
    """None when a 2-step capture of the family's tiny pipeline works on the CPU, else why not (one line)."""
    from cemaps import CrossAttentionProbe, capture

    try:
        pipe = geometries.build(spec, tiny=True)
        arguments = geometries.call_arguments(spec, pipe, tiny=True, device="cpu")
        arguments["num_inference_steps"] = 2
        with capture(pipe, [CrossAttentionProbe(timesteps="all")]) as run:
            pipe(**arguments, generator=torch.Generator().manual_seed(0))
        if not run.records():
            return "capture returned no records"
    except Exception as error:  # noqa: BLE001 - any failure means this version cannot capture the family
        return f"{type(error).__name__}: {one_line(error)}"
    return None


def measure_geometry(spec: geometries.Geometry, *, tiny: bool, device: torch.device, deadline: float) -> dict:
    """Everything of one geometry that fits before ``deadline`` (a ``time.time()``)."""
    size, steps = (spec.tiny_size, spec.tiny_steps) if tiny else (spec.size, spec.steps)
    record: dict[str, Any] = {
        "name": spec.name,
        "family": spec.family,
        "dtype": "float32" if tiny else spec.dtype,
        "size": size,
        "steps": steps,
        "guidance": spec.guidance,
        "batch": spec.batch,
        "prompt": "prompt_embeds (random, real shapes)" if spec.text_tokens else "text through the text encoders",
    }
    reason = capture_support(spec)
    if reason:
        return {**record, "status": UNSUPPORTED, "reason": reason}
    started = time.perf_counter()
    pipe = geometries.build(spec, tiny=tiny, device=str(device))
    record["build_s"] = time.perf_counter() - started
    denoiser = getattr(pipe, spec.denoiser)
    record["denoiser_parameters"] = geometries.denoiser_parameters(pipe, spec)
    record["attention_processors"] = sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
    arguments = geometries.call_arguments(spec, pipe, tiny=tiny, device=str(device))

    def generate(target):
        return target(**arguments, generator=torch.Generator().manual_seed(0))

    pairs = (1, 1) if tiny else (3, 12)
    pipes = (pipe, timing.twin(pipe))
    record["overhead"] = {}
    for label, probe_kwargs, share in (("defaults", {}, 0.45), ("every_step", {"timesteps": "all"}, 0.7)):
        if time.time() > deadline:
            record["overhead"][label] = {"status": "skipped: time box"}
            continue
        result = timing.overhead_lockstep(
            pipes,
            spec.denoiser,
            generate,
            probe_kwargs,
            device,
            budget_s=share * max(0.0, deadline - time.time()),
            min_pairs=pairs[0],
            max_pairs=pairs[1],
            warmup=label == "defaults",
        )
        record["overhead"][label] = {"status": "measured", "capture": probe_kwargs or "defaults", **result}
    defaults = record["overhead"].get("defaults", {})
    if defaults.get("status") == "measured":
        record["throughput"] = {
            "plain_images_per_s": spec.batch / defaults["plain_s"],
            "capture_images_per_s": spec.batch / defaults["capture_s"],
            "from": "lockstep pairs with the default capture (batch / median seconds per generation)",
        }
    del pipes
    gc.collect()
    record["memory"] = (
        timing.peak_memory(pipe, generate, device) if time.time() < deadline else {"status": "skipped: time box"}
    )
    if time.time() < deadline:
        try:
            record["store"] = timing.store_bytes_per_record(pipe, size, steps, spec.guidance, spec.batch)
        except Exception as error:  # noqa: BLE001 - reported in the JSON; the other figures stand
            record["store"] = {"status": "error", "reason": f"{type(error).__name__}: {one_line(error)}"}
    else:
        record["store"] = {"status": "skipped: time box"}
    record["status"] = "measured"
    record["seconds"] = time.perf_counter() - started
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def fits(spec: geometries.Geometry, device: torch.device, seconds_left: float, tiny: bool) -> tuple[bool, float]:
    """Whether the full measurement of ``spec`` should fit: one 2-step generation, scaled to ``spec.steps``,
    times the generations the measurement needs (2 x (1 + 3) + 2 x 3 lockstep, 2 memory, 1 store)."""
    if tiny:
        return True, 0.0
    pipe = geometries.build(spec, device=str(device))
    arguments = geometries.call_arguments(spec, pipe, tiny=False, device=str(device))
    arguments["num_inference_steps"] = 2
    pipe(**arguments, generator=torch.Generator().manual_seed(0))  # warm-up
    clock = timing.StepClock(device)
    clock.start()
    pipe(**arguments, generator=torch.Generator().manual_seed(0))
    estimate = clock.stop() * spec.steps / 2 * (2 * 4 + 2 * 3 + 2 + 1)
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return estimate < seconds_left, estimate


def run(names: list[str], out: Path, *, tiny: bool, device: torch.device, deadline: float, budgets: dict) -> None:
    """Measures each geometry in ``names`` (``joint``: the largest Flux/SD3 that fits) into ``out``."""
    results: list[dict] = []
    for position, name in enumerate(names):
        left = deadline - time.time()
        share = budgets.get(name, left / max(1, len(names) - position))
        box = min(deadline, time.time() + share)
        if left <= 5:
            results.append({"name": name, "status": "skipped: time box"})
            _write(out, results)
            continue
        try:
            if name == "joint":
                results.append(_joint(tiny=tiny, device=device, deadline=box))
            else:
                results.append(measure_geometry(geometries.GEOMETRIES[name], tiny=tiny, device=device, deadline=box))
        except Exception as error:  # noqa: BLE001 - one geometry's failure does not lose the others
            traceback.print_exc()
            results.append({"name": name, "status": "error", "reason": f"{type(error).__name__}: {one_line(error)}"})
        _write(out, results)


def _joint(*, tiny: bool, device: torch.device, deadline: float) -> dict:
    reasons = {}
    for name in geometries.JOINT_CANDIDATES:
        spec = geometries.GEOMETRIES[name]
        if spec.family not in reasons:
            reasons[spec.family] = capture_support(spec)
        if reasons[spec.family]:
            continue
        ok, estimate = fits(spec, device, deadline - time.time(), tiny)
        if ok:
            record = measure_geometry(spec, tiny=tiny, device=device, deadline=deadline)
            # listed under "joint" (the slot the session reserved for it), the geometry it measured beside it
            return {
                **record,
                "name": "joint",
                "geometry": name,
                "chosen_from": list(geometries.JOINT_CANDIDATES),
                "estimate_s": estimate,
            }
        print(f"joint: {name} would take ~{estimate:.0f} s, more than its time box; trying a smaller one", flush=True)
    if all(reasons.values()):
        text = "; ".join(f"{family}: {why}" for family, why in reasons.items())
        return {"name": "joint", "status": UNSUPPORTED, "reason": text}
    return {"name": "joint", "status": "skipped: time box", "reason": "no Flux/SD3 geometry fits the time box"}


def _write(out: Path, results: list[dict]) -> None:
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1, default=str))
    os.replace(temporary, out)
