"""`personalize` on the tiny SDXL: all three methods train with both text encoders, pooled embeddings
and size conditioning (diffusers' SDXL training scripts' conventions), and their artifacts load back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cemaps.models.personalized import PersonalizedSpec, applied, check
from cemaps.models.tiny import tiny_sdxl_pipeline
from cemaps.models.train import TrainSettings, personalize
from cemaps.models.train.conditioning import added_conditions, encode_text


@pytest.fixture(scope="module")
def images():
    from cemaps.data import synthetic_subject_images

    return synthetic_subject_images("object1", n=2, size=64)


def render(pipe, prompt):
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def test_training_conditioning_is_what_the_sdxl_pipeline_feeds_its_unet():
    pipe = tiny_sdxl_pipeline(seed=0)
    text = encode_text(pipe, "a photo of sks dog")
    states, _, pooled, _ = pipe.encode_prompt("a photo of sks dog", do_classifier_free_guidance=False)
    torch.testing.assert_close(text.states, states, rtol=0, atol=0)
    torch.testing.assert_close(text.pooled, pooled, rtol=0, atol=0)
    ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(added_conditions(pipe, pooled, 64)["time_ids"], ids)


@pytest.mark.parametrize(
    ("method", "token", "settings"),
    [
        ("lora", "sks", {"steps": 2, "rank": 2}),
        ("dreambooth", "sks", {"steps": 2}),
        ("textual_inversion", "<xl-dog>", {"steps": 2, "num_vectors": 2, "learning_rate": 1e-1}),
    ],
)
def test_each_method_trains_on_sdxl_and_loads_back(images, tmp_path, method, token, settings):
    pipe = tiny_sdxl_pipeline(seed=0)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = personalize(
        pipe, method, images, token, "dog", tmp_path / method, TrainSettings(method=method, **settings), progress=False
    )
    assert len(result.losses) == settings["steps"] and all(np.isfinite(result.losses))
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())  # the caller's base is kept
    if method == "textual_inversion":
        saved = load_file(str(result.artifact))
        assert {k: tuple(v.shape) for k, v in saved.items()} == {"clip_l": (2, 24), "clip_g": (2, 40)}
    spec = PersonalizedSpec(method, method, str(result.artifact), token=token if method != "lora" else None)
    check(pipe, spec)
    prompt = f"a photo of {token} dog"
    plain = render(pipe, prompt)
    with applied(pipe, spec):
        assert np.abs(render(pipe, prompt) - plain).max() > 0
