"""Labels, masks, guidance halves, steps and layer order of DiT captures (SD3, Flux, PixArt-Sigma)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cemaps
from cemaps.errors import CemapsError, ConfigError, LayerNotFoundError
from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_pixart_sigma_pipeline, tiny_sd3_pipeline
from cemaps.probes.joint_scores import joint_text_block

PROMPTS = ["a red lighthouse", "a dog"]


def _run(pipe, probe, **kwargs):
    call = {"num_inference_steps": 3, "max_sequence_length": 12, "output_type": "np"}
    with cemaps.capture(pipe, [probe]) as run:
        pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **{**call, **kwargs})
    return run


@pytest.fixture(scope="module")
def pixart():
    return tiny_pixart_sigma_pipeline(seed=0)


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline(seed=0, version="3.5")


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline(seed=0)


def test_pixart_gives_one_record_per_image_with_both_halves_labelled(pixart):
    run = _run(pixart, cemaps.CrossAttentionProbe(timesteps=2, halves="both"), clean_caption=False)
    records = run.records()
    assert len(records) == len(PROMPTS)
    maps = records[0]["cross_attention/transformer_blocks.0.attn2"]
    assert maps.coords["half"] == ["uncond", "cond"]
    assert maps.coords["token"] == ["▁a", "▁red", "▁lighthouse", "</s>"]
    assert records[1]["cross_attention/transformer_blocks.0.attn2"].coords["token"] == ["▁a", "▁dog", "</s>"]
    assert not any(name.endswith(":text_mass") for name in records[0])  # cross-attention: all mass is text


def test_pixart_masked_padding_gets_exactly_zero(pixart):
    run = _run(
        pixart,
        cemaps.CrossAttentionProbe(timesteps="all", tokens="all", heads="all", dtype="float32", spatial="native"),
        clean_caption=False,
    )
    for image, record in enumerate(run.records()):
        maps = record["cross_attention/transformer_blocks.1.attn2"]
        padding = np.array([token == "<pad>" for token in maps.coords["token"]])
        assert padding.sum() == 12 - (4, 3)[image]
        assert np.all(maps.values[padding] == 0.0)
        np.testing.assert_allclose(maps.values.sum(axis=0), 1.0, atol=1e-5)  # rows sum to 1 over the prompt


def test_sd3_tokens_carry_their_stream_clip_then_t5(sd3):
    run = _run(sd3, cemaps.CrossAttentionProbe(timesteps=1, halves="both"))
    maps = run.records()[0]["cross_attention/transformer_blocks.1.attn"]
    clip = "text_encoder+text_encoder_2"
    assert maps.coords["stream"] == [clip] * 5 + ["text_encoder_3"] * 4
    assert maps.coords["token"] == [
        "<|startoftext|>",
        "a</w>",
        "red</w>",
        "lighthouse</w>",
        "<|endoftext|>",
        "▁a",
        "▁red",
        "▁lighthouse",
        "</s>",
    ]
    assert maps.coords["position"] == [0, 1, 2, 3, 4, 77, 78, 79, 80]
    assert maps.coords["uncond_token"][0] == "<|startoftext|>"


def test_text_mass_is_the_whole_text_row_share(sd3):
    probe = cemaps.CrossAttentionProbe(timesteps=1, tokens="all", heads="all", dtype="float32", spatial="native")
    record = _run(sd3, probe).records()[0]
    maps = record["cross_attention/transformer_blocks.0.attn"]
    mass = record["cross_attention/transformer_blocks.0.attn:text_mass"]
    np.testing.assert_allclose(maps.values.sum(axis=0), mass.values, atol=1e-6)
    assert 0.0 < mass.values.min() and mass.values.max() < 1.0  # the rest goes to image keys


def test_flux_dev_has_no_uncond_half_and_labels_t5_pieces(flux):
    run = _run(flux, cemaps.CrossAttentionProbe(timesteps=2), height=64, width=64, guidance_scale=3.5)
    maps = run.records()[1]["cross_attention/single_transformer_blocks.1.attn"]
    assert maps.coords["half"] == ["cond"]
    assert maps.coords["token"] == ["▁a", "▁dog", "</s>"]
    assert maps.coords["stream"] == ["text_encoder_2"] * 3
    with pytest.raises(ConfigError, match="without classifier-free guidance"):
        _run(flux, cemaps.CrossAttentionProbe(timesteps=2, halves="uncond"), height=64, width=64)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flow_matching_steps_are_placed_in_the_schedule(request, family):
    pipe = request.getfixturevalue(family)
    size = {"height": 64, "width": 64} if family == "flux" else {}
    maps = _run(pipe, cemaps.CrossAttentionProbe(timesteps="all"), **size).records()[0]
    layer = next(iter(maps.values()))
    schedule = [int(t) for t in pipe.scheduler.timesteps]
    assert layer.coords["schedule_index"] == [0, 1, 2]
    assert layer.coords["timestep"] == schedule
    assert schedule[0] == 1000 and len(set(schedule)) == 3


def test_layers_are_every_text_attending_layer_by_depth(flux, sd3, pixart):
    probe = cemaps.CrossAttentionProbe()
    assert probe.layer_names(flux.transformer) == [
        "transformer_blocks.0.attn",
        "transformer_blocks.1.attn",
        "single_transformer_blocks.0.attn",
        "single_transformer_blocks.1.attn",
    ]
    assert probe.layer_names(sd3.transformer) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert probe.layer_names(pixart.transformer) == ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"]
    with pytest.raises(LayerNotFoundError, match="'transformer_blocks.0.attn2' is not a text-attention layer"):
        cemaps.CrossAttentionProbe(layers=["transformer_blocks.0.attn2"]).layer_names(sd3.transformer)


def test_fused_qkv_projections_are_refused_and_no_hook_survives(flux):
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in flux.transformer.modules())  # noqa: E731
    before = hooks()
    flux.transformer.fuse_qkv_projections()
    try:
        with pytest.raises(CemapsError, match="fused QKV projections"):
            _run(flux, cemaps.CrossAttentionProbe(), height=64, width=64)
    finally:
        flux.transformer.unfuse_qkv_projections()
    assert hooks() == before


def test_chunked_block_equals_one_softmax_over_the_whole_row():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 3, 50, 8, generator=generator), torch.randn(2, 3, 70, 8, generator=generator)
    probs = torch.softmax(query @ key.transpose(-1, -2) / 8**0.5, dim=-1)
    kept = torch.tensor([0, 4, 9])
    block, mass = joint_text_block(query, key, slice(60, 70), kept, max_values=2 * 3 * 70 * 7)  # 7-query chunks
    torch.testing.assert_close(block, probs[..., 60:][..., kept])
    torch.testing.assert_close(mass, probs[..., 60:].sum(-1))
    mean_block, mean_mass = joint_text_block(query, key, slice(0, 10), mean_heads=True)
    torch.testing.assert_close(mean_block, probs[..., :10].mean(1, keepdim=True))
    torch.testing.assert_close(mean_mass, probs[..., :10].sum(-1).mean(1, keepdim=True))


def test_flux_true_cfg_split_calls_are_refused(flux):
    with pytest.raises(CemapsError, match="called the transformer twice at timestep"):
        _run(flux, cemaps.CrossAttentionProbe(), height=64, width=64, negative_prompt="blurry", true_cfg_scale=2.0)


def test_pixart_given_only_embeddings_is_refused(pixart):
    embeds, mask, _, _ = pixart.encode_prompt(PROMPTS, do_classifier_free_guidance=False, clean_caption=False)
    with pytest.raises(CemapsError, match="cannot tell whether the transformer batch holds guidance halves"):
        with cemaps.capture(pixart, [cemaps.CrossAttentionProbe()]):
            pixart(prompt_embeds=embeds, prompt_attention_mask=mask, num_inference_steps=2, output_type="np")
