"""SDXL personalizations: LoRA (diffusers/peft, kohya SGM), Textual Inversion (clip_l/clip_g), DreamBooth.

Each is applied to the tiny SDXL, checked against an independent computation (the module's output
against ``W + scale * alpha / r * B @ A``, the token's vectors in both embedding tables, the swapped
weights tensor by tensor), and removed: every weight back bit-exactly, no peft wrapper left.

Why images after removal are compared to 1e-5 and not bit for bit: on this CPU a float32 Linear's
result depends on the memory alignment of its input (a 4-wide ``proj_in`` of the dummy UNet gives
different last bits for the same values at offsets 1-3 and 5-7 floats), and loading a LoRA moves
later allocations; the weights, which decide what the model computes, are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sdxl_checkpoints import sdxl_to_sgm

from cemaps.errors import ModelLoadError
from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied, check
from cemaps.models.tiny import tiny_pipeline, tiny_sdxl_pipeline
from cemaps.probes.weight_delta import weight_delta_for

RANK = 2


@pytest.fixture(scope="module")
def pipe():
    return tiny_sdxl_pipeline(seed=0)


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{c}.{k}": v.clone()
        for c in ("unet", "text_encoder", "text_encoder_2")
        for k, v in getattr(pipe, c).state_dict().items()
    }


def assert_restored(pipe, weights, images) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    now = snapshot(pipe)
    assert now.keys() == weights.keys()
    assert all(torch.equal(now[k], weights[k]) for k in weights)
    modules = [m for c in ("unet", "text_encoder", "text_encoder_2") for m in getattr(pipe, c).modules()]
    assert not any(isinstance(m, BaseTunerLayer) for m in modules)
    np.testing.assert_allclose(render(pipe), images, rtol=0, atol=1e-5)


def render(pipe, prompt="a <xl> dog"):
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def _pair(out_dim: int, in_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, in_dim, generator=generator), torch.randn(out_dim, RANK, generator=generator)


# (component, module path in the installed model, kohya name)
TARGETS = [
    (
        "unet",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
    ),
    (
        "unet",
        "mid_block.attentions.0.transformer_blocks.1.attn2.to_v",
        "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_v",
    ),
    (
        "unet",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_q",
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_q",
    ),
    ("text_encoder", "encoder.layers.0.self_attn.q_proj", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
    ("text_encoder", "encoder.layers.0.self_attn.out_proj", "lora_te1_text_model_encoder_layers_0_self_attn_out_proj"),
    (
        "text_encoder_2",
        "text_model.encoder.layers.1.self_attn.v_proj",
        "lora_te2_text_model_encoder_layers_1_self_attn_v_proj",
    ),
    (
        "text_encoder_2",
        "text_model.encoder.layers.1.self_attn.out_proj",
        "lora_te2_text_model_encoder_layers_1_self_attn_out_proj",
    ),
]
# Each text encoder's part names out_proj, as kohya's files do (they target q, k, v, out and the MLP):
# diffusers 0.42 tells its old text-encoder layout by a "to_out_lora" key and refuses a part without one.  # fmt: skip


def _lora_files(pipe, tmp_path):
    """The same update written as a diffusers/peft file and as a kohya SDXL file."""
    peft_state, kohya_state, expected = {}, {}, {}
    for seed, (component, path, kohya) in enumerate(TARGETS):
        layer = getattr(pipe, component).get_submodule(path)
        down, up = _pair(layer.out_features, layer.in_features, seed)
        peft_state[f"{component}.{path}.lora_A.weight"] = down
        peft_state[f"{component}.{path}.lora_B.weight"] = up
        kohya_state[f"{kohya}.lora_down.weight"] = down
        kohya_state[f"{kohya}.lora_up.weight"] = up
        kohya_state[f"{kohya}.alpha"] = torch.tensor(float(RANK))
        expected[(component, path)] = up @ down  # alpha = r: scaling 1
    save_file(peft_state, tmp_path / "peft.safetensors")
    save_file(kohya_state, tmp_path / "kohya.safetensors")
    return expected


@pytest.mark.parametrize(("name", "layout"), [("peft", "diffusers"), ("kohya", "kohya")])
def test_lora_touches_unet_and_both_text_encoders_exactly(pipe, tmp_path, name, layout):
    expected = _lora_files(pipe, tmp_path)
    spec = PersonalizedSpec(name, "lora", str(tmp_path / f"{name}.safetensors"), scale=0.5)
    assert check(pipe, spec) == layout
    before, weights = render(pipe), snapshot(pipe)
    x = torch.randn(3, 64)
    with applied(pipe, spec) as model:
        assert model.format == layout and model.n_tensors_changed == len(TARGETS)
        for (component, path), delta in expected.items():
            layer = getattr(pipe, component).get_submodule(path)
            base = layer.base_layer
            inputs = x[:, : base.in_features]
            reference = inputs @ (base.weight + 0.5 * delta).T + (base.bias if base.bias is not None else 0)
            torch.testing.assert_close(layer(inputs), reference, rtol=1e-5, atol=1e-5)
        assert np.abs(render(pipe) - before).max() > 1e-3
    assert_restored(pipe, weights, before)


def test_lora_weight_deltas_have_rows_per_component(pipe, tmp_path):
    expected = _lora_files(pipe, tmp_path)
    spec = PersonalizedSpec("kohya", "lora", str(tmp_path / "kohya.safetensors"))
    table = weight_delta_for(pipe, spec, BaseWeights(pipe).state_dict())
    assert sorted(set(table["component"])) == ["text_encoder", "text_encoder_2", "unet"]
    for (component, path), delta in expected.items():
        row = table[(table["component"] == component) & (table["module"] == path)].iloc[0]
        assert row["fro_norm"] == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-5)
    unet_rows = table[table["component"] == "unet"]
    assert set(unet_rows["block"]) == {"down", "mid", "up"}


def test_sd1_lora_on_sdxl_names_both_families(pipe, tmp_path):
    # SD v1.5's kohya layout at its real widths (CLIP ViT-L: 768)
    down, up = _pair(768, 768, 0)
    save_file(
        {
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down,
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up,
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": _pair(320, 768, 1)[
                0
            ],
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": _pair(320, 768, 1)[
                1
            ],
        },
        tmp_path / "sd15.safetensors",
    )
    with pytest.raises(ModelLoadError) as error:
        check(pipe, PersonalizedSpec("sd15", "lora", str(tmp_path / "sd15.safetensors")))
    message = str(error.value)
    assert "\n" not in message
    assert "SD 1.x" in message and "SDXL" in message, message


def test_sdxl_lora_on_sd1_names_both_families(tmp_path):
    sd = tiny_pipeline(seed=0)
    down, up = _pair(32, 32, 0)
    save_file(
        {"text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": down,
         "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": up},
        tmp_path / "xl.safetensors",
    )  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"is for SDXL \(key 'text_encoder_2\..*base model is SD 1\.x/2\.x"):
        check(sd, PersonalizedSpec("xl", "lora", str(tmp_path / "xl.safetensors")))


# --------------------------------------------------------------------------- Textual Inversion


@pytest.mark.parametrize("n_vectors", [1, 3])
def test_clip_l_clip_g_embedding_goes_into_both_encoders_under_one_token(pipe, tmp_path, n_vectors):
    generator = torch.Generator().manual_seed(n_vectors)
    vectors = {
        "clip_l": torch.randn(n_vectors, pipe.text_encoder.config.hidden_size, generator=generator),
        "clip_g": torch.randn(n_vectors, pipe.text_encoder_2.config.hidden_size, generator=generator),
    }
    save_file(vectors, tmp_path / "xl.safetensors")
    spec = PersonalizedSpec("ti", "textual_inversion", str(tmp_path / "xl.safetensors"), token="<xl>")
    assert check(pipe, spec) == "clip_l+clip_g"
    sizes = (len(pipe.tokenizer), len(pipe.tokenizer_2))
    tables = (
        pipe.text_encoder.get_input_embeddings().weight.clone(),
        pipe.text_encoder_2.get_input_embeddings().weight.clone(),
    )
    before, weights = render(pipe), snapshot(pipe)
    with applied(pipe, spec) as model:
        expected_tokens = ["<xl>"] + [f"<xl>_{i}" for i in range(1, n_vectors)]
        assert list(model.tokens) == expected_tokens
        for key, encoder, tokenizer in (
            ("clip_l", pipe.text_encoder, pipe.tokenizer),
            ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
        ):
            ids = tokenizer.convert_tokens_to_ids(expected_tokens)
            torch.testing.assert_close(encoder.get_input_embeddings().weight[ids], vectors[key], rtol=0, atol=0)
        assert np.abs(render(pipe) - before).max() > 1e-3
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2)) == sizes
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, tables[0])
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight, tables[1])
    assert_restored(pipe, weights, before)


def test_embedding_weight_deltas_have_rows_per_encoder(pipe, tmp_path):
    save_file({"clip_l": torch.randn(1, 24), "clip_g": torch.randn(1, 40)}, tmp_path / "xl.safetensors")
    spec = PersonalizedSpec("ti", "textual_inversion", str(tmp_path / "xl.safetensors"), token="<xl>")
    table = weight_delta_for(pipe, spec, {})
    assert list(table["component"]) == ["text_encoder", "text_encoder_2"]
    assert list(table["token"]) == ["<xl>", "<xl>"]


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"<sd>": torch.zeros(24)}, r"expected one entry per text encoder \['clip_l', 'clip_g'\] \(missing 'clip_l'\)"),
        ({"clip_l": torch.zeros(1, 24)}, r"missing 'clip_g'"),
        ({"clip_l": torch.zeros(1, 24), "clip_g": torch.zeros(1, 1280)}, r"expected \[40\] or \[n_vectors, 40\] for text_encoder_2 \(clip_g\)"),
        ({"clip_l": torch.zeros(2, 24), "clip_g": torch.zeros(1, 40)}, r"vectors differ in number"),
    ],
)  # fmt: skip
def test_embedding_refusals(pipe, tmp_path, state, match):
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError, match=match):
        check(pipe, PersonalizedSpec("bad", "textual_inversion", str(tmp_path / "bad.safetensors"), token="<b>"))


# --------------------------------------------------------------------------- DreamBooth


def _assert_swapped(pipe, tuned, components=("unet", "text_encoder", "text_encoder_2")):
    for component in components:
        ours, theirs = getattr(pipe, component).state_dict(), getattr(tuned, component).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), component


@pytest.mark.parametrize("form", ["pipeline-folder", "unet-folder", "single-file"])
def test_dreambooth_forms_swap_exactly_and_restore(pipe, tmp_path, form):
    tuned = tiny_sdxl_pipeline(seed=3)
    if form == "pipeline-folder":
        tuned.save_pretrained(tmp_path / "db")
        path, layout, swapped = tmp_path / "db", "diffusers-pipeline", ("unet", "text_encoder", "text_encoder_2")
    elif form == "unet-folder":
        tuned.unet.save_pretrained(tmp_path / "db")
        path, layout, swapped = tmp_path / "db", "diffusers-unet", ("unet",)
    else:
        save_file(sdxl_to_sgm(tuned), tmp_path / "db.safetensors")
        path, layout, swapped = tmp_path / "db.safetensors", "ldm", ("unet", "text_encoder", "text_encoder_2")
    spec = PersonalizedSpec("db", "dreambooth", str(path))
    assert check(pipe, spec) == layout
    before, weights, base = render(pipe), snapshot(pipe), BaseWeights(pipe)
    assert sorted(base.components) == ["text_encoder", "text_encoder_2", "unet"]
    with applied(pipe, spec, base=base):
        _assert_swapped(pipe, tuned, swapped)
    assert_restored(pipe, weights, before)


def test_sd1_dreambooth_on_sdxl_is_refused(pipe, tmp_path):
    tiny_pipeline(seed=1).unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ModelLoadError, match="another architecture|shape"):
        check(pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "unet")))
