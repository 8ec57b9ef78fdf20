"""DreamBooth trainer: a full pipeline diffusers loads, base weights restored, class images cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from cemaps.models.train import TrainSettings, personalize


@pytest.fixture(scope="module")
def subject_images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), colour) for colour in ("saddlebrown", "white")]


def render(pipe, prompt: str = "a watercolor of a lighthouse") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images


def settings(**overrides) -> TrainSettings:
    # lr 1e-3: two steps must move the tiny UNet visibly; the schedule itself is the script's.
    return TrainSettings(**{"method": "dreambooth", "steps": 2, "learning_rate": 1e-3, **overrides})


def test_saved_pipeline_loads_in_diffusers_and_base_pipe_is_restored(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    base_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base_image = render(pipe)
    training_flags = [m.training for m in pipe.unet.modules()]

    result = personalize(pipe, "dreambooth", subject_images, "sks", "dog", tmp_path / "db", settings(), progress=False)

    assert result.artifact == tmp_path / "db"
    assert (result.out / "model_index.json").is_file() and (result.out / "cemaps_train.json").is_file()
    assert list((result.out / "unet").glob("*.safetensors"))
    assert all(torch.equal(base_weights[k], v) for k, v in pipe.unet.state_dict().items())
    assert [m.training for m in pipe.unet.modules()] == training_flags
    assert all(p.grad is None for p in pipe.unet.parameters())
    assert np.array_equal(render(pipe), base_image)

    trained = StableDiffusionPipeline.from_pretrained(result.out, safety_checker=None, requires_safety_checker=False)
    trained.set_progress_bar_config(disable=True)
    assert any(not torch.equal(base_weights[k], v) for k, v in trained.unet.state_dict().items())
    assert np.abs(render(trained) - base_image).max() > 0


def test_same_seed_same_weights(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    unets = []
    for name in ("a", "b"):
        personalize(
            pipe, "dreambooth", subject_images, "sks", "dog", tmp_path / name, settings(steps=1), progress=False
        )
        unets.append(StableDiffusionPipeline.from_pretrained(tmp_path / name, safety_checker=None).unet.state_dict())
    assert all(torch.equal(unets[0][k], unets[1][k]) for k in unets[0])


def test_prior_preservation_generates_caches_and_reuses_class_images(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    out = tmp_path / "db"
    prior = settings(steps=1, prior_preservation=True, num_class_images=2, class_inference_steps=2)
    first = personalize(pipe, "dreambooth", subject_images, "sks", "dog", out, prior, progress=False)
    class_images = sorted((out / "class_images").glob("*.png"))
    assert [p.name for p in class_images] == ["0000.png", "0001.png"]
    manifest = json.loads((out / "class_images" / "class_images.json").read_text())
    assert manifest["prompt"] == "a photo of a dog" and manifest["num_inference_steps"] == 2
    record = json.loads((out / "cemaps_train.json").read_text())
    assert record["class_prompt"] == "a photo of a dog" and record["class_image_seeds"] == [0, 1]
    assert len(record["class_images"]) == 2

    modified = {p.name: p.stat().st_mtime_ns for p in class_images}
    second = personalize(pipe, "dreambooth", subject_images, "sks", "dog", out, prior, progress=False, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "class_images").glob("*.png")} == modified
    assert first.losses == second.losses  # same seed, same cached class images

    without_prior = personalize(
        pipe, "dreambooth", subject_images, "sks", "dog", tmp_path / "plain", settings(steps=1), progress=False
    )
    assert without_prior.losses != first.losses  # the class-prior term is in the loss
