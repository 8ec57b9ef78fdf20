"""``benchmarks/gpu_table.py``: the README's GPU tables come from ``results.json`` and show no unmeasured number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_table import render  # noqa: E402

MEASURED = {
    "name": "sd15",
    "status": "measured",
    "family": "StableDiffusionPipeline",
    "size": 512,
    "steps": 50,
    "guidance": 7.5,
    "batch": 4,
    "dtype": "float16",
    "overhead": {
        "defaults": {
            "status": "measured",
            "pairs": 9,
            "median_ratio": 1.0123,
            "ci_low": 1.004,
            "ci_high": 1.021,
            "ratio_of_medians": 1.0131,
            "plain_step_ms": 21.44,
            "capture_step_ms": 21.61,
        },
        "every_step": {"status": "skipped: time box"},
    },
    "throughput": {"plain_images_per_s": 3.125, "capture_images_per_s": 3.0},
    "memory": {"plain_peak_bytes": 3 * 2**30, "capture_peak_bytes": int(3.5 * 2**30)},
    "store": {"bytes_per_record": 951_000},
}
RESULTS = {
    "schema": "cemaps-gpu-session/1",
    "smoke": False,
    "environment": {
        "device": "cuda",
        "gpu": "NVIDIA H200",
        "driver": "580.159.04",
        "torch_cuda": "13.0",
        "versions": {"torch": "2.11.0", "diffusers": "0.42.1", "transformers": "5.17.0"},
    },
    "parts": {
        "capture": {
            "status": "done",
            "geometries": [
                MEASURED,
                {"name": "joint", "status": "unsupported by this cemaps version", "reason": "FluxPipeline: no unet"},
            ],
        },
        "toyworld": {
            "status": "done",
            "command": "python -m cemaps.toyworld.train pipeline --out x",
            "settings": {"unet_channels": "32,64,128,128", "text_width": 96, "batch": 256},
            "train": {"steps": 15000, "seconds": 300.0},
            "weights": {"with_toy_clip_bytes": 38_400_000, "within_40_mb": True},
            "quality": {
                "benchmark": {
                    "seeds": 8,
                    "steps": 20,
                    "guidance": 5.0,
                    "generated": {"colour": 0.9, "shape": 0.75, "position": 0.5, "count 1-3": 0.6},
                    "best_layer": "up_blocks.2.attentions.1",
                    "best_layer_miou": 0.41,
                },
                "demo": {"status": "skipped: time box"},
            },
        },
    },
}


def test_heading_names_the_device_and_versions():
    first = render(RESULTS).splitlines()[0]
    assert first == (
        "**GPU session** (real run): NVIDIA H200, driver 580.159.04, torch 2.11.0, diffusers 0.42.1, "
        "transformers 5.17.0, CUDA 13.0"
    )


def test_measured_row_carries_the_json_numbers():
    row = next(line for line in render(RESULTS).splitlines() if line.startswith("| sd15") and "| defaults |" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "StableDiffusionPipeline, 512x512, 50 steps, guidance 7.5, batch 4, float16"
    assert cells[3:] == [
        "9",
        "**1.012x** (1.004-1.021)",
        "1.013x",
        "3.12 / 3.00",
        "21.4 / 21.6",
        "3.00 / 3.50",
        "0.951",
    ]


def test_unmeasured_figures_are_shown_as_their_status_never_as_numbers():
    table = render(RESULTS)
    assert (
        "| sd15 | StableDiffusionPipeline, 512x512, 50 steps, guidance 7.5, batch 4, float16 | every_step | skipped: time box |"
        in table
    )
    assert "| joint | unsupported by this cemaps version: FluxPipeline: no unet |" in table
    without_memory = json.loads(json.dumps(RESULTS))
    without_memory["parts"]["capture"]["geometries"][0]["memory"] = {
        "plain_peak_bytes": None,
        "capture_peak_bytes": None,
    }
    assert "| n/a |" in render(without_memory)


def test_toy_world_table_has_one_column_per_judged_setting_and_the_targets():
    table = render(RESULTS)
    assert "| check (judged from pixels) | benchmark: 8 seeds, 20 steps, guidance 5 | target |" in table
    assert "| colour | 0.900 | >= 0.85 |" in table and "| count 1-3 | 0.600 | >= 0.6 |" in table
    assert "| best-layer mIoU | 0.410 (up_blocks.2.attentions.1) | >= 0.5 |" in table
    assert "15000 UNet + text-encoder steps" in table and "38.4 MB" in table and "within the 40 MB rule" in table


def test_command_line_prints_the_table(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    script = ROOT / "benchmarks" / "gpu_table.py"
    printed = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, check=True)
    assert printed.stdout == render(RESULTS)
