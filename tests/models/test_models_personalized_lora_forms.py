"""LoRA files in the layouts people download, each applied to the tiny pipeline and checked against the hand-computed delta.

Key layouts, as written by the tools that make them:
- kohya sd-scripts ``networks/lora.py``: ``lora_unet_<diffusers module path, dots -> underscores>`` and
  ``lora_te_text_model_encoder_layers_<i>_self_attn_q_proj`` (transformers-4 CLIP names, with
  ``text_model``), each with ``.lora_down.weight`` ``[r, in]`` (convolutions ``[r, in, kh, kw]``),
  ``.lora_up.weight`` ``[out, r]`` (``[out, r, 1, 1]``) and a scalar ``.alpha``; applied as
  ``W + multiplier * alpha / r * up @ down``; SDXL files use ``lora_te1_``/``lora_te2_`` and SGM
  block names (``lora_unet_input_blocks_4_1_...``).
- diffusers/peft (``save_lora_weights``): ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` and
  ``text_encoder.<path>...``; files saved under transformers 4 have ``text_encoder.text_model.``,
  under transformers 5 not.
- legacy diffusers attention processors (``load_attn_procs``, diffusers < 0.21):
  ``unet.<block>.attn1.processor.to_q_lora.down.weight``; diffusers' own
  ``lora_conversion_utils._convert_non_diffusers_lora_to_diffusers`` converts kohya text-encoder
  keys to ``text_encoder.text_model.encoder.layers.<i>.self_attn.to_q_lora.down.weight``.
- LyCORIS: LoHa ``.hada_w1_a``, LoKr ``.lokr_w1``, (IA)^3 ``.on_input`` — not loadable by diffusers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.personalized import PersonalizedSpec, applied, check, lora_load
from cemaps.models.personalized.spec import adapter_names
from cemaps.models.weight_deltas import lora_delta_state, weight_delta_for

UNET_TARGETS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
)
TE_TARGETS = (
    "encoder.layers.0.self_attn.q_proj",
    "encoder.layers.1.self_attn.v_proj",
    "encoder.layers.1.self_attn.out_proj",
    "encoder.layers.0.mlp.fc1",
)
CONV_TARGETS = ("down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.2.conv2")
RANK, ALPHA, SCALE = 2, 1.0, 0.7


@pytest.fixture()
def pipe():
    return tiny_pipeline(seed=0)


def random_lora(pipe, unet=UNET_TARGETS, text_encoder=TE_TARGETS, seed: int = 0) -> dict[tuple[str, str], tuple]:
    """(component, installed module path) -> (down, up) with random values for every target."""
    generator = torch.Generator().manual_seed(seed)
    modules = {"unet": dict(pipe.unet.named_modules()), "text_encoder": dict(pipe.text_encoder.named_modules())}
    entries = {}
    for component, targets in (("unet", unet), ("text_encoder", text_encoder)):
        for path in targets:
            layer = modules[component][path]
            if isinstance(layer, torch.nn.Conv2d):
                down_shape, up_shape = (RANK, layer.in_channels, *layer.kernel_size), (layer.out_channels, RANK, 1, 1)
            else:
                down_shape, up_shape = (RANK, layer.in_features), (layer.out_features, RANK)
            entries[(component, path)] = (
                torch.randn(down_shape, generator=generator) * 0.3,
                torch.randn(up_shape, generator=generator) * 0.3,
            )
    return entries


def kohya_file(entries, alpha: float | None = ALPHA) -> dict[str, torch.Tensor]:
    state = {}
    for (component, path), (down, up) in entries.items():
        flat = (
            "lora_unet_" + path.replace(".", "_")
            if component == "unet"
            else "lora_te_text_model_" + path.replace(".", "_")
        )
        state |= {f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up}
        if alpha is not None:
            state[f"{flat}.alpha"] = torch.tensor(alpha)
    return state


def peft_file(entries, te_prefix: str) -> dict[str, torch.Tensor]:
    state = {}
    for (component, path), (down, up) in entries.items():
        key = f"unet.{path}" if component == "unet" else f"text_encoder.{te_prefix}{path}"
        state |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up}
    return state


def legacy_file(entries) -> dict[str, torch.Tensor]:
    """Attention-processor names: ``<block>.processor.to_q_lora.down.weight``; text encoder ``self_attn.to_q_lora``."""
    te_proj = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
    state = {}
    for (component, path), (down, up) in entries.items():
        if component == "unet":
            block, proj = path.removesuffix(".0").rsplit(".", 1)
            key = f"unet.{block}.processor.{proj}_lora"
        else:
            block, proj = path.rsplit(".", 1)
            key = f"text_encoder.text_model.{block}.{te_proj[proj]}_lora"
        state |= {f"{key}.down.weight": down, f"{key}.up.weight": up}
    return state


def hand_delta(down: torch.Tensor, up: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * up @ down`` in the weight's shape (convolutions flattened to [out, in*kh*kw] and back)."""
    return (factor * up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])


