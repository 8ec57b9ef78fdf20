"""Capture on SDXL: tokens labelled by tokenizer 1 with and without negative prompts, nothing changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemaps.hooks import capture
from cemaps.models.tiny import tiny_sdxl_pipeline
from cemaps.probes import CrossAttentionProbe

LAYER = "mid_block.attentions.0.transformer_blocks.1.attn2"


@pytest.fixture(scope="module")
def pipe():
    return tiny_sdxl_pipeline(seed=0)


def _generate(pipe, prompt="a lighthouse at dusk", **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


def _tokens(pipe, text: str) -> list[str]:
    return pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(text).input_ids)


@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_tokens_are_labelled_by_tokenizer_one_with_and_without_negative(pipe, negative):
    probe = CrossAttentionProbe(layers=LAYER, timesteps=2, halves="both")
    with capture(pipe, [probe]) as run:
        _generate(pipe, negative_prompt=negative, guidance_scale=5.0)
    maps = run[probe][LAYER]
    assert maps.coords["token"] == _tokens(pipe, "a lighthouse at dusk")
    assert maps.shape[maps.axis("token")] == len(_tokens(pipe, "a lighthouse at dusk"))
    assert maps.coords["token_features"] == ["text_encoder", "text_encoder_2"]
    if negative is None:
        # SDXL zeroes the unconditional context for an empty negative (force_zeros_for_empty_prompt):
        # no encoding to read, so no uncond labels rather than a guess
        assert "uncond_token" not in maps.coords
    else:
        kept = maps.shape[maps.axis("token")]
        assert maps.coords["uncond_token"] == (_tokens(pipe, negative) + ["<|endoftext|>"] * kept)[:kept]


def test_batches_of_prompts_and_images_per_prompt_are_labelled_per_image(pipe):
    prompts = ["a red circle", "two blue squares on grass"]
    probe = CrossAttentionProbe(layers=LAYER, timesteps=1)
    with capture(pipe, [probe]) as run:
        _generate(pipe, prompts, negative_prompt=["dark", "noise"], num_images_per_prompt=2, num_inference_steps=2)
    records = run.records()
    assert len(records) == 4
    labels = [record[f"cross_attention/{LAYER}"].coords["token"] for record in records]
    assert labels == [_tokens(pipe, prompts[0])] * 2 + [_tokens(pipe, prompts[1])] * 2


def test_clip_skip_still_labels(pipe):
    probe = CrossAttentionProbe(layers=LAYER, timesteps=1)
    with capture(pipe, [probe]) as run:
        _generate(pipe, negative_prompt="blur", clip_skip=1, num_inference_steps=2)
    assert run[probe][LAYER].coords["token"] == _tokens(pipe, "a lighthouse at dusk")


def test_images_and_added_conditions_are_bit_identical_with_capture(pipe):
    seen: list[dict] = []

    def keep_added_conditions(module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        seen.append({key: value.clone() for key, value in added.items()})

    handle = pipe.unet.register_forward_pre_hook(keep_added_conditions, with_kwargs=True)
    try:
        plain = _generate(pipe, negative_prompt="blur", guidance_scale=5.0)
        plain_added, seen[:] = list(seen), []
        probe = CrossAttentionProbe(timesteps="all", heads="all", spatial="native", tokens="all", halves="both")
        with capture(pipe, [probe]):
            captured = _generate(pipe, negative_prompt="blur", guidance_scale=5.0)
    finally:
        handle.remove()
    assert np.array_equal(plain, captured)
    assert len(seen) == len(plain_added) == 3
    for before, during in zip(plain_added, seen, strict=True):
        assert before.keys() == during.keys() == {"text_embeds", "time_ids"}
        assert all(torch.equal(before[key], during[key]) for key in before)


def test_rows_sum_to_one_over_all_tokens(pipe):
    probe = CrossAttentionProbe(timesteps="all", heads="all", spatial="native", tokens="all", halves="both")
    with capture(pipe, [probe]) as run:
        _generate(pipe, negative_prompt="blur", num_inference_steps=2)
    maps = run[probe]
    assert len(maps) == 12  # the dummy UNet's attn2 layers: 2x2 down, 3x2 up, 2 mid
    for name, array in maps.items():
        values = array.values.astype(np.float64)
        assert values.shape[array.axis("token")] == pipe.tokenizer.model_max_length, name
        np.testing.assert_allclose(values.sum(axis=array.axis("token")), 1.0, atol=2e-3, err_msg=name)


def test_probabilities_equal_get_attention_scores_on_an_sdxl_layer(pipe):
    """The last step's map of one layer against attn.get_attention_scores on the same q and k."""
    attn = pipe.unet.get_submodule(LAYER)
    inputs: dict[str, torch.Tensor] = {}

    def keep(module, args, kwargs):
        inputs["hidden"], inputs["context"] = args[0], kwargs["encoder_hidden_states"]

    handle = attn.register_forward_pre_hook(keep, with_kwargs=True)
    probe = CrossAttentionProbe(
        layers=LAYER, timesteps=[-1], heads="all", spatial="native", tokens="all", dtype="float32"
    )
    try:
        with capture(pipe, [probe]) as run:
            _generate(pipe, num_inference_steps=2, guidance_scale=1.0)
    finally:
        handle.remove()
    hidden, context = inputs["hidden"], inputs["context"]
    query = attn.head_to_batch_dim(attn.to_q(hidden))
    key = attn.head_to_batch_dim(attn.to_k(context))
    expected = attn.get_attention_scores(query, key).unflatten(0, (hidden.shape[0], attn.heads))[0]
    maps = run[probe][LAYER].values[0, :, 0, 0]  # [token, head, y, x]
    got = torch.from_numpy(maps).flatten(2).permute(1, 2, 0)  # [head, y*x, token]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
