"""The hook contract as types: removables safe to remove twice, one use per run, stated order."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from cemaps.errors import CemapsError
from cemaps.hooks import CaptureContext, capture
from cemaps.probes import CrossAttentionProbe, Removable

LAYER = "mid_block.attentions.0.transformer_blocks.0.attn2"


def _hook_count(pipe) -> int:
    modules = [*pipe.unet.modules(), *pipe.text_encoder.modules()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def _generate(pipe, steps=2):
    return pipe("a cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent")


def test_attach_returns_removables_that_are_safe_to_remove_twice(tiny_pipe):
    before = _hook_count(tiny_pipe)
    context = CaptureContext(tiny_pipe)
    probe = CrossAttentionProbe(timesteps="all")
    handles = [*context.attach(), *probe.attach(tiny_pipe, context)]
    assert handles and all(isinstance(h, Removable) for h in handles)
    _generate(tiny_pipe)  # the per-step hooks are attached while a captured step runs
    for handle in reversed(handles):
        handle.remove()
        handle.remove()
    assert _hook_count(tiny_pipe) == before


def test_closing_twice_and_exiting_after_close_leave_nothing(tiny_pipe):
    before = _hook_count(tiny_pipe)
    with capture(tiny_pipe, [CrossAttentionProbe()]) as run:
        _generate(tiny_pipe)
        run.close()
        run.close()
        assert _hook_count(tiny_pipe) == before
    assert _hook_count(tiny_pipe) == before


def test_a_finished_run_refuses_to_be_entered_again(tiny_pipe):
    before = _hook_count(tiny_pipe)
    run = capture(tiny_pipe, [CrossAttentionProbe()])
    with run:
        _generate(tiny_pipe)
    with pytest.raises(CemapsError, match="already used") as error:
        with run:
            pass
    assert "\n" not in str(error.value)
    assert _hook_count(tiny_pipe) == before
    assert len(run.records()) == 1  # the first capture's results are intact


def test_a_failed_run_refuses_to_be_entered_again(tiny_pipe):
    run = capture(tiny_pipe, [CrossAttentionProbe()])
    with pytest.raises(ZeroDivisionError):
        with run:
            raise ZeroDivisionError
    with pytest.raises(CemapsError, match="already used"):
        run.__enter__()


class _HandleLessProbe:
    name = "handle_less"

    def attach(self, pipe, context):
        return [object()]

    def collect(self, context):
        return []


def test_attach_returning_non_removables_is_refused_and_undone(tiny_pipe):
    before = _hook_count(tiny_pipe)
    with pytest.raises(TypeError, match="'handle_less': attach returned object objects without remove"):
        with capture(tiny_pipe, [CrossAttentionProbe(), _HandleLessProbe()]):
            pass
    assert _hook_count(tiny_pipe) == before


class _KeyFirstProcessor:
    """Delegates to diffusers' SDPA processor after projecting the key once, out of order."""

    def __init__(self):
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        attn.to_k(encoder_hidden_states if encoder_hidden_states is not None else hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def test_a_key_projected_before_its_query_is_an_error(tiny_pipe):
    tiny_pipe.unet.get_submodule(LAYER).set_processor(_KeyFirstProcessor())
    before = _hook_count(tiny_pipe)
    with pytest.raises(RuntimeError, match=rf"layer '{LAYER}': its key projection ran before its query"):
        with capture(tiny_pipe, [CrossAttentionProbe(layers=[LAYER])]):
            _generate(tiny_pipe)
    assert _hook_count(tiny_pipe) == before


def test_the_step_is_known_before_earlier_unet_pre_hooks_run(tiny_pipe):
    # the context's UNet pre-hook is prepended: a pre-hook registered before the capture sees this call's step
    run = capture(tiny_pipe, [CrossAttentionProbe()])
    seen = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(run.context.step_index))
    try:
        with run:
            _generate(tiny_pipe, steps=3)
    finally:
        handle.remove()
    assert seen == [0, 1, 2, 3]  # PNDM: 4 UNet calls for 3 steps
