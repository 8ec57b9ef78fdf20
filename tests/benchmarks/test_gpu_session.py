"""``benchmarks/gpu_session.py --smoke``: every part at tiny sizes on the CPU, the files the device returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_capture import UNSUPPORTED  # noqa: E402
from gpu_table import render  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "--smoke", "--out", str(out)]
    done = subprocess.run([*command, "--work", str(work)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, work, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_smoke_writes_only_what_the_device_returns(smoke):
    out, _, _ = smoke
    files = sorted(p.name for p in out.iterdir())
    assert {"results.json", "results.md", "session.log", "toyworld-weights.tar.00"} <= set(files)
    # the device returns at most 8 files of at most 16 MiB, named in letters, digits, '.', '_' and '-'
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)
    assert all((out / name).stat().st_size <= 16 * 2**20 for name in files)


@pytest.mark.slow
def test_smoke_measures_each_geometry_or_says_why_not(smoke):
    _, _, results = smoke
    assert results["schema"] == "cemaps-gpu-session/1" and results["smoke"] is True
    assert results["environment"]["versions"]["diffusers"] and results["environment"]["device"] == "cpu"
    geometries = {g["name"]: g for g in results["parts"]["capture"]["geometries"]}
    assert list(geometries) == ["sd15", "sdxl", "joint"]
    sd15 = geometries["sd15"]
    assert sd15["status"] == "measured" and sd15["attention_processors"] == ["AttnProcessor2_0"]
    for label in ("defaults", "every_step"):
        overhead = sd15["overhead"][label]
        assert overhead["pairs"] >= 1 and len(overhead["ratios"]) == overhead["pairs"]
        # one pair: its ratio is captured seconds over plain seconds
        assert overhead["ratios"][0] == pytest.approx(overhead["capture_s"] / overhead["plain_s"], rel=1e-4)
    throughput = sd15["throughput"]
    assert throughput["plain_images_per_s"] == pytest.approx(4 / sd15["overhead"]["defaults"]["plain_s"])
    assert sd15["store"]["records"] == 4 and sd15["store"]["bytes_per_record"] > 0
    assert sd15["memory"]["plain_peak_bytes"] is None  # no CUDA: no number
    joint = geometries["joint"]
    assert joint["status"] in ("measured", UNSUPPORTED)
    if joint["status"] == UNSUPPORTED:
        assert "FluxPipeline" in joint["reason"] and "StableDiffusion3Pipeline" in joint["reason"]


@pytest.mark.slow
def test_smoke_markdown_is_the_table_of_its_json(smoke):
    out, _, results = smoke
    assert (out / "results.md").read_text() == render(results)
    assert "| sd15 | StableDiffusionPipeline, 32x32" in render(results)


@pytest.mark.slow
def test_smoke_trains_judges_and_packs_float16_weights(smoke, tmp_path):
    out, _, results = smoke
    toy = results["parts"]["toyworld"]
    assert toy["status"] == "done" and toy["train"]["returncode"] == 0 and toy["train"]["steps"] >= 1
    assert "--unet-channels 8,8,16,16" in toy["command"] and toy["weights"]["within_40_mb"]
    quality = toy["quality"]["benchmark"]
    assert 0 <= quality["generated"]["colour"] <= 1 and quality["best_layer"] != "all layers"
    joined = tmp_path / "weights.tar"
    joined.write_bytes(b"".join((out / name).read_bytes() for name in toy["files"]))
    with tarfile.open(joined) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "toyworld-float16"
    config = json.loads((folder / "unet" / "config.json").read_text())
    assert config["block_out_channels"] == [8, 8, 16, 16]
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float16"}
    assert (folder / "quality-benchmark.json").is_file() and (folder / "train_log.csv").is_file()
