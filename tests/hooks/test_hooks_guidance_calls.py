"""Guidance as pipelines and users actually run it: turned off mid-run, split in two calls, a loop of one's own.

Issue 24 part 4: each used to crash after the compute was spent. Every test compares the images (or
latents) with and without capture, and maps with ``attn.get_attention_scores`` on the layer's own inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemaps.errors import ConfigError
from cemaps.hooks import capture
from cemaps.probes import CrossAttentionProbe

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
PROMPTS = ["a red mug", "a cat on a mat"]


def _full_probe(**overrides) -> CrossAttentionProbe:
    settings = dict(
        layers=[LAYER], timesteps="all", heads="all", tokens="all", spatial="native", dtype="float32", halves="both"
    )
    settings.update(overrides)
    return CrossAttentionProbe(**settings)


def _reference(pipe, run_model):
    """Independent route: each call's ``get_attention_scores`` on the layer's inputs, per UNet call.

    Run without capture: its own ``to_q``/``to_k`` calls would be seen by the probe's hooks.
    """
    attn = pipe.unet.get_submodule(LAYER)
    seen = []

    def pre_hook(module, args, kwargs):
        hidden, context = args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        with torch.no_grad():
            q, k = module.head_to_batch_dim(module.to_q(hidden)), module.head_to_batch_dim(module.to_k(context))
            seen.append(module.get_attention_scores(q, k, None))

    handle = attn.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        out = run_model()
    finally:
        handle.remove()
    return out, seen  # per call: [rows * heads, pixels, tokens]


def _guidance_off_after(step: int):
    """diffusers' dynamic-CFG recipe (PR #7761): guidance off, prompt_embeds cut to the cond half."""

    def callback(pipe, i, t, kwargs):
        if i == step:
            pipe._guidance_scale = 0.0
            kwargs["prompt_embeds"] = kwargs["prompt_embeds"].chunk(2)[-1]
        return kwargs

    return callback