def encode(text_encoder, pipe) -> torch.Tensor:
    ids = pipe.tokenizer(["a watercolor of a lighthouse"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def assert_applied_exactly(pipe, tmp_path, state, entries, factor: float, expected_format: str):
    """The loaded deltas equal the hand-computed ones, the text encoder's output equals W + delta's, and the base returns bit-exactly."""
    save_file(state, tmp_path / "lora.safetensors")
    spec = PersonalizedSpec("l", "lora", str(tmp_path / "lora.safetensors"), scale=SCALE)
    base_te, base_out = copy.deepcopy(pipe.text_encoder), encode(pipe.text_encoder, pipe)
    base_state = {
        k: v.clone()
        for k, v in [
            *pipe.unet.state_dict().items(),
            *(("te." + k, v) for k, v in pipe.text_encoder.state_dict().items()),
        ]
    }
    assert check(pipe, spec) == expected_format
    reference_te = copy.deepcopy(base_te)
    with torch.no_grad():
        for (component, path), (down, up) in entries.items():
            if component == "text_encoder":
                reference_te.get_submodule(path).weight += hand_delta(down, up, SCALE * factor)
    with applied(pipe, spec) as model:
        assert model.format == expected_format and model.n_tensors_changed == len(entries)
        deltas = lora_delta_state(pipe, "l")
        assert set(deltas) == {f"{c}.{p}.weight" for c, p in entries}
        for (component, path), (down, up) in entries.items():
            torch.testing.assert_close(
                deltas[f"{component}.{path}.weight"], hand_delta(down, up, SCALE * factor), rtol=1e-5, atol=1e-6
            )
        if any(c == "text_encoder" for c, _ in entries):
            personalized_out = encode(pipe.text_encoder, pipe)
            torch.testing.assert_close(personalized_out, encode(reference_te, pipe), rtol=1e-5, atol=1e-5)
            assert not torch.equal(personalized_out, base_out)
    assert not any(isinstance(m, BaseTunerLayer) for m in [*pipe.unet.modules(), *pipe.text_encoder.modules()])
    after = {
        k: v
        for k, v in [
            *pipe.unet.state_dict().items(),
            *(("te." + k, v) for k, v in pipe.text_encoder.state_dict().items()),
        ]
    }
    assert after.keys() == base_state.keys() and all(torch.equal(after[k], base_state[k]) for k in after)
    assert torch.equal(encode(pipe.text_encoder, pipe), base_out)


@pytest.mark.parametrize("with_text_encoder", [False, True])
def test_kohya_lora_loads_exactly(pipe, tmp_path, with_text_encoder):
    entries = random_lora(pipe, text_encoder=TE_TARGETS if with_text_encoder else ())
    assert_applied_exactly(pipe, tmp_path, kohya_file(entries), entries, ALPHA / RANK, "kohya")


def test_kohya_lora_without_alpha_uses_alpha_equal_rank(pipe, tmp_path):
    entries = random_lora(pipe)
    assert_applied_exactly(pipe, tmp_path, kohya_file(entries, alpha=None), entries, 1.0, "kohya")


@pytest.mark.parametrize(("with_text_encoder", "te_prefix"), [(False, ""), (True, "text_model."), (True, "")])
def test_diffusers_peft_lora_loads_exactly(pipe, tmp_path, with_text_encoder, te_prefix):
    entries = random_lora(pipe, text_encoder=TE_TARGETS if with_text_encoder else ())
    assert_applied_exactly(pipe, tmp_path, peft_file(entries, te_prefix), entries, 1.0, "diffusers")


def test_legacy_attention_processor_lora_loads_exactly(pipe, tmp_path):
    entries = random_lora(pipe, text_encoder=TE_TARGETS[:3])  # legacy processors named attention projections only
    assert_applied_exactly(pipe, tmp_path, legacy_file(entries), entries, 1.0, "legacy")


def test_locon_convolution_lora_loads_exactly(pipe, tmp_path):
    entries = random_lora(pipe, unet=UNET_TARGETS[:1] + CONV_TARGETS, text_encoder=())
    assert entries[("unet", CONV_TARGETS[0])][0].shape == (RANK, 32, 3, 3)
    assert_applied_exactly(pipe, tmp_path, kohya_file(entries), entries, ALPHA / RANK, "kohya")


def test_text_encoder_lora_gives_text_encoder_rows_in_the_weight_delta_table(pipe, tmp_path):
    from cemaps.models.personalized import BaseWeights

    entries = random_lora(pipe, unet=UNET_TARGETS[:1])
    save_file(kohya_file(entries), tmp_path / "k.safetensors")
    table = weight_delta_for(
        pipe, PersonalizedSpec("k", "lora", str(tmp_path / "k.safetensors")), BaseWeights(pipe).state_dict()
    )
    assert sorted(table["component"].unique()) == ["text_encoder", "unet"]
    te_rows = table[table["component"] == "text_encoder"].set_index("module")
    assert set(te_rows.index) == set(TE_TARGETS)
    for path in TE_TARGETS:
        down, up = entries[("text_encoder", path)]
        assert te_rows.loc[path, "fro_norm"] == pytest.approx(
            float(hand_delta(down, up, ALPHA / RANK).norm()), rel=1e-5
        )
    assert te_rows.loc["encoder.layers.0.self_attn.q_proj", "kind"] == "proj"


# --------------------------------------------------------------------------- refused by name


def refusal(pipe, tmp_path, state, method="lora", **spec):
    save_file(state, tmp_path / "f.safetensors")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(ModelLoadError) as caught:
        check(pipe, PersonalizedSpec("m", method, str(tmp_path / "f.safetensors"), **spec))
    with pytest.raises(ModelLoadError) as caught_applied:
        with applied(pipe, PersonalizedSpec("m", method, str(tmp_path / "f.safetensors"), **spec)):
            pass
    assert str(caught.value) == str(caught_applied.value) and "\n" not in str(caught.value)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    return str(caught.value)


def test_full_original_sd_checkpoint_given_as_lora_is_named(pipe, tmp_path):
    message = refusal(
        pipe,
        tmp_path,
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(32),
        },
    )
    assert "looks like a full original-SD checkpoint" in message and "use method: dreambooth" in message


def test_full_unet_given_as_lora_is_named(pipe, tmp_path):
    message = refusal(pipe, tmp_path, {k: v.clone() for k, v in pipe.unet.state_dict().items()})
    assert "looks like a full model" in message and "use method: dreambooth" in message


def test_sdxl_kohya_lora_is_named(pipe, tmp_path):
    state = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(RANK, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, RANK),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(RANK, 768),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, RANK),
    }
    message = refusal(pipe, tmp_path, state)
    assert "is for SDXL (key 'lora_" in message and "the base model is SD 1.x/2.x (StableDiffusionPipeline)" in message


