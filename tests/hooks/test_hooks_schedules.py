"""Partial and irregular schedules: steps follow the UNet calls the pipeline actually makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    HeunDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)

from cemaps.errors import ConfigError
from cemaps.hooks import capture
from cemaps.probes import CrossAttentionProbe

LAYER = "cross_attention/mid_block.attentions.0.transformer_blocks.0.attn2"


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7)) * 2 - 1


def _mask() -> torch.Tensor:
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    return mask


def _call(pipe, **kwargs):
    return pipe(
        "a red mug on a table", image=_image(), generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def _captured(pipe, probe, **kwargs):
    with capture(pipe, [probe]) as run:
        images = _call(pipe, **kwargs)
    return images, run


def _img2img(tiny_pipe):
    pipe = StableDiffusionImg2ImgPipeline(**tiny_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inpaint(tiny_pipe, unet_channels: int):
    components = dict(tiny_pipe.components)
    if unet_channels == 9:  # an inpainting UNet: latents + mask + masked-image latents
        torch.manual_seed(0)
        components["unet"] = UNet2DConditionModel.from_config({**tiny_pipe.unet.config, "in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_img2img_captures_the_steps_it_runs(tiny_pipe):
    # was: RuntimeError: layer ... ran 6 of 11 captured steps
    pipe = _img2img(tiny_pipe)
    plain = _call(pipe, strength=0.5, num_inference_steps=10)
    images, run = _captured(
        pipe, CrossAttentionProbe(timesteps="all", tokens="all", dtype="float32"), strength=0.5, num_inference_steps=10
    )
    assert np.array_equal(plain, images)
    schedule = [int(t) for t in pipe.scheduler.timesteps]  # PNDM: 11 entries for 10 steps
    maps = run.records()[0][LAYER]
    start = len(schedule) - 6  # diffusers' get_timesteps: t_start = 10 - int(10 * 0.5)
    assert maps.coords["step"] == list(range(6))
    assert maps.coords["schedule_index"] == list(range(start, len(schedule)))
    assert maps.coords["timestep"] == schedule[start:]
    assert run.context.generations[0].timesteps == schedule[start:]
    np.testing.assert_allclose(maps.values.sum(axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("strength", "start"), [(0.9, 1), (0.8, 2)])
def test_a_loop_starting_on_a_repeated_timestep(tiny_pipe, strength, start):
    # PNDM's schedule repeats its second timestep (801 at positions 1 and 2): the first call alone
    # cannot tell where the loop began; the next call can (it repeats 801 only from position 1)
    pipe = _img2img(tiny_pipe)
    plain = _call(pipe, strength=strength, num_inference_steps=10)
    images, run = _captured(pipe, CrossAttentionProbe(timesteps="all"), strength=strength, num_inference_steps=10)
    assert np.array_equal(plain, images)
    schedule = [int(t) for t in pipe.scheduler.timesteps]
    assert schedule[1] == schedule[2]
    maps = run.records()[0][LAYER]
    assert maps.coords["schedule_index"] == list(range(start, len(schedule)))
    assert maps.coords["step"] == list(range(len(schedule) - start))
    assert maps.coords["timestep"] == schedule[start:]


def test_a_step_count_is_spread_over_the_steps_run(tiny_pipe):
    # timesteps=N picks N evenly spaced steps among those the pipeline runs, never skipped ones
    pipe = _img2img(tiny_pipe)
    _, run = _captured(pipe, CrossAttentionProbe(timesteps=3), strength=0.5, num_inference_steps=10)
    maps = run.records()[0][LAYER]
    schedule = [int(t) for t in pipe.scheduler.timesteps]
    assert maps.coords["step"] == [0, 2, 5]  # of 6 steps run: round(linspace(0, 5, 3))
    assert maps.coords["timestep"] == [schedule[5], schedule[7], schedule[10]]


def test_an_explicit_step_beyond_the_steps_run_is_named(tiny_pipe):
    pipe = _img2img(tiny_pipe)
    with pytest.raises(ConfigError, match="timesteps entry 8: outside the 6 denoising steps"):
        _captured(pipe, CrossAttentionProbe(timesteps=[0, 8]), strength=0.5, num_inference_steps=10)


@pytest.mark.parametrize("unet_channels", [4, 9])
def test_inpainting_with_partial_strength(tiny_pipe, unet_channels):
    # 4 channels: SD1 legacy inpainting (latents blended with the mask each step); 9: an inpainting UNet
    pipe = _inpaint(tiny_pipe, unet_channels)
    call = dict(mask_image=_mask(), strength=0.6, num_inference_steps=5)
    plain = _call(pipe, **call)
    images, run = _captured(pipe, CrossAttentionProbe(timesteps="all"), **call)
    assert np.array_equal(plain, images)
    schedule = [int(t) for t in pipe.scheduler.timesteps]
    maps = run.records()[0][LAYER]
    assert maps.coords["step"] == [0, 1, 2, 3]  # PNDM: 6 entries, t_start = 5 - int(5 * 0.6) = 2
    assert maps.coords["timestep"] == schedule[2:]


def test_second_order_scheduler_with_partial_strength(tiny_pipe):
    pipe = _img2img(tiny_pipe)
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    plain = _call(pipe, strength=0.5, num_inference_steps=4)
    images, run = _captured(pipe, CrossAttentionProbe(timesteps="all"), strength=0.5, num_inference_steps=4)
    assert np.array_equal(plain, images)
    schedule = [int(t) for t in pipe.scheduler.timesteps]  # Heun visits each timestep but the first twice
    start = 2 * pipe.scheduler.order  # t_start * order
    maps = run.records()[0][LAYER]
    assert maps.coords["schedule_index"] == list(range(start, len(schedule)))
    assert maps.coords["timestep"] == schedule[start:]
    assert len(set(maps.coords["timestep"])) < len(maps.coords["timestep"])


def test_an_interrupted_loop_records_the_steps_that_ran(tiny_pipe):
    def stop_after_step_1(pipe, step, timestep, callback_kwargs):
        if step == 1:
            pipe._interrupt = True
        return callback_kwargs

    probe = CrossAttentionProbe(timesteps="all")
    with capture(tiny_pipe, [probe]) as run:
        tiny_pipe(
            "a cat",
            num_inference_steps=5,
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=stop_after_step_1,
            output_type="latent",
        )
    maps = run.records()[0][LAYER]
    assert maps.coords["step"] == [0, 1]
    assert maps.coords["timestep"] == [int(t) for t in tiny_pipe.scheduler.timesteps[:2]]


def test_calls_without_text_encoding_are_told_apart_by_their_schedule(tiny_pipe):
    # prompt_embeds and no guidance: the text encoder never runs, so only the schedule separates calls
    pipe = _img2img(tiny_pipe)
    tokenizer = pipe.tokenizer
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = pipe.text_encoder(ids)[0]
    with capture(pipe, [CrossAttentionProbe(timesteps="all")]) as run:
        for steps, strength in ((10, 0.5), (10, 0.5), (4, 1.0)):
            pipe(
                prompt_embeds=embeds,
                image=_image(),
                strength=strength,
                num_inference_steps=steps,
                guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
            )
    generations = run.context.generations
    assert [len(g.timesteps) for g in generations] == [6, 6, 5]
    assert [r[LAYER].coords["generation"] for r in run.records()] == [[0], [1], [2]]
