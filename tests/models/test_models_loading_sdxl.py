"""SDXL base loading, offline: a diffusers folder, a hub id in the local cache, a single SGM .safetensors file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from sdxl_checkpoints import sdxl_to_sgm

from cemaps.errors import ModelLoadError
from cemaps.models.families import family_of
from cemaps.models.loading import load_pipeline
from cemaps.models.tiny import tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    tiny_sdxl_pipeline(seed=1).save_pretrained(folder)
    return folder


def assert_same_weights(loaded, reference) -> None:
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(loaded, component).state_dict(), getattr(reference, component).state_dict()
        assert ours.keys() == theirs.keys(), component
        for key, tensor in theirs.items():
            assert torch.equal(ours[key], tensor), f"{component}.{key}"


def test_sdxl_folder_loads_as_an_sdxl_pipeline(sdxl_folder):
    pipe = load_pipeline(str(sdxl_folder), device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and family_of(pipe).key == "sdxl"
    assert_same_weights(pipe, tiny_sdxl_pipeline(seed=1))
    assert pipe.tokenizer_2.pad_token == "!"


def test_sdxl_hub_id_in_the_local_cache(sdxl_folder, tmp_path, monkeypatch):
    # the Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}
    repo = tmp_path / "hub" / "models--cemaps-test--tiny-sdxl"
    commit = "0" * 40
    shutil.copytree(sdxl_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = load_pipeline("cemaps-test/tiny-sdxl", device="cpu")
    assert family_of(pipe).key == "sdxl"
    assert_same_weights(pipe, tiny_sdxl_pipeline(seed=1))


def test_sdxl_single_file_with_its_config_folder(sdxl_folder, tmp_path):
    reference = tiny_sdxl_pipeline(seed=1)
    save_file(sdxl_to_sgm(reference), tmp_path / "sdxl.safetensors")
    pipe = load_pipeline(str(tmp_path / "sdxl.safetensors"), device="cpu", config=str(sdxl_folder))
    assert family_of(pipe).key == "sdxl"
    assert_same_weights(pipe, reference)


def test_unsupported_pipeline_class_in_a_folder_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ModelLoadError) as error:
        load_pipeline(str(tmp_path), device="cpu")
    assert "names pipeline class 'KandinskyV22Pipeline': not a supported model family; supported: SD 1.x/2.x" in str(
        error.value
    )
    assert "SDXL (StableDiffusionXLPipeline" in str(error.value)