def test_sd2_lora_is_named_by_its_context_width(pipe, tmp_path):
    entries = random_lora(pipe, unet=UNET_TARGETS[1:2], text_encoder=())
    state = kohya_file({key: (torch.zeros(RANK, 1024), up) for key, (down, up) in entries.items()})
    message = refusal(pipe, tmp_path, state)
    assert "input width 32, not 1024 (width 1024 is SD 2.x's; this base has 32)" in message


@pytest.mark.parametrize(
    ("suffixes", "name"),
    [
        ((".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"), "a LyCORIS LoHa"),
        ((".lokr_w1", ".lokr_w2"), "a LyCORIS LoKr"),
        ((".on_input", ".weight"), "a LyCORIS (IA)^3"),
    ],
)
def test_lycoris_types_diffusers_cannot_load_are_named(pipe, tmp_path, suffixes, name):
    state = {
        f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k{s}": torch.ones(2, 2) for s in suffixes
    }
    message = refusal(pipe, tmp_path, state)
    assert f"looks like {name}" in message


def test_embedding_given_as_lora_is_named(pipe, tmp_path):
    message = refusal(pipe, tmp_path, {"<sks>": torch.zeros(32)})
    assert "looks like a Textual Inversion embedding" in message and "use method: textual_inversion" in message


