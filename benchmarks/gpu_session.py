"""One GPU session: real-device capture figures and a toy world trained where it can learn.

    python benchmarks/gpu_session.py --out OUT            # on the GPU: ~8.5 minutes (--budget 510)
    python benchmarks/gpu_session.py --smoke --out OUT    # every part at tiny sizes on the CPU

Parts (each skippable with ``--skip``, each in a child process with its own time box, so a short
lease still brings back what finished):

* ``capture`` (issue 23, items 1-2), per geometry (``--geometries``, default ``sd15,sdxl,joint``):
  lockstep capture overhead with the default capture and with every step captured, images/s with
  and without capture, peak GPU memory with and without, bytes per record of the defaults
  (``gpu_capture.py``; the geometries are ``gpu_geometries.py``; ``joint`` is the largest Flux/SD3
  geometry that fits its time box, or ``unsupported by this cemaps version``).
* ``toyworld`` (item 3): ``cemaps toyworld train pipeline`` with a wider UNet and text encoder, a
  larger batch and the shipped VAE, for the time left; ``toyworld_quality.py`` on the result;
  the weights (float16) packed to come back (``gpu_toyworld.py``).

Writes ``OUT/results.json`` (schema ``SCHEMA``), ``OUT/results.md`` (``gpu_table.render``),
``OUT/session.log`` and ``OUT/toyworld-weights.tar.NN``: at most 8 files, as the device returns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SCHEMA = "cemaps-gpu-session/1"
PARTS = ("capture", "toyworld")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (on the device: $OUT)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the test of this script")
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything (510; smoke 300)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    parser.add_argument("--geometries", default="sd15,sdxl,joint", help="capture geometries, in order")
    parser.add_argument("--capture-seconds", type=float, default=230.0, help="time box of the capture part")
    parser.add_argument("--toy-unet-channels", default="32,64,128,128")
    parser.add_argument("--toy-text-width", type=int, default=96)
    parser.add_argument("--toy-batch", type=int, default=256)
    parser.add_argument("--toy-pairs", type=int, default=12000)
    parser.add_argument("--toy-lr", type=float, default=6e-4)
    parser.add_argument("--toy-final-lr-fraction", type=float, default=0.1)
    parser.add_argument("--quality-seconds", type=float, default=75.0, help="time kept for judging the toy world")
    parser.add_argument("--part", choices=("capture",), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(filter(None, args.skip.split(","))) - set(PARTS))
    if unknown:
        parser.error(f"--skip {args.skip}: unknown part {unknown[0]!r}; expected some of {', '.join(PARTS)}")
    if args.budget is None:
        args.budget = 300.0 if args.smoke else 510.0
    if args.smoke:  # tiny toy world: 32 pairs, widths of diffusers' tests
        args.toy_unet_channels, args.toy_text_width, args.toy_batch, args.toy_pairs = "8,8,16,16", 8, 4, 32
    return args


def environment(device: str) -> dict:
    """The GPU, driver and library versions the figures come from."""
    import importlib.metadata as metadata

    import torch

    versions = {}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "h5py", "hdf5plugin", "numpy", "cemaps"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "device": device,
        "python": platform.python_version(),
        "versions": versions,
        "torch_cuda": torch.version.cuda,
    }
    info["git_commit"] = _git_commit()
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=properties.name,
            gpu_memory_bytes=properties.total_memory,
            cudnn=torch.backends.cudnn.version(),
            sdpa={
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
            },
        )
        info["driver"] = _nvidia_smi("driver_version")
    else:
        info.update(gpu=None, driver=None, cpu=platform.processor() or platform.machine())
    return info


def _nvidia_smi(field: str) -> str | None:
    try:
        answer = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return answer.stdout.strip().splitlines()[0] if answer.returncode == 0 and answer.stdout.strip() else None


def _git_commit() -> str | None:
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return answer.stdout.strip() or None


def capture_part(args, work: Path, log: Path, deadline: float) -> dict:
    from gpu_toyworld import run_until

    out = work / "capture.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--part", "capture", "--out", str(out)]
    command += ["--geometries", args.geometries, "--deadline", f"{deadline:.1f}"] + (["--smoke"] if args.smoke else [])
    ran = run_until(command, log, deadline + 20)
    geometries = json.loads(out.read_text()) if out.is_file() else []
    done = {g["name"] for g in geometries}
    for name in args.geometries.split(","):
        if name not in done:
            geometries.append({"name": name, "status": "timed out" if ran["returncode"] is None else "not reached"})
    status = "done" if ran["returncode"] == 0 else f"ended with {ran['returncode'] or ran['ended_by']}"
    return {"status": status, "seconds": ran["seconds"], "geometries": geometries}


def toyworld_part(args, work: Path, out: Path, log: Path, deadline: float, device: str) -> dict:
    import gpu_toyworld as toy

    trained = work / "toyworld"
    setup_s = 60.0  # rendering the pairs, encoding them, building, saving
    minutes = 0.05 if args.smoke else (deadline - time.time() - args.quality_seconds - setup_s) / 60
    part: dict = {"settings": {"unet_channels": args.toy_unet_channels, "text_width": args.toy_text_width,
                               "batch": args.toy_batch, "pairs": args.toy_pairs, "lr": args.toy_lr,
                               "final_lr_fraction": args.toy_final_lr_fraction, "minutes": round(minutes, 3),
                               "vae": "shipped (weights/pipeline/vae)"}}  # fmt: skip
    if minutes < 0.5 and not args.smoke:
        return {**part, "status": "skipped: time box", "reason": f"{minutes:.2f} minutes left for training"}
    command = toy.training_command(
        trained,
        minutes=minutes,
        widths=args.toy_unet_channels,
        text_width=args.toy_text_width,
        batch=args.toy_batch,
        pairs=args.toy_pairs,
        lr=args.toy_lr,
        final_lr_fraction=args.toy_final_lr_fraction,
        device="cpu" if args.smoke else None,
    )
    part["command"] = "python " + " ".join(command[1:])
    train_deadline = time.time() + minutes * 60 + setup_s
    part["train"] = toy.run_until(command, log, train_deadline, stop_file=trained / "STOP")
    if not (trained / "model_index.json").is_file():
        return {**part, "status": "error", "reason": "training wrote no pipeline (see session.log)"}
    part["train"]["steps"] = _last_step(trained / "train_log.csv")
    ship = work / "toyworld-float16"
    part["weights"] = toy.to_float16(trained, ship)
    clip_bytes = sum(p.stat().st_size for p in _shipped_clip().glob("*.safetensors"))
    part["weights"]["with_toy_clip_bytes"] = part["weights"]["folder_bytes"] + clip_bytes
    part["weights"]["within_40_mb"] = part["weights"]["with_toy_clip_bytes"] <= toy.SHIP_LIMIT_BYTES
    quality = {}
    # the benchmark's settings (README's table), then the demo's (10 steps at guidance 5) if time is left
    settings = [("benchmark", 1, 2)] if args.smoke else [("benchmark", 8, 20), ("demo", 8, 10)]
    for label, seeds, steps in settings:
        left = deadline - time.time()
        if label == "demo" and quality and quality["benchmark"].get("seconds", left) > left:
            quality[label] = {"status": "skipped: time box"}
            continue
        tables = work / f"quality-{label}.json"
        command = toy.quality_command(ship, tables, seeds=seeds, steps=steps, guidance=5.0, device=device)
        ran = toy.run_until(command, log, time.time() + max(left, 10))
        if ran["returncode"] == 0 and tables.is_file():
            shutil.copy(tables, ship / tables.name)
            quality[label] = {
                "seeds": seeds,
                "steps": steps,
                "guidance": 5.0,
                **ran,
                **toy.quality_summary(json.loads(tables.read_text())),
            }
        else:
            quality[label] = {"status": "error", **ran}
    part["quality"] = quality
    part["files"] = toy.pack(ship, out)
    part["status"] = "done"
    return part


def _shipped_clip() -> Path:
    from cemaps.toyworld.assets import shipped_clip_files

    return shipped_clip_files()[1].parent


def _last_step(train_log: Path) -> int | None:
    rows = [line.split(",") for line in train_log.read_text().splitlines()[1:] if line.startswith("unet,")]
    return int(rows[-1][1]) if rows else None


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.part == "capture":
        return _capture_child(args)
    started = time.time()
    deadline = started + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="cemaps-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    log = args.out / "session.log"
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    results = {"schema": SCHEMA, "smoke": args.smoke, "budget_s": args.budget, "started_utc": _utc()}
    results["environment"] = environment(device)
    results["parts"] = {}
    skipped = set(filter(None, args.skip.split(",")))
    for name in PARTS:
        if name in skipped:
            results["parts"][name] = {"status": "skipped: --skip"}
        elif name == "capture":
            box = min(deadline, time.time() + (150.0 if args.smoke else args.capture_seconds))
            results["parts"][name] = capture_part(args, work, log, box)
        else:
            results["parts"][name] = toyworld_part(args, work, args.out, log, deadline, device)
        _write(args.out, results, started)
    _write(args.out, results, started)
    print((args.out / "results.md").read_text())
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _capture_child(args) -> None:
    import gpu_capture
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random-weight pipelines cast with .to(): warnings about nothing
    torch.manual_seed(0)
    if args.smoke:
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    names = args.geometries.split(",")
    budgets = {} if args.smoke else {"sd15": 75.0, "sdxl": 125.0}
    gpu_capture.run(names, args.out, tiny=args.smoke, device=device, deadline=args.deadline, budgets=budgets)


def _write(out: Path, results: dict, started: float) -> None:
    from gpu_table import render

    results = {**results, "finished_utc": _utc(), "wall_s": time.time() - started}
    temporary = out / "results.json.tmp"
    temporary.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(temporary, out / "results.json")
    (out / "results.md").write_text(render(results))


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    main()
