"""Issue 13, kind 5: device strings are checked where the flag or study.yaml is read, and the
one-line error says which devices this machine has."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import SMALL, assert_refused, snapshot, write

from cemaps.study.config_checks import available_devices

# A CUDA index past the last GPU is unavailable on every machine, with or without a GPU.
MISSING_GPU = f"cuda:{torch.cuda.device_count() + 3}"
BAD = ["tpu", "gpu", "cuda:x", MISSING_GPU] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD)
def test_capture_device_flag(cli, tmp_path, device):
    config = write(tmp_path, SMALL)
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--device", device, "-q")
    assert_refused(code, err, f"--device={device!r}", "available here: " + ", ".join(available_devices()))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("device", ["cuda:7", "mps:0", "npu"])
def test_study_yaml_device(cli, tmp_path, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 or more GPUs")
    config = write(tmp_path, SMALL + f"device: '{device}'\n")
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    assert_refused(code, err, "study.yaml: device", device, "available here: cpu")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("device", ["tpu", MISSING_GPU])
def test_personalize_device_flag(cli, tmp_path, device):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    before = snapshot(tmp_path)
    code, _, err = cli(
        "personalize",
        "-m",
        "lora",
        "-i",
        images,
        "-t",
        "sks",
        "-c",
        "dog",
        "-o",
        tmp_path / "w",
        "--device",
        device,
        "-q",
    )
    assert_refused(code, err, "--device", device, "available here: cpu")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "w").exists()


def test_available_devices_start_with_cpu():
    devices = available_devices()
    assert devices[0] == "cpu"
    assert ("cuda" in devices) == torch.cuda.is_available()
