"""Weight deltas: DreamBooth state-dict differences, LoRA deltas from peft, TI embedding statistics."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied
from cemaps.models.weight_deltas import (
    COLUMNS,
    block_position,
    effective_rank,
    lora_delta_state,
    parameter_kind,
    subspace_overlap,
    textual_inversion_stats,
    weight_delta_for,
    weight_delta_table,
)


@pytest.fixture(scope="module")
def base_state():
    return BaseWeights(tiny_pipeline(seed=0)).state_dict()


def save_lora(folder, rank: int = 2) -> str:
    pipe = tiny_pipeline(seed=0)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["attn2.to_k", "attn2.to_v"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return str(folder)


def test_identical_weights_give_an_empty_table(base_state):
    table = weight_delta_table(base_state, dict(base_state), "same")
    assert table.empty and list(table.columns) == list(COLUMNS)


def test_planted_change_in_one_module_gives_only_that_row(base_state):
    name = "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v.weight"
    tuned = dict(base_state)
    out_features, in_features = base_state[name].shape
    rank_one = torch.outer(torch.arange(1.0, out_features + 1.0), torch.ones(in_features))
    tuned[name] = base_state[name] + 0.01 * rank_one
    table = weight_delta_table(base_state, tuned, "planted", top_k=4)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.component, row.module, row.param) == (
        "unet",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v",
        "weight",
    )
    assert (row.block, row.block_index, row.resolution_level, row.kind) == ("up", 1, 2, "attn2.to_v")
    delta = 0.01 * rank_one
    assert row.fro_norm == pytest.approx(float(delta.norm()), rel=1e-5)
    assert row.rel_norm == pytest.approx(float(delta.norm() / base_state[name].norm()), rel=1e-5)
    assert row.effective_rank == pytest.approx(1.0, abs=1e-3)  # a rank-one update
    assert len(row.singular_values) == 4 and row.singular_values[0] == pytest.approx(row.fro_norm, rel=1e-4)
    assert 0.0 <= row.subspace_overlap <= 1.0


def test_dreambooth_delta_equals_state_dict_difference(tmp_path, base_state):
    tuned_pipe = tiny_pipeline(seed=1)
    tuned_pipe.unet.save_pretrained(tmp_path / "db")
    pipe = tiny_pipeline(seed=0)
    table = weight_delta_for(pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db")), base_state)
    tuned_unet = tuned_pipe.unet.state_dict()
    changed = {n for n, t in tuned_unet.items() if not torch.equal(t, base_state[f"unet.{n}"])}
    assert set(table.module + "." + table.param) == changed
    assert set(table.component) == {"unet"}
    for row in table.sample(5, random_state=0).itertuples():
        name = f"{row.module}.{row.param}"
        expected = (tuned_unet[name] - base_state[f"unet.{name}"]).norm()
        assert row.fro_norm == pytest.approx(float(expected), rel=1e-5)


def test_lora_delta_equals_merged_minus_base_weights(tmp_path, base_state):
    pipe = tiny_pipeline(seed=0)
    spec = PersonalizedSpec("l", "lora", save_lora(tmp_path / "lora"), scale=0.7)
    with applied(pipe, spec):
        deltas = lora_delta_state(pipe)
        assert len(deltas) == 2 * 16
        modules = dict(pipe.unet.named_modules())
        for name, delta in deltas.items():
            module = modules[name.removeprefix("unet.").removesuffix(".weight")]
            module.merge(adapter_names=["l"])
            merged_minus_base = module.base_layer.weight.detach() - base_state[name]
            module.unmerge()
            torch.testing.assert_close(delta, merged_minus_base, rtol=1e-5, atol=1e-6)
            assert delta.abs().sum() > 0


def test_lora_table_lists_exactly_the_wrapped_modules(tmp_path, base_state):
    pipe = tiny_pipeline(seed=0)
    table = weight_delta_for(
        pipe, PersonalizedSpec("l", "lora", save_lora(tmp_path / "lora", rank=2)), base_state, top_k=4
    )
    assert len(table) == 32 and set(table.kind) == {"attn2.to_k", "attn2.to_v"}
    assert (table.effective_rank <= 2 + 1e-4).all()  # a rank-2 update has at most 2 non-zero singular values
    assert table.singular_values.map(lambda s: s[2] < 1e-4 * s[0]).all()


def test_lora_delta_state_without_lora_is_refused():
    with pytest.raises(ModelLoadError, match="no LoRA-wrapped module"):
        lora_delta_state(tiny_pipeline(seed=0))


def test_textual_inversion_stats_finds_the_copied_token():
    pipe = tiny_pipeline(seed=0)
    vocab = pipe.text_encoder.get_input_embeddings().weight.detach()
    cat = pipe.tokenizer.convert_tokens_to_ids("cat</w>")
    stats = textual_inversion_stats(vocab[cat] * 3.0, vocab, pipe.tokenizer, k=3)
    assert stats["nearest_tokens"][0][0] == "cat</w>"
    assert stats["nearest_cosine"][0][0] == pytest.approx(1.0, abs=1e-5)
    assert stats["norm"][0] == pytest.approx(3.0 * float(vocab[cat].norm()), rel=1e-5)
    assert stats["norm_percentile"][0] > 99.0


def test_textual_inversion_stats_of_wrong_width_is_refused():
    pipe = tiny_pipeline(seed=0)
    with pytest.raises(ModelLoadError, match="width 768"):
        textual_inversion_stats(torch.zeros(768), pipe.text_encoder.get_input_embeddings().weight, pipe.tokenizer)


def test_weight_delta_for_textual_inversion_gives_one_row_per_vector(base_state):
    pipe = tiny_pipeline(seed=0)
    spec = PersonalizedSpec("ti", "textual_inversion", None, token="<v>", embedding=torch.randn(2, 32))
    table = weight_delta_for(pipe, spec, base_state)
    assert list(table.token) == ["<v>", "<v>_1"] and "<v>" not in pipe.tokenizer.get_vocab()


@pytest.mark.parametrize(
    ("module", "kind"),
    [
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "attn1.to_out"),
        ("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "ff"),
        ("up_blocks.3.resnets.2.conv_shortcut", "conv"),
        ("down_blocks.2.downsamplers.0.conv", "conv"),
        ("up_blocks.1.resnets.0.norm2", "norm"),
        ("down_blocks.1.attentions.1.proj_in", "proj"),
        ("time_embedding.linear_1", "time_emb"),
        ("down_blocks.0.resnets.0.time_emb_proj", "time_emb"),
        ("text_model.encoder.layers.0.mlp.fc1", "ff"),
        ("conv_norm_out", "norm"),
    ],
)
def test_parameter_kind(module, kind):
    assert parameter_kind(module) == kind


def test_block_position_counts_levels_from_the_state_dict():
    assert block_position("mid_block.resnets.0", 4, 4) == ("mid", 0, 3)
    assert block_position("up_blocks.0.resnets.0", 4, 4) == ("up", 0, 3)
    assert block_position("down_blocks.2.attentions.0", 3, 3) == ("down", 2, 2)
    assert block_position("conv_in", 4, 4) == ("other", None, None)


def test_spectral_helpers():
    assert effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert math.isnan(effective_rank(torch.zeros(3)))
    weight = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0]))
    assert subspace_overlap(weight, torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0])), k=2) == pytest.approx(1.0)
    assert subspace_overlap(weight, torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0])), k=2) == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_are_refused(base_state):
    name = "unet.conv_in.weight"
    with pytest.raises(ModelLoadError, match="top_k=0"):
        weight_delta_table(base_state, {}, "m", top_k=0)
    with pytest.raises(ModelLoadError, match="'unet.nope.weight' is not in the base"):
        weight_delta_table(base_state, {"unet.nope.weight": torch.zeros(1)}, "m")
    with pytest.raises(ModelLoadError, match=r"'unet.conv_in.weight' has shape \(1,\)"):
        weight_delta_table(base_state, {name: torch.zeros(1)}, "m")
