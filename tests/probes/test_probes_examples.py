"""The README's example probe (``OutputNormProbe``) under the pipeline calls of issue 24 part 4.

Its norms are checked against the layer's own outputs recorded by a plain forward hook without
capture: a callback that turns guidance off mid-run leaves the unconditional half NaN from then on,
and uncond/cond run as two UNet calls give the norms of the batched loop.
"""

from __future__ import annotations

import numpy as np
import torch

from cemaps.hooks import capture
from cemaps.probes.examples import OutputNormProbe

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
PROMPTS = ["a red mug", "a cat on a mat"]


def _own_norms(pipe, run):
    """Each UNet call's output norms of LAYER, ``[rows]`` per call, from a hook of the test's own."""
    seen = []
    handle = pipe.unet.get_submodule(LAYER).register_forward_hook(
        lambda module, args, output: seen.append(output.detach().flatten(1).norm(dim=1).float())
    )
    try:
        out = run()
    finally:
        handle.remove()
    return out, seen


def _dynamic(pipe, off_after=1, steps=4):
    def callback(pipe, i, t, kwargs):  # diffusers' dynamic-CFG recipe (PR #7761)
        if i == off_after:
            pipe._guidance_scale = 0.0
            kwargs["prompt_embeds"] = kwargs["prompt_embeds"].chunk(2)[-1]
        return kwargs

    return pipe(
        PROMPTS,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images


def _loop(pipe, cond, uncond, split, steps=3, scale=7.5):
    """prompt-to-prompt's loop: uncond and cond as two UNet calls per step (``split``), or batched."""
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


def test_guidance_turned_off_mid_run_leaves_the_uncond_half_nan(tiny_pipe):
    plain, calls = _own_norms(tiny_pipe, lambda: _dynamic(tiny_pipe))
    probe = OutputNormProbe()
    with capture(tiny_pipe, [probe]) as run:
        images = _dynamic(tiny_pipe)
    np.testing.assert_array_equal(plain, images)
    records = run[probe][LAYER]
    assert records.axes == ("image", "step", "half") and records.coords["half"] == ["uncond", "cond"]
    assert [len(c) for c in calls] == [4, 4, 2, 2, 2]  # PNDM's warm-up call, then guidance off after step 1
    for step, rows in enumerate(calls):
        for image in range(len(PROMPTS)):
            if len(rows) == 2 * len(PROMPTS):
                assert records.values[image, step, 0] == rows[image]  # uncond rows first
                assert records.values[image, step, 1] == rows[len(PROMPTS) + image]
            else:
                assert np.isnan(records.values[image, step, 0])
                assert records.values[image, step, 1] == rows[image]


def test_uncond_and_cond_as_two_calls_give_the_batched_loops_norms(tiny_pipe):
    cond, uncond = tiny_pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    norms = {}
    for split in (True, False):
        probe = OutputNormProbe()
        with capture(tiny_pipe, [probe]) as run:
            _loop(tiny_pipe, cond, uncond, split)
        norms[split] = run[probe][LAYER]
    steps = len(tiny_pipe.scheduler.timesteps)  # PNDM repeats one timestep: 4 for 3 steps
    assert norms[True].shape == norms[False].shape == (len(PROMPTS), steps, 2)
    assert not np.isnan(norms[True].values).any()
    np.testing.assert_allclose(norms[True].values, norms[False].values, rtol=1e-5)