def _generate(pipe, prompt=PROMPTS, steps=4, **kwargs):
    return pipe(
        prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def _dynamic(pipe, step=1, steps=4):
    return _generate(
        pipe,
        steps=steps,
        callback_on_step_end=_guidance_off_after(step),
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )


def test_guidance_turned_off_mid_run_keeps_one_record_per_image_and_labels_each_step(tiny_pipe):
    plain, reference = _reference(tiny_pipe, lambda: _dynamic(tiny_pipe))
    processors = dict(tiny_pipe.unet.attn_processors)
    probe = _full_probe()
    with capture(tiny_pipe, [probe]) as run:
        images = _dynamic(tiny_pipe)
    assert np.array_equal(plain, images)
    assert dict(tiny_pipe.unet.attn_processors) == processors
    records = run.records()
    assert len(records) == len(PROMPTS)
    maps = records[1][f"cross_attention/{LAYER}"]
    # PNDM: 5 UNet calls for 4 steps; the callback runs after steps 0 and 1 (its i counts loop iterations)
    assert maps.coords["step_halves"] == ["uncond+cond", "uncond+cond", "cond", "cond", "cond"]
    assert maps.coords["half"] == ["uncond", "cond"]
    tokens, steps, halves, heads, height, width = maps.shape
    for step, expected in enumerate(reference):
        rows = expected.shape[0] // heads
        expected = expected.view(rows, heads, height, width, tokens)[-1].permute(3, 0, 1, 2).numpy()  # image 1, cond
        np.testing.assert_array_equal(maps.values[:, step, 1], expected)
        assert np.isnan(maps.values[:, step, 0]).all() == (rows == len(PROMPTS))  # no uncond half: NaN


def test_guidance_off_from_a_later_step_and_cond_only_capture(tiny_pipe):
    probe = CrossAttentionProbe(timesteps="all")
    with capture(tiny_pipe, [probe]) as run:
        _dynamic(tiny_pipe, step=2, steps=5)
    records = run.records()
    assert len(records) == len(PROMPTS)
    for record in records:
        maps = record[f"cross_attention/{LAYER}"]
        assert maps.coords["step_halves"] == ["uncond+cond"] * 3 + ["cond"] * 3
        assert maps.coords["half"] == ["cond"]
        assert np.isfinite(maps.values).all()


def _split_loop(pipe, cond, uncond, split=True, steps=3, scale=7.5):
    """prompt-to-prompt's "low resource" loop: uncond and cond as two UNet calls per step."""
    pipe.scheduler.set_timesteps(steps)
    latents = torch.randn((cond.shape[0], 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            if split:
                noise_uncond = pipe.unet(latents, t, encoder_hidden_states=uncond).sample
                noise_cond = pipe.unet(latents, t, encoder_hidden_states=cond).sample
            else:
                both = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                noise_uncond, noise_cond = both.chunk(2)
            latents = pipe.scheduler.step(noise_uncond + scale * (noise_cond - noise_uncond), t, latents).prev_sample
    return latents


def test_uncond_and_cond_as_two_calls_are_one_step_with_both_halves(tiny_pipe):
    _generate(tiny_pipe, "a lighthouse", steps=2)  # leaves pipe.do_classifier_free_guidance on
    cond, uncond = tiny_pipe.encode_prompt("a red mug", "cpu", 1, True)
    plain, reference = _reference(tiny_pipe, lambda: _split_loop(tiny_pipe, cond, uncond))
    probe = _full_probe()
    with capture(tiny_pipe, [probe]) as run:
        cond, uncond = tiny_pipe.encode_prompt("a red mug", "cpu", 1, True)  # inside: tokens are read
        latents = _split_loop(tiny_pipe, cond, uncond)
    assert torch.equal(plain, latents)
    (record,) = run.records()
    maps = record[f"cross_attention/{LAYER}"]
    assert maps.coords["timestep"] == tiny_pipe.scheduler.timesteps.tolist()  # PNDM repeats 334: two steps there
    assert maps.coords["step_halves"] == ["uncond+cond"] * 4
    assert maps.coords["token"][:5] == ["<|startoftext|>", "a</w>", "red</w>", "mug</w>", "<|endoftext|>"]
    assert maps.coords["uncond_token"][:2] == ["<|startoftext|>", "<|endoftext|>"]
    tokens, steps, halves, heads, height, width = maps.shape
    assert steps * 2 == len(reference)
    for call, expected in enumerate(reference):  # uncond, cond, uncond, cond, ...
        expected = expected.view(heads, height, width, tokens).permute(3, 0, 1, 2).numpy()
        np.testing.assert_array_equal(maps.values[:, call // 2, call % 2], expected)


def test_split_calls_give_the_maps_of_the_batched_loop(tiny_pipe):
    cond, uncond = tiny_pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    runs = {}
    for split in (True, False):
        probe = _full_probe(layers="*attn2", timesteps=2)
        with capture(tiny_pipe, [probe]) as run:
            _split_loop(tiny_pipe, cond, uncond, split=split)
        runs[split] = run.records()
    assert len(runs[True]) == len(runs[False]) == len(PROMPTS)
    for split_record, batched_record in zip(runs[True], runs[False], strict=True):
        assert split_record.keys() == batched_record.keys()
        for name, maps in split_record.items():
            assert maps.coords["step_halves"] == batched_record[name].coords["step_halves"] == ["uncond+cond"] * 2
            np.testing.assert_allclose(maps.values, batched_record[name].values, atol=1e-6, err_msg=name)


def test_a_loop_of_ones_own_after_a_pipeline_call_labels_each_call_by_its_timestep(tiny_pipe):
    _generate(tiny_pipe, "a lighthouse", steps=2)  # a stale guidance flag must not leak into the loop
    cond, _ = tiny_pipe.encode_prompt("a red mug", "cpu", 1, False)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    given = [901, 517, 33]  # not the scheduler's schedule
    with torch.no_grad():
        plain = [tiny_pipe.unet(latents, t, encoder_hidden_states=cond).sample for t in given]
    probe = CrossAttentionProbe(timesteps="all", halves="both")
    with capture(tiny_pipe, [probe]) as run:
        with torch.no_grad():
            outputs = [tiny_pipe.unet(latents, t, encoder_hidden_states=cond).sample for t in given]
    assert all(torch.equal(a, b) for a, b in zip(plain, outputs, strict=True))
    maps = run[probe][LAYER]
    assert maps.shape[0] == 1
    assert maps.coords["timestep"] == given
    assert maps.coords["step"] == [0, 1, 2]
    assert maps.coords["step_halves"] == ["cond"] * 3
    assert maps.coords["half"] == ["cond"]


def test_a_loop_of_ones_own_with_batched_halves_is_labelled_uncond_cond(tiny_pipe):
    cond, uncond = tiny_pipe.encode_prompt("a red mug", "cpu", 1, True)
    probe = CrossAttentionProbe(timesteps="all", halves="both")
    with capture(tiny_pipe, [probe]) as run:
        _split_loop(tiny_pipe, cond, uncond, split=False, steps=2)
    maps = run[probe][LAYER]
    assert maps.shape[0] == 1
    assert maps.coords["half"] == ["uncond", "cond"]
    assert set(maps.coords["step_halves"]) == {"uncond+cond"}


def test_uncond_asked_of_a_call_without_guidance_is_refused_at_its_first_step(tiny_pipe):
    calls = []
    tiny_pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ConfigError, match="without classifier-free guidance"):
        with capture(tiny_pipe, [CrossAttentionProbe(halves="uncond")]):
            _generate(tiny_pipe, "a cat", guidance_scale=1.0)
    assert len(calls) == 1
