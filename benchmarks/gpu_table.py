"""The README's GPU tables, rendered from ``gpu_session.py``'s ``results.json``.

    python benchmarks/gpu_table.py OUT/results.json      # prints the Markdown

Every number in the tables is read from the JSON; a figure the session did not measure is shown
as its status (``unsupported by this cemaps version``, ``skipped: time box``, ...), never as a number.

Example:
    >>> print(render({"schema": "cemaps-gpu-session/1", "smoke": True, "environment": {"device": "cpu"},
    ...               "parts": {}}).splitlines()[0])
    **GPU session** (smoke run at tiny sizes on the CPU: these numbers are not GPU figures): cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CAPTURE_HEADER = (
    "| geometry | generation | capture | lockstep pairs | median of pair ratios (95 % CI) | ratio of medians "
    "| images/s | denoiser step, ms | peak GPU memory, GiB | MB/record (defaults) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
TOY_TARGETS = {"colour": ">= 0.85", "shape": ">= 0.7", "position": ">= 0.8", "count 1-3": ">= 0.6"}


def render(results: dict) -> str:
    """Markdown: one line naming the device and versions, the capture table, the toy-world table."""
    lines = [_heading(results), ""]
    capture = results.get("parts", {}).get("capture")
    if capture is not None:
        lines += ["**Capture on the device** (plain vs captured, same pipeline twin, turns at every denoiser call)", ""]
        lines += [CAPTURE_HEADER] if capture.get("geometries") else []
        for geometry in capture.get("geometries", []):
            lines += _geometry_rows(geometry)
        if not capture.get("geometries"):
            lines.append(f"capture: {capture.get('status')}")
        lines.append("")
    toy = results.get("parts", {}).get("toyworld")
    if toy is not None:
        lines += _toy_lines(toy)
    return "\n".join(lines).rstrip() + "\n"


def _heading(results: dict) -> str:
    env = results.get("environment", {})
    versions = env.get("versions", {})
    where = env.get("gpu") or env.get("device", "?")
    parts = [where]
    if env.get("driver"):
        parts.append(f"driver {env['driver']}")
    for name in ("torch", "diffusers", "transformers"):
        if versions.get(name):
            parts.append(f"{name} {versions[name]}")
    if env.get("torch_cuda"):
        parts.append(f"CUDA {env['torch_cuda']}")
    kind = (
        "smoke run at tiny sizes on the CPU: these numbers are not GPU figures" if results.get("smoke") else "real run"
    )
    return f"**GPU session** ({kind}): " + ", ".join(parts)


def _geometry_rows(geometry: dict) -> list[str]:
    name = geometry.get("name", "?")
    status = geometry.get("status", "?")
    if status != "measured":
        reason = f": {geometry['reason']}" if geometry.get("reason") else ""
        return [f"| {name} | {status}{reason} | | | | | | | | |"]
    generation = (
        f"{geometry['family']}, {geometry['size']}x{geometry['size']}, {geometry['steps']} steps, "
        f"guidance {geometry['guidance']:g}, batch {geometry['batch']}, {geometry['dtype']}"
    )
    rows = []
    memory = geometry.get("memory", {})
    store = geometry.get("store", {})
    throughput = geometry.get("throughput", {})
    for label, overhead in geometry.get("overhead", {}).items():
        if overhead.get("status") != "measured":
            rows.append(f"| {name} | {generation} | {label} | {overhead.get('status')} | | | | | | |")
            continue
        pairs = overhead["pairs"]
        ci = (
            f"{overhead['ci_low']:.3f}-{overhead['ci_high']:.3f}"
            if overhead.get("ci_low") == overhead.get("ci_low")
            else "n/a"
        )
        ratio = f"**{overhead['median_ratio']:.3f}x** ({ci})"
        steps = _pair(overhead.get("plain_step_ms"), overhead.get("capture_step_ms"), "{:.1f}")
        if label == "defaults":
            images = _pair(throughput.get("plain_images_per_s"), throughput.get("capture_images_per_s"), "{:.2f}")
            gib = _pair(_gib(memory.get("plain_peak_bytes")), _gib(memory.get("capture_peak_bytes")), "{:.2f}")
            mb = f"{store['bytes_per_record'] / 1e6:.3f}" if "bytes_per_record" in store else store.get("status", "")
        else:
            images = gib = mb = ""
        capture = "defaults" if label == "defaults" else "every step"
        rows.append(
            f"| {name} | {generation} | {capture} | {pairs} | {ratio} | {overhead['ratio_of_medians']:.3f}x "
            f"| {images} | {steps} | {gib} | {mb} |"
        )
    return rows


def _pair(plain, captured, form: str) -> str:
    if plain is None or captured is None:
        return "n/a"
    return f"{form.format(plain)} / {form.format(captured)}"


def _gib(value) -> float | None:
    return None if value is None else value / 2**30


def _toy_lines(toy: dict) -> list[str]:
    lines = ["**The toy world trained on the device**", ""]
    settings = toy.get("settings", {})
    if toy.get("status") != "done":
        return lines + [f"toyworld: {toy.get('status')}" + (f": {toy['reason']}" if toy.get("reason") else ""), ""]
    train = toy.get("train", {})
    weights = toy.get("weights", {})
    lines.append(
        f"`{toy.get('command', '')}`: {train.get('steps')} UNet + text-encoder steps (the command ran {train.get('seconds', 0):.0f} s; "
        f"UNet widths {settings.get('unet_channels')}, text width {settings.get('text_width')}, batch "
        f"{settings.get('batch')}); weights {weights.get('with_toy_clip_bytes', 0) / 1e6:.1f} MB with tokenizer, configs and the toy CLIP "
        f"(float16; {'within' if weights.get('within_40_mb') else 'OVER'} the 40 MB rule)."
    )
    lines.append("")
    quality = toy.get("quality", {})
    measured = [(label, q) for label, q in quality.items() if "generated" in q]
    if not measured:
        return lines + ["quality: " + ", ".join(f"{k} {v.get('status')}" for k, v in quality.items()), ""]
    header = " | ".join(
        f"{label}: {q['seeds']} seeds, {q['steps']} steps, guidance {q['guidance']:g}" for label, q in measured
    )
    lines += [f"| check (judged from pixels) | {header} | target |", "|---|" + "---|" * len(measured) + "---|"]
    for check, target in TOY_TARGETS.items():
        values = " | ".join(_number(q["generated"].get(check)) for _, q in measured)
        lines.append(f"| {check} | {values} | {target} |")
    mious = " | ".join(
        f"{_number(q.get('best_layer_miou'))} ({q.get('best_layer', 'n/a')})" if "best_layer_miou" in q else "n/a"
        for _, q in measured
    )
    lines += [f"| best-layer mIoU | {mious} | >= 0.5 |", ""]
    return lines


def _number(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.json of a GPU session")
    args = parser.parse_args()
    print(render(json.loads(args.results.read_text())), end="")


if __name__ == "__main__":
    main()
