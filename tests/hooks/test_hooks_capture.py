"""The capture mechanism: nothing changes, nothing stays attached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemaps.errors import ConfigError, LayerNotFoundError
from cemaps.hooks import capture, select_modules, selected_steps
from cemaps.probes import CrossAttentionProbe


def _hook_count(pipe) -> int:
    modules = [*pipe.unet.modules(), *pipe.text_encoder.modules()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def _generate(pipe, prompt="a lighthouse at dusk", steps=4, **kwargs):
    return pipe(
        prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def test_images_are_bit_identical_with_and_without_capture(tiny_pipe):
    plain = _generate(tiny_pipe)
    with capture(tiny_pipe, [CrossAttentionProbe(timesteps="all", heads="all", spatial="native")]):
        captured = _generate(tiny_pipe)
    assert np.array_equal(plain, captured)


def test_no_hook_survives_the_block(tiny_pipe):
    before = _hook_count(tiny_pipe)
    with capture(tiny_pipe, [CrossAttentionProbe()]):
        assert _hook_count(tiny_pipe) > before
        _generate(tiny_pipe, steps=2)
    assert _hook_count(tiny_pipe) == before


def test_no_hook_survives_an_exception(tiny_pipe):
    before = _hook_count(tiny_pipe)
    with pytest.raises(ZeroDivisionError):
        with capture(tiny_pipe, [CrossAttentionProbe()]):
            _generate(tiny_pipe, steps=2)
            raise ZeroDivisionError
    assert _hook_count(tiny_pipe) == before


def test_no_hook_survives_a_failed_attach(tiny_pipe):
    before = _hook_count(tiny_pipe)
    good, bad = CrossAttentionProbe(), CrossAttentionProbe(layers="*nothing*")
    bad.name = "bad"
    with pytest.raises(LayerNotFoundError, match="nothing"):
        with capture(tiny_pipe, [good, bad]):
            pass
    assert _hook_count(tiny_pipe) == before


def test_results_are_unavailable_while_open(tiny_pipe):
    probe = CrossAttentionProbe()
    with capture(tiny_pipe, [probe]) as run:
        with pytest.raises(RuntimeError, match="still open"):
            run[probe]


def test_layer_selection_by_glob_list_and_callable(tiny_pipe):
    unet = tiny_pipe.unet
    assert len(select_modules(unet, "*attn2")) == 16
    exact = "mid_block.attentions.0.transformer_blocks.0.attn2"
    assert list(select_modules(unet, [exact])) == [exact]
    by_predicate = select_modules(unet, lambda name, m: name.startswith("up_blocks.3") and name.endswith("attn2"))
    assert len(by_predicate) == 3


def test_unknown_layer_names_the_layer(tiny_pipe):
    with pytest.raises(LayerNotFoundError, match="unknown layer 'mid_block.attentions.0.transformer_blocks.0.attn9'"):
        select_modules(tiny_pipe.unet, "mid_block.attentions.0.transformer_blocks.0.attn9")


def test_probe_refuses_self_attention_by_exact_name(tiny_pipe):
    with pytest.raises(LayerNotFoundError, match="is not a cross-attention layer"):
        CrossAttentionProbe(layers=["mid_block.attentions.0.transformer_blocks.0.attn1"]).layer_names(tiny_pipe.unet)


def test_glob_matching_nothing_is_an_error(tiny_pipe):
    with pytest.raises(LayerNotFoundError, match=r"layer glob '\*attn7' matches no cross-attention layer"):
        CrossAttentionProbe(layers="*attn7").layer_names(tiny_pipe.unet)


@pytest.mark.parametrize(
    ("spec", "total", "expected"),
    [("all", 4, (0, 1, 2, 3)), (3, 20, (0, 10, 19)), (1, 5, (0,)), (50, 4, (0, 1, 2, 3)), ([0, -1], 5, (0, 4))],
)
def test_selected_steps(spec, total, expected):
    assert selected_steps(spec, total) == expected


@pytest.mark.parametrize("spec", ["some", 0, [0, 9], [1.5]])
def test_selected_steps_rejects_bad_specs(spec):
    with pytest.raises(ConfigError):
        selected_steps(spec, 5)


def test_timesteps_are_read_from_the_unet_call(tiny_pipe):
    probe = CrossAttentionProbe(timesteps=[0, 2])
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, steps=4)
    generation = run.context.generations[0]
    assert generation.timesteps == [int(t) for t in tiny_pipe.scheduler.timesteps]
    record = run.records()[0]
    maps = next(iter(record.values()))
    assert maps.coords["step"] == [0, 2]
    assert maps.coords["timestep"] == [generation.timesteps[0], generation.timesteps[2]]


def test_two_pipeline_calls_make_two_generations(tiny_pipe):
    probe = CrossAttentionProbe(timesteps=2)
    with capture(tiny_pipe, [probe]) as run:
        _generate(tiny_pipe, "a cat", steps=3)
        _generate(tiny_pipe, ["a dog", "a red fox in snow"], steps=3)
    assert [g.batch_size for g in run.context.generations] == [1, 2]
    tokens = [next(iter(r.values())).coords["token"] for r in run.records()]
    assert tokens[0] == ["<|startoftext|>", "a</w>", "cat</w>", "<|endoftext|>"]
    assert tokens[2][-2:] == ["snow</w>", "<|endoftext|>"]
