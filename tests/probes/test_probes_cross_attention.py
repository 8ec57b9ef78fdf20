"""Cross-attention probabilities: exact, normalised, labelled, LoRA-aware."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig

from cemaps.errors import ConfigError
from cemaps.hooks import capture
from cemaps.probes import CrossAttentionProbe

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def _generate(pipe, prompt, steps=3, **kwargs):
    return pipe(
        prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def _reference_scores(pipe, layer, prompt, steps=3, **kwargs):
    """Independent route: record the layer's inputs and call attn.get_attention_scores on them."""
    attn = pipe.unet.get_submodule(layer)
    seen = []

    def pre_hook(module, args, kwargs_):
        hidden = args[0] if args else kwargs_["hidden_states"]
        context = kwargs_.get("encoder_hidden_states")
        with torch.no_grad():
            q = module.head_to_batch_dim(module.to_q(hidden))
            k = module.head_to_batch_dim(module.to_k(context))
            seen.append(module.get_attention_scores(q, k, None))

    handle = attn.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        _generate(pipe, prompt, steps, **kwargs)
    finally:
        handle.remove()
    return seen  # per step: [batch * heads, pixels, tokens], batch = (uncond, cond)


def _full_probe(**overrides):
    settings = dict(
        layers=[LAYER], timesteps="all", heads="all", tokens="all", spatial="native", dtype="float32", halves="both"
    )
    settings.update(overrides)
    return CrossAttentionProbe(**settings)


def test_probabilities_equal_get_attention_scores(tiny_pipe):
    reference = _reference_scores(tiny_pipe, LAYER, "a watercolor of a lighthouse")
    probe = _full_probe()
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, "a watercolor of a lighthouse")
    maps = run.records()[0][f"cross_attention/{LAYER}"]
    assert maps.axes == ("token", "step", "half", "head", "y", "x")
    assert maps.coords["half"] == ["uncond", "cond"]
    attn = tiny_pipe.unet.get_submodule(LAYER)
    tokens, steps, halves, heads, height, width = maps.shape
    assert (steps, halves, heads) == (len(reference), 2, attn.heads)  # PNDM makes 4 UNet calls for 3 steps
    for step, expected in enumerate(reference):
        expected = expected.view(2, heads, height, width, tokens).permute(4, 0, 1, 2, 3).numpy()
        np.testing.assert_array_equal(maps.values[:, step], expected)


def test_rows_sum_to_one_over_all_tokens(tiny_pipe):
    probe = _full_probe(layers="*attn2", heads="mean", spatial=2)
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, "three blue cubes on a green sphere")
    for name, maps in run.records()[0].items():
        np.testing.assert_allclose(maps.values.sum(axis=0), 1.0, rtol=1e-5, err_msg=name)
        assert max(maps.shape[-2:]) <= 2


def test_defaults_keep_prompt_tokens_mean_heads_pooled_float16_cond(tiny_pipe):
    probe = CrossAttentionProbe(timesteps=2)
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, "a red mug", steps=4)
    maps = run.records()[0][f"cross_attention/{LAYER}"]
    assert maps.values.dtype == np.float16
    assert maps.shape[:4] == (5, 2, 1, 1)
    assert maps.coords["token"] == ["<|startoftext|>", "a</w>", "red</w>", "mug</w>", "<|endoftext|>"]
    assert max(maps.shape[-2:]) <= 16
    assert maps.coords["half"] == ["cond"]


def test_batch_with_prompts_of_different_lengths(tiny_pipe):
    prompts = ["a cat", "an old lighthouse on a rocky shore under a stormy violet sky"]
    probe = CrossAttentionProbe(timesteps="all", halves="both")
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    with capture(tiny_pipe, [probe]) as run:
        tiny_pipe(prompts, num_inference_steps=3, generator=generators)
    short, long = (r[f"cross_attention/{LAYER}"] for r in run.records())
    ids = [tiny_pipe.tokenizer(p).input_ids for p in prompts]
    assert short.shape[0] == len(ids[0]) and long.shape[0] == len(ids[1])
    assert short.coords["token"][-1] == long.coords["token"][-1] == "<|endoftext|>"
    # each image's maps are its own: capturing it alone gives the same values
    with capture(tiny_pipe, [CrossAttentionProbe(timesteps="all", halves="both")]) as alone:
        tiny_pipe(prompts[1], num_inference_steps=3, generator=torch.Generator().manual_seed(1))
    single = alone.records()[0][f"cross_attention/{LAYER}"]
    np.testing.assert_allclose(long.values.astype(np.float32), single.values.astype(np.float32), atol=2e-3)
    stacked = run[probe][LAYER]
    assert stacked.axes[0] == "image" and stacked.shape[:2] == (2, len(ids[1]))
    assert np.isnan(stacked.values[0, len(ids[0]) :]).all()


def test_without_guidance_only_cond_exists(tiny_pipe):
    probe = CrossAttentionProbe(halves="cond")
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, "a cat", guidance_scale=1.0)
    assert run.records()[0][f"cross_attention/{LAYER}"].coords["half"] == ["cond"]
    probe = CrossAttentionProbe(halves="uncond")
    with pytest.raises(ConfigError, match="without classifier-free guidance"):
        with capture(tiny_pipe, [probe]):
            _generate(tiny_pipe, "a cat", guidance_scale=1.0)


