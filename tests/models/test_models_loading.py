"""Base-model loading, offline: tiny alias, diffusers folders, cache misses, single files, fingerprints."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.loading import default_device_and_dtype, file_sha256, load_pipeline, weights_fingerprint


@pytest.mark.parametrize("name", ["tiny", "cemaps/tiny-sd"])
def test_tiny_alias_gives_the_tiny_pipeline_on_cpu(name):
    pipe = load_pipeline(name, device="cpu")
    assert pipe.safety_checker is None and pipe.unet.dtype == torch.float32
    assert weights_fingerprint(pipe.unet) == weights_fingerprint(tiny_pipeline(seed=0).unet)


def test_dtype_by_name():
    assert load_pipeline("tiny", device="cpu", dtype="bf16").unet.dtype == torch.bfloat16


def test_default_device_and_dtype_follow_cuda_availability():
    device, dtype = default_device_and_dtype()
    assert (device.type, dtype) == (("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32))
    assert default_device_and_dtype("cpu", torch.float16) == (torch.device("cpu"), torch.float16)


def test_bad_dtype_is_refused():
    with pytest.raises(ModelLoadError, match="dtype 'int8' is not a floating-point"):
        load_pipeline("tiny", device="cpu", dtype="int8")


def test_diffusers_folder_loads_the_saved_weights(tmp_path):
    saved = tiny_pipeline(seed=1)
    saved.save_pretrained(tmp_path / "pipe")
    pipe = load_pipeline(str(tmp_path / "pipe"), device="cpu")
    assert pipe.safety_checker is None
    assert weights_fingerprint(pipe.unet) == weights_fingerprint(saved.unet)
    assert weights_fingerprint(pipe.text_encoder) == weights_fingerprint(saved.text_encoder)


def test_pickle_only_folder_needs_opt_in(tmp_path):
    saved = tiny_pipeline(seed=1)
    saved.save_pretrained(tmp_path / "pipe", safe_serialization=False)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        load_pipeline(str(tmp_path / "pipe"), device="cpu")
    pipe = load_pipeline(str(tmp_path / "pipe"), device="cpu", allow_pickle=True)
    assert weights_fingerprint(pipe.unet) == weights_fingerprint(saved.unet)


def test_folder_without_model_index_is_refused(tmp_path):
    tiny_pipeline(seed=1).unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ModelLoadError, match="has no model_index.json"):
        load_pipeline(str(tmp_path / "unet"), device="cpu")


@pytest.mark.parametrize("missing", ["/nonexistent/models/sd15", "./models/sd15.safetensors", "weights.ckpt"])
def test_missing_path_fails_fast(missing):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(missing, device="cpu")


def test_hub_id_not_in_cache_fails_fast_with_download_hint():
    start = time.perf_counter()
    with pytest.raises(
        ModelLoadError,
        match=r"not in the Hugging Face cache \(offline\); download it once with `huggingface-cli download cemaps-test/not-cached-sd`",
    ):
        load_pipeline("cemaps-test/not-cached-sd", device="cpu")
    assert time.perf_counter() - start < 5.0


def test_single_file_without_cached_config_asks_for_base_config(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "sd.safetensors")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"set `base_config:` in study.yaml \(Python: config=DIR\)"):
        load_pipeline(str(tmp_path / "sd.safetensors"), device="cpu")
    assert time.perf_counter() - start < 5.0
    with pytest.raises(ModelLoadError, match="has no model_index.json; set `base_config:` in study.yaml"):
        load_pipeline(str(tmp_path / "sd.safetensors"), device="cpu", config=str(tmp_path))


def test_single_pickle_checkpoint_needs_opt_in(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "sd.ckpt")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        load_pipeline(str(tmp_path / "sd.ckpt"), device="cpu")


def test_weights_fingerprint_is_deterministic_and_sensitive():
    state = {"b": torch.arange(4.0), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    reordered = {"a": state["a"].clone(), "b": state["b"].clone()}
    assert weights_fingerprint(state) == weights_fingerprint(reordered)
    reordered["b"][3] += 1e-3
    assert weights_fingerprint(state) != weights_fingerprint(reordered)
    module = torch.nn.Linear(2, 2)
    assert weights_fingerprint(module) == weights_fingerprint(module.state_dict())
    # dtype is part of the identity even where the values agree
    assert weights_fingerprint({"x": torch.zeros(2)}) != weights_fingerprint({"x": torch.zeros(2, dtype=torch.float64)})


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"cemaps" * 1000)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(b"cemaps" * 1000).hexdigest()
    with pytest.raises(ModelLoadError, match="not a file"):
        file_sha256(tmp_path / "missing")
