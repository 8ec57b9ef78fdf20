"""Every way diffusers accepts prompts works under capture: one labelled record per image, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemaps.hooks import capture
from cemaps.probes import CrossAttentionProbe

LAYER = "cross_attention/down_blocks.1.attentions.0.transformer_blocks.0.attn2"
PROMPTS = ["a cat", "an old lighthouse on a rocky shore"]


def _generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in range(n)]


def _run(pipe, probe=None, **kwargs):
    """(images, records) of one call; without a probe, a plain call (capture off)."""
    kwargs = {"num_inference_steps": 3, "output_type": "np", **kwargs}
    if probe is None:
        return pipe(**kwargs).images, None
    with capture(pipe, [probe]) as run:
        images = pipe(**kwargs).images
    return images, run.records()


def _tokens(pipe, text: str) -> list[str]:
    return pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(text).input_ids)


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_images_per_prompt_are_labelled_with_their_prompt(tiny_pipe, guidance_scale):
    # was an IndexError: token ids were indexed per image instead of per prompt
    halves = "both" if guidance_scale > 1 else "cond"
    call = dict(prompt=PROMPTS, num_images_per_prompt=2, guidance_scale=guidance_scale)
    plain, _ = _run(tiny_pipe, generator=_generators(4), **call)
    images, records = _run(
        tiny_pipe, CrossAttentionProbe(timesteps="all", halves=halves), generator=_generators(4), **call
    )
    assert np.array_equal(plain, images)
    assert len(records) == 4
    maps = [r[LAYER] for r in records]
    assert [m.coords["prompt"] for m in maps] == [[0], [0], [1], [1]]  # diffusers repeats each prompt in place
    assert [m.coords["token"] for m in maps] == [_tokens(tiny_pipe, p) for p in PROMPTS for _ in range(2)]
    assert maps[0].coords["half"] == (["uncond", "cond"] if guidance_scale > 1 else ["cond"])
    # image 3 (second image of the second prompt) has the maps it gets when generated alone
    _, alone = _run(
        tiny_pipe,
        CrossAttentionProbe(timesteps="all", halves=halves),
        prompt=PROMPTS[1],
        generator=torch.Generator().manual_seed(3),
        guidance_scale=guidance_scale,
    )
    np.testing.assert_allclose(maps[3].values.astype(np.float32), alone[0][LAYER].values.astype(np.float32), atol=2e-3)
    assert not np.allclose(maps[2].values, maps[3].values)


def test_negative_prompts_label_the_uncond_half(tiny_pipe):
    call = dict(prompt=PROMPTS, negative_prompt=["blurry", "dark and ugly"], generator=_generators(2))
    plain, _ = _run(tiny_pipe, **call)
    call["generator"] = _generators(2)
    images, records = _run(tiny_pipe, CrossAttentionProbe(halves="both"), **call)
    assert np.array_equal(plain, images)
    first, second = (r[LAYER] for r in records)
    # the token axis is the prompt's, not the negative prompt's (which is encoded second)
    assert first.coords["token"] == _tokens(tiny_pipe, "a cat")
    assert second.coords["uncond_token"][:4] == ["<|startoftext|>", "dark</w>", "and</w>", "ugly</w>"]
    assert first.coords["uncond_token"] == ["<|startoftext|>", "blurry</w>", "<|endoftext|>", "<|endoftext|>"]
    # the uncond half saw the negative prompt: different maps than with the default empty one
    _, default = _run(tiny_pipe, CrossAttentionProbe(halves="both"), prompt=PROMPTS, generator=_generators(2))
    assert not np.allclose(first.values[:, :, 0], default[0][LAYER].values[:, :, 0])
    np.testing.assert_array_equal(first.values[:, 0, 1], default[0][LAYER].values[:, 0, 1])  # same first cond step


@pytest.mark.parametrize("guidance_scale", [1.0, 0.5])
def test_without_guidance_there_is_one_cond_half(tiny_pipe, guidance_scale):
    call = dict(prompt=PROMPTS, guidance_scale=guidance_scale, generator=_generators(2))
    plain, _ = _run(tiny_pipe, **call)
    call["generator"] = _generators(2)
    images, records = _run(tiny_pipe, CrossAttentionProbe(timesteps="all", tokens="all"), **call)
    assert np.array_equal(plain, images)
    for record in records:
        maps = record[LAYER]
        assert maps.coords["half"] == ["cond"] and maps.shape[2] == 1 and "uncond_token" not in maps.coords
        np.testing.assert_allclose(maps.values.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_prompt_embeds_have_unknown_tokens(tiny_pipe, guidance_scale):
    tokenizer = tiny_pipe.tokenizer
    ids = tokenizer(PROMPTS, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = tiny_pipe.text_encoder(ids)[0]
    call = dict(prompt_embeds=embeds, guidance_scale=guidance_scale, num_images_per_prompt=2)
    plain, _ = _run(tiny_pipe, generator=_generators(4), **call)
    probe = CrossAttentionProbe(timesteps="all", dtype="float32")
    images, records = _run(tiny_pipe, probe, generator=_generators(4), **call)
    assert np.array_equal(plain, images)
    assert len(records) == 4
    maps = [r[LAYER] for r in records]
    seq = tokenizer.model_max_length
    # the negative prompt (encoded by the pipeline) is not taken for the prompt: tokens unknown, all positions kept
    assert all(m.coords["token"] == [None] * seq and m.shape[0] == seq for m in maps)
    assert [m.coords["prompt"] for m in maps] == [[0], [0], [1], [1]]  # found from equal adjacent embeddings
    # the same embeddings as from the text give the same images and maps
    text_images, text_records = _run(
        tiny_pipe,
        CrossAttentionProbe(timesteps="all", dtype="float32", tokens="all"),
        prompt=PROMPTS,
        generator=_generators(4),
        guidance_scale=guidance_scale,
        num_images_per_prompt=2,
    )
    assert np.array_equal(images, text_images)
    for embedded, texted in zip(maps, text_records, strict=False):
        np.testing.assert_array_equal(embedded.values, texted[LAYER].values)


def test_weighted_embeds_computed_inside_the_capture_keep_their_tokens(tiny_pipe):
    # prompt weighting: embeddings encoded while capturing, then changed; the one encoding that
    # matches neither half is the prompt's (the pipeline's own negative encoding matches the uncond half)
    tokenizer = tiny_pipe.tokenizer
    probe = CrossAttentionProbe()
    with capture(tiny_pipe, [probe]) as run:
        ids = tokenizer(
            "a red mug", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            embeds = tiny_pipe.text_encoder(ids)[0] * 1.1
        tiny_pipe(prompt_embeds=embeds, num_inference_steps=2, generator=_generators(1), output_type="np")
    assert run.records()[0][LAYER].coords["token"] == _tokens(tiny_pipe, "a red mug")


def test_several_pipeline_calls_come_out_in_order(tiny_pipe):
    probe = CrossAttentionProbe(timesteps=2)
    with capture(tiny_pipe, [probe]) as run:
        _run(tiny_pipe, prompt="a cat", generator=_generators(2), num_images_per_prompt=2)
        _run(tiny_pipe, prompt=PROMPTS, generator=_generators(2), guidance_scale=1.0)
    maps = [r[LAYER] for r in run.records()]
    assert [(m.coords["generation"], m.coords["prompt"]) for m in maps] == [
        ([0], [0]),
        ([0], [0]),
        ([1], [0]),
        ([1], [1]),
    ]
    assert maps[3].coords["token"] == _tokens(tiny_pipe, PROMPTS[1])
