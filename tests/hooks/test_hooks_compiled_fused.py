"""A compiled UNet (``torch.compile``, eager backend) and fused QKV projections (``fuse_qkv_projections``).

Issue 24 part 4: hooks never fired under compile (with ``_orig_mod.`` names), and fused projections
failed after generating. Images must stay bit-identical and the maps exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cemaps.errors import CemapsError
from cemaps.hooks import capture
from cemaps.probes import CrossAttentionProbe

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def _generate(pipe, prompt="a red mug", steps=3, **kwargs):
    return pipe(
        prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def _full_probe(**overrides) -> CrossAttentionProbe:
    settings = dict(timesteps="all", heads="all", tokens="all", spatial="native", dtype="float32", halves="both")
    settings.update(overrides)
    return CrossAttentionProbe(**settings)


def _hooks(modules) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def _stance() -> str:
    from torch._dynamo import eval_frame

    return eval_frame._stance.stance


def test_compiled_unet_keeps_plain_names_and_gives_the_uncompiled_maps(tiny_pipe):
    probe = _full_probe(layers="*attn2")
    with capture(tiny_pipe, [probe]) as eager_run:
        plain = _generate(tiny_pipe)
    original = tiny_pipe.unet
    tiny_pipe.unet = torch.compile(original, backend="eager")
    compiled_plain = _generate(tiny_pipe)  # traced before the capture: its code has no hooks
    before = _hooks([*original.modules(), tiny_pipe.unet])
    compiled_probe = _full_probe(layers="*attn2")
    with capture(tiny_pipe, [compiled_probe]) as run:
        images = _generate(tiny_pipe)
    assert np.array_equal(plain, compiled_plain) and np.array_equal(plain, images)
    assert _hooks([*original.modules(), tiny_pipe.unet]) == before
    assert _stance() == "default"
    assert compiled_probe.layer_names(tiny_pipe.unet) == probe.layer_names(original)
    expected, got = eager_run[probe], run[compiled_probe]
    assert list(got) == list(expected) and not any(name.startswith("_orig_mod") for name in got)
    for name, maps in expected.items():
        np.testing.assert_array_equal(got[name].values, maps.values, err_msg=name)
        assert got[name].coords["timestep"] == maps.coords["timestep"]


def test_compiled_unet_captures_only_the_selected_steps_and_restores_the_stance_after_an_error(tiny_pipe):
    tiny_pipe.unet = torch.compile(tiny_pipe.unet, backend="eager")
    probe = CrossAttentionProbe(timesteps=2)
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, steps=4)
    maps = run[probe][LAYER]
    assert maps.coords["step"] == [0, 4]
    with pytest.raises(ZeroDivisionError):
        with capture(tiny_pipe, [CrossAttentionProbe(timesteps="all")]):
            _generate(tiny_pipe, steps=2, callback_on_step_end=lambda *args: 1 / 0)
    assert _stance() == "default"


def test_a_unet_compiled_in_place_is_refused_before_any_call(tiny_pipe):
    tiny_pipe.unet.compile(backend="eager")
    before = _hooks(tiny_pipe.unet.modules())
    with pytest.raises(CemapsError, match=r"pipe.unet was compiled in place .*pipe.unet = torch.compile\(pipe.unet\)"):
        capture(tiny_pipe, [CrossAttentionProbe()])
    assert _hooks(tiny_pipe.unet.modules()) == before


def test_a_compiled_wrapper_the_pipeline_does_not_hold_is_refused_at_its_first_call(tiny_pipe):
    unet = torch.compile(tiny_pipe.unet, backend="eager")  # prompt-to-prompt style: the loop calls its own handle
    cond, _ = tiny_pipe.encode_prompt("a red mug", "cpu", 1, False)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pytest.raises(CemapsError, match=r"torch.compile wrapper that the pipeline does not hold.*pipe.unet = "):
            with capture(tiny_pipe, [CrossAttentionProbe()]):
                unet(latents, 900, encoder_hidden_states=cond)
    assert _hooks(tiny_pipe.unet.modules()) == 0


def _fused_reference(pipe, prompt, steps):
    """Independent route: softmax(Q K^T * scale) with K from the fused to_kv weights, per UNet call."""
    attn = pipe.unet.get_submodule(LAYER)
    seen = []

    def pre_hook(module, args, kwargs):
        hidden, context = args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        with torch.no_grad():
            inner = module.to_q.out_features
            key = F.linear(
                context, module.to_kv.weight[:inner], None if module.to_kv.bias is None else module.to_kv.bias[:inner]
            )
            q = module.to_q(hidden).unflatten(-1, (module.heads, -1)).transpose(1, 2)  # [rows, head, pixel, d]
            k = key.unflatten(-1, (module.heads, -1)).transpose(1, 2)
            seen.append(torch.softmax(q @ k.transpose(-1, -2) * module.scale, dim=-1))

    handle = attn.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        images = _generate(pipe, prompt, steps)
    finally:
        handle.remove()
    return images, seen  # per call: [rows, head, pixels, tokens]


def test_fused_qkv_projections_are_captured_exactly(tiny_pipe):
    tiny_pipe.fuse_qkv_projections(vae=False)
    processors = {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()}
    assert set(processors.values()) == {type(tiny_pipe.unet.get_submodule(LAYER).processor)}  # FusedAttnProcessor2_0
    plain, reference = _fused_reference(tiny_pipe, "a red mug", steps=3)
    probe = _full_probe(layers=[LAYER])
    with capture(tiny_pipe, [probe]) as run:
        images = _generate(tiny_pipe, "a red mug", steps=3)
    assert np.array_equal(plain, images)
    assert {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()} == processors
    maps = run[probe][LAYER].values[0]  # [token, step, half, head, y, x]
    tokens, steps, halves, heads, height, width = maps.shape
    assert steps == len(reference)
    for step, expected in enumerate(reference):
        expected = expected.view(halves, heads, height, width, tokens).permute(4, 0, 1, 2, 3).numpy()
        np.testing.assert_allclose(maps[:, step], expected, rtol=1e-5, atol=1e-7)


def test_unfused_again_reads_to_k(tiny_pipe):
    probe = _full_probe(layers=[LAYER])
    with capture(tiny_pipe, [probe]) as before:
        plain = _generate(tiny_pipe, steps=2)
    tiny_pipe.fuse_qkv_projections(vae=False)
    tiny_pipe.unfuse_qkv_projections(vae=False)  # restores the processors; to_kv stays on the modules
    again = _full_probe(layers=[LAYER])
    with capture(tiny_pipe, [again]) as after:
        images = _generate(tiny_pipe, steps=2)
    assert np.array_equal(plain, images)
    np.testing.assert_array_equal(after[again][LAYER].values, before[probe][LAYER].values)
