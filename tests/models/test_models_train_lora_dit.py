"""`cemaps personalize --method lora` on the tiny SD3 and Flux: the artifact loads, verified, and the base is untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cemaps.cli import app
from cemaps.data import synthetic_subject_images
from cemaps.errors import ConfigError
from cemaps.models.personalized import PersonalizedSpec, applied, check
from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_pixart_sigma_pipeline, tiny_sd3_pipeline
from cemaps.models.train import TrainSettings, personalize

BUILDERS = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(synthetic_subject_images("object1", n=2, size=64)):
        image.save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_personalize_lora_cli_on_a_dit_folder(family, images, tmp_path):
    pipe = BUILDERS[family](seed=0)
    pipe.save_pretrained(tmp_path / "base")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    result = CliRunner().invoke(
        app,
        ["personalize", "--method", "lora", "--images", str(images), "--token", "sks", "--class-word", "mug",
         "--out", str(tmp_path / "lora"), "--base", str(tmp_path / "base"), "--steps", "3", "--resolution", "64",
         "--lora-targets", "attention", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "lora" / "cemaps_train.json").read_text())
    assert len(record["losses"]) == 3 and all(np.isfinite(record["losses"]))
    spec = PersonalizedSpec("trained", "lora", path=str(tmp_path / "lora"))
    assert check(pipe, spec) == "diffusers"
    with applied(pipe, spec) as model:
        assert model.n_tensors_changed == sum(
            name.endswith(("to_q", "to_k", "to_v", "to_out.0")) for name, _ in pipe.transformer.named_modules()
        )
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())


def test_cross_attention_targets_are_the_text_projections_and_the_base_is_unchanged(images, tmp_path):
    pipe = tiny_sd3_pipeline(seed=0)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    settings = TrainSettings(method="lora", steps=2, resolution=64, lora_targets="cross_attention")
    result = personalize(pipe, "lora", images, "sks", "mug", tmp_path / "out", settings, progress=False)
    from safetensors import safe_open

    with safe_open(str(result.artifact), framework="pt") as handle:
        modules = {key.rsplit(".lora_", 1)[0].split(".")[-1] for key in handle.keys()}
    assert modules == {"add_k_proj", "add_v_proj"}
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())
    assert not getattr(pipe.transformer, "peft_config", None)


def test_other_methods_on_a_dit_are_refused_before_anything_is_written(images, tmp_path):
    with pytest.raises(ConfigError, match="cemaps trains LoRA on SD3 and Flux transformers only"):
        personalize(tiny_sd3_pipeline(seed=0), "dreambooth", images, "sks", "mug", tmp_path / "db", progress=False)
    with pytest.raises(ConfigError, match="method 'lora' on PixArt-Sigma"):
        personalize(tiny_pixart_sigma_pipeline(seed=0), "lora", images, "sks", "mug", tmp_path / "p", progress=False)
    assert not (tmp_path / "db").exists() and not (tmp_path / "p").exists()
