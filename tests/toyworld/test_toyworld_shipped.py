"""The shipped toy world: loads offline by name, draws what it is asked (judged from pixels),
and its CLIP loads through the scorer's open_clip path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import cemaps
from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.errors import ModelLoadError
from cemaps.study.config import load_config
from cemaps.toyworld import assets
from cemaps.toyworld.judge import judge_image
from cemaps.toyworld.scorer import toy_clip_scorer
from cemaps.toyworld.world import Scene, ToyObject, render


@pytest.fixture(scope="module")
def toy_pipe():
    return cemaps.load_pipeline("cemaps/toyworld", device="cpu")


def test_toyworld_loads_offline_with_sd15_attention_layers(toy_pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert toy_pipe.name_or_path == "cemaps/toyworld"
    assert sum(name.endswith("attn2") for name, _ in toy_pipe.unet.named_modules()) == 16
    assert {toy_pipe.unet.dtype, toy_pipe.vae.dtype, toy_pipe.text_encoder.dtype} == {torch.float32}
    assert toy_pipe.tokenizer("a red circle").input_ids[:3] == [49406, 320, 736]  # OpenAI CLIP BPE ids


def test_study_config_accepts_the_toyworld_base(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": "cemaps/toyworld", "prompts": str(tmp_path / "p.csv"), "seeds": [0]}))
    (tmp_path / "p.csv").write_text("prompt_id,text\np1,a red circle\n")
    assert load_config(path).base == "cemaps/toyworld"


def test_shipped_weights_draw_the_colour_they_are_asked_for(toy_pipe):
    """Judged from pixels only: the largest object found has the asked colour.

    A fast check of the shipped weights (12 images; the benchmark's 144 give colour accuracy
    0.806, README "The toy world"). At 20 PNDM steps and guidance 5, as the benchmark; at 10 steps
    the model is much worse (colour 0.43), so fewer steps are not a fair check.
    """
    colours = ("red", "blue", "yellow", "green")
    prompts = [f"a {colour} square" for colour in colours for _ in range(3)]
    generators = [torch.Generator().manual_seed(seed) for _ in colours for seed in range(3)]
    images = toy_pipe(
        prompts, num_inference_steps=20, guidance_scale=5.0, generator=generators, output_type="np"
    ).images
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    largest = [(judge_image(image) or [None])[0] for image in images]
    right = [obj is not None and obj.colour == prompt.split()[1] for obj, prompt in zip(largest, prompts, strict=True)]
    assert sum(right) >= 9, [
        (prompt, obj.colour if obj else None) for obj, prompt in zip(largest, prompts, strict=True)
    ]


def test_toy_clip_loads_through_open_clip_and_prefers_the_right_caption():
    scorer = toy_clip_scorer(device="cpu")
    assert scorer.description.startswith("cemaps-toyclip")
    assert scorer.model.visual.image_size == (32, 32) or scorer.model.visual.image_size == 32
    images = np.stack([render(Scene((ToyObject("circle", colour, "large"),)))[0] for colour in ("red", "blue")])
    texts = ["a red circle", "a blue circle"]
    similarity = scorer.image_embeddings(images) @ scorer.text_embeddings(texts).T
    assert similarity[0, 0] > similarity[0, 1] and similarity[1, 1] > similarity[1, 0]
    same = ClipScorer.load(assets.TOY_CLIP_NAME, assets.shipped_clip_files()[1], device="cpu")
    np.testing.assert_allclose(same.text_embeddings(texts), scorer.text_embeddings(texts), atol=1e-6)


def test_missing_shipped_weights_fail_with_a_reinstall_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "PIPELINE_DIR", tmp_path / "pipeline")
    with pytest.raises(ModelLoadError, match="missing from the installed package"):
        cemaps.load_pipeline("cemaps/toyworld")