def test_lora_given_as_embedding_is_named(pipe, tmp_path):
    message = refusal(pipe, tmp_path, kohya_file(random_lora(pipe)), method="textual_inversion", token="<x>")
    assert "looks like a LoRA" in message and "use method: lora" in message


def test_lora_given_as_dreambooth_is_named(pipe, tmp_path):
    message = refusal(pipe, tmp_path, peft_file(random_lora(pipe), ""), method="dreambooth")
    assert "looks like a LoRA" in message and "use method: lora" in message


def test_nan_lora_is_refused_naming_the_tensor(pipe, tmp_path):
    state = kohya_file(random_lora(pipe))
    key = "lora_te_text_model_encoder_layers_1_self_attn_v_proj.lora_up.weight"
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    assert f"tensor {key!r} has 1 non-finite value(s)" in refusal(pipe, tmp_path, state)


def test_lora_without_its_up_matrix_is_refused(pipe, tmp_path):
    state = peft_file(random_lora(pipe), "")
    state.pop("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.lora_B.weight")
    assert "without its up matrix" in refusal(pipe, tmp_path, state)


def test_a_loader_that_skips_modules_is_caught(pipe, tmp_path, monkeypatch):
    """If the loader (another diffusers/peft version) silently skipped the text-encoder keys, cemaps refuses instead of measuring a UNet-only LoRA."""
    entries = random_lora(pipe)
    save_file(kohya_file(entries), tmp_path / "k.safetensors")
    monkeypatch.setattr(lora_load, "inject_text_encoder_adapter", lambda *args, **kwargs: None)
    with pytest.raises(
        ModelLoadError, match=r"did not load 'lora_te_text_model_encoder_layers_0_mlp_fc1\.lora_down\.weight'"
    ):
        with applied(pipe, PersonalizedSpec("k", "lora", str(tmp_path / "k.safetensors"))):
            pass
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules())
    assert not adapter_names(pipe)


def test_a_loader_that_drops_alphas_is_caught(pipe, tmp_path, monkeypatch):
    """If diffusers ignored kohya's alphas (scaling 1 instead of alpha/r = 0.5), every delta would be twice too large: refused."""
    save_file(kohya_file(random_lora(pipe)), tmp_path / "k.safetensors")
    original = type(pipe).load_lora_into_unet

    def without_alphas(cls, state, metadata=None, **kwargs):
        metadata = {k: (v if k != "unet.lora_alpha" else metadata["unet.r"]) for k, v in metadata.items()}
        return original(state, metadata=metadata, **kwargs)

    monkeypatch.setattr(type(pipe), "load_lora_into_unet", classmethod(without_alphas))
    with pytest.raises(ModelLoadError, match=r"other factors or scaling than .*expected scale\*alpha/r = 0\.5\)"):
        with applied(pipe, PersonalizedSpec("k", "lora", str(tmp_path / "k.safetensors"))):
            pass
    assert not adapter_names(pipe)
