"""Part 3 of the GPU session: the toy world trained wider, judged, and packed to come back.

The training is the project's own command (``python -m cemaps toyworld train pipeline``, the same
as ``cemaps toyworld train pipeline``) with wider widths, a larger batch and the shipped VAE; the
judging is ``benchmarks/toyworld_quality.py`` on the result. Both run as child processes with a
deadline: at the training's deadline the session touches ``STOP`` in its output folder (the
command's own early end, which saves), and kills it only if it has not saved a minute later.

What comes back (the device returns at most 8 files of 16 MiB): the trained folder with its UNet
and text encoder cast to float16 (the shipping size rule is 40 MB in all, the toy CLIP included),
its training log and the quality tables, as one tar split into ``PART_BYTES`` pieces. The judged
weights are those float16 ones, loaded back in float32, so the figures are those of what would ship.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PART_BYTES = 15 * 1024 * 1024
SHIP_LIMIT_BYTES = 40_000_000  # README's rule for shipped weights (pipeline + toy CLIP)


def training_command(out: Path, *, minutes: float, widths: str, text_width: int, batch: int, pairs: int, lr: float,
                     final_lr_fraction: float, device: str | None) -> list[str]:  # fmt: skip
    """The training command line (``cemaps toyworld train pipeline`` through ``python -m``)."""
    from cemaps.toyworld.assets import shipped_pipeline_folder

    command = [sys.executable, "-m", "cemaps", "toyworld", "train", "pipeline", "--out", str(out)]
    command += ["--minutes", f"{minutes:.3f}", "--unet-channels", widths, "--text-width", str(text_width)]
    command += ["--batch", str(batch), "--pairs", str(pairs), "--lr", str(lr)]
    command += ["--final-lr-fraction", str(final_lr_fraction), "--vae", str(shipped_pipeline_folder()), "-q"]
    return command + (["--device", device] if device else [])


def run_until(command: list[str], log: Path, deadline: float, stop_file: Path | None = None) -> dict:
    """Runs ``command`` (output appended to ``log``) until it ends or ``deadline`` (``time.time()``).

    At the deadline ``stop_file`` is touched (when given) and the process has 60 s more to save and
    end; then, or without a stop file, it is killed. Returns the exit code, seconds and whether the
    deadline ended it.
    """
    started = time.time()
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        stopped = touched = False
        hard_deadline = deadline
        while process.poll() is None:
            now = time.time()
            if now > deadline and stop_file is not None and not stopped:
                stopped, hard_deadline = True, now + 60
            if stopped and not touched and stop_file.parent.is_dir():
                stop_file.touch()
                touched = True
            if now > hard_deadline:
                process.kill()
                process.wait()
                return {"returncode": None, "seconds": time.time() - started, "ended_by": "killed at the time box"}
            time.sleep(0.5)
    ended = "its STOP file at the time box" if stopped else "itself"
    return {"returncode": process.returncode, "seconds": time.time() - started, "ended_by": ended}


def to_float16(folder: Path, ship: Path) -> dict:
    """Copies the pipeline ``folder`` to ``ship`` with UNet and text encoder weights in float16."""
    import torch
    from safetensors.torch import load_file, save_file

    if ship.exists():
        shutil.rmtree(ship)
    shutil.copytree(folder, ship, ignore=shutil.ignore_patterns("checkpoint", "STOP", ".cemaps-output.json"))
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        path = ship / part
        tensors = {name: t.to(torch.float16) if t.is_floating_point() else t for name, t in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})
    weights = sum(p.stat().st_size for p in ship.rglob("*.safetensors"))
    # what would ship: weights, configs and tokenizer (the log, curve and settings are small and optional)
    folder = sum(p.stat().st_size for p in ship.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    return {"weights_bytes": weights, "folder_bytes": folder}


def quality_command(base: Path, json_out: Path, *, seeds: int, steps: int, guidance: float, device: str,
                    attention: bool = True) -> list[str]:  # fmt: skip
    script = Path(__file__).with_name("toyworld_quality.py")
    command = [sys.executable, str(script), "--base", str(base), "--seeds", str(seeds), "--steps", str(steps)]
    command += ["--guidance", str(guidance), "--device", device, "--json", str(json_out), "--batch-size", "64"]
    return command + ([] if attention else ["--no-attention"])


def quality_summary(tables: dict) -> dict:
    """Generated accuracy per check and the best layer's mIoU from ``toyworld_quality.py --json``."""
    generated = {row["check"]: row["accuracy"] for row in tables["accuracy"] if row["source"] == "generated"}
    summary: dict = {"generated": generated}
    rows = [row for row in tables.get("miou", []) if row["layer"] != "all layers"]
    if rows:
        best = max(rows, key=lambda row: row["mean"])
        summary["best_layer"] = best["layer"]
        summary["best_layer_miou"] = best["mean"]
        summary["miou_images"] = tables.get("miou_images")
    return summary


def pack(folder: Path, out: Path, stem: str = "toyworld-weights.tar") -> list[str]:
    """Tars ``folder`` and splits it into ``out/<stem>.00``, ``.01``, ... of at most ``PART_BYTES``.

    Rejoin with ``cat <stem>.* > <stem>`` (the parts are numbered in order).
    """
    archive = folder.parent / stem
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=folder.name)
    names = []
    with archive.open("rb") as source:
        for index in range(100):
            chunk = source.read(PART_BYTES)
            if not chunk:
                break
            name = f"{stem}.{index:02d}"
            (out / name).write_bytes(chunk)
            names.append(name)
    archive.unlink()
    return names


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