def test_lora_wrapped_projections_are_seen_with_their_update(tiny_pipe):
    prompt = "a watercolor of a lighthouse"
    with capture(tiny_pipe, [_full_probe()]) as base_run:
        _generate(tiny_pipe, prompt)
    tiny_pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k"], init_lora_weights=False))
    assert "lora" in type(tiny_pipe.unet.get_submodule(LAYER).to_q).__module__
    reference = _reference_scores(tiny_pipe, LAYER, prompt)
    with capture(tiny_pipe, [_full_probe()]) as lora_run:
        _generate(tiny_pipe, prompt)
    lora_maps = lora_run.records()[0][f"cross_attention/{LAYER}"]
    base_maps = base_run.records()[0][f"cross_attention/{LAYER}"]
    tokens, _, _, heads, height, width = lora_maps.shape
    expected = reference[0].view(2, heads, height, width, tokens).permute(4, 0, 1, 2, 3).numpy()
    np.testing.assert_array_equal(lora_maps.values[:, 0], expected)
    assert not np.allclose(lora_maps.values, base_maps.values)


@pytest.mark.parametrize(
    ("option", "value"),
    [("heads", "max"), ("tokens", "some"), ("dtype", "int8"), ("halves", "left"), ("spatial", 0), ("spatial", "big")],
)
def test_bad_settings_are_named(option, value):
    with pytest.raises(ConfigError, match=option):
        CrossAttentionProbe(**{option: value})


def test_layers_scored_together_equal_layers_scored_alone(tiny_pipe, monkeypatch):
    # Layers that score alike are stacked into one get_attention_scores call per captured step;
    # every layer's maps must be exactly those it gets when captured on its own.
    from diffusers.models.attention_processor import Attention

    calls = []
    original = Attention.get_attention_scores
    monkeypatch.setattr(
        Attention,
        "get_attention_scores",
        lambda self, *args, **kwargs: calls.append(self) or original(self, *args, **kwargs),
    )
    prompt = "a watercolor of a lighthouse"
    with capture(tiny_pipe, [_full_probe(layers="*attn2")]) as together:
        _generate(tiny_pipe, prompt, steps=2)
    grouped_calls = len(calls)
    maps = together.records()[0]
    assert len(maps) == 16
    resolutions = {value.shape[-2:] for value in maps.values()}
    steps = next(iter(maps.values())).shape[1]
    assert grouped_calls <= len(resolutions) * steps < len(maps) * steps
    for name, value in maps.items():
        layer = name.removeprefix("cross_attention/")
        with capture(tiny_pipe, [_full_probe(layers=[layer])]) as alone:
            _generate(tiny_pipe, prompt, steps=2)
        np.testing.assert_array_equal(value.values, alone.records()[0][name].values, err_msg=name)


def test_pooled_mean_maps_equal_pooled_reference(tiny_pipe):
    # defaults (mean over heads, prompt tokens, cond half, pooling) against an independent route
    prompt = "a red mug on a table"
    reference = _reference_scores(tiny_pipe, LAYER, prompt, height=128, width=128)
    probe = CrossAttentionProbe(layers=[LAYER], timesteps="all", spatial=4, dtype="float32")
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, prompt, height=128, width=128)
    maps = run.records()[0][f"cross_attention/{LAYER}"]
    tokens = len(tiny_pipe.tokenizer(prompt).input_ids)
    attn = tiny_pipe.unet.get_submodule(LAYER)
    side = int(reference[0].shape[1] ** 0.5)
    assert maps.shape == (tokens, len(reference), 1, 1, 4, 4) and side == 8
    for step, scores in enumerate(reference):
        cond = scores.view(2, attn.heads, side, side, -1)[1].mean(dim=0)  # [y, x, token]
        pooled = torch.nn.functional.adaptive_avg_pool2d(cond.permute(2, 0, 1), (4, 4))[:tokens]
        np.testing.assert_allclose(maps.values[:, step, 0, 0], pooled.numpy(), rtol=1e-6, atol=1e-7)


def test_each_image_of_a_batch_gets_its_own_rows(tiny_pipe):
    # num_images_per_prompt with guidance: the UNet batch is (uncond x 4, cond x 4), prompts repeated in place
    prompts = ["a cat", "a watercolor of a lighthouse"]
    reference = _reference_scores(tiny_pipe, LAYER, prompts, num_images_per_prompt=2)
    with capture(tiny_pipe, [_full_probe()]) as run:
        _generate(tiny_pipe, prompts, num_images_per_prompt=2)
    records = [r[f"cross_attention/{LAYER}"] for r in run.records()]
    assert [r.coords["prompt"] for r in records] == [[0], [0], [1], [1]]
    tokens, _, _, heads, height, width = records[0].shape
    for image, maps in enumerate(records):
        for step, expected in enumerate(reference):
            rows = expected.view(2, 4, heads, height, width, tokens)[:, image]  # [half, head, y, x, token]
            np.testing.assert_array_equal(maps.values[:, step], rows.permute(4, 0, 1, 2, 3).numpy())
