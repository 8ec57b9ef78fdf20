"""LoRA files whose scaling or variant used to load wrong without a word (issue 24), written by the tools that make them.

Each file is saved from a peft-wrapped "source" pipeline (the model as its trainer left it) with
diffusers' own writers (``lora_writers``: ``save_lora_weights`` with ``_collate_lora_metadata``,
and ``convert_state_dict_to_kohya``). The ground truth is the source model's own output and each
module's update computed from its factors and the config the test chose: cemaps' applied model
must reproduce both, which checks the scaling and the DoRA magnitudes without reusing any alpha
cemaps read. The same kinds on SDXL and on text encoders: ``test_models_personalized_lora_variants.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_writers import assert_formula, assert_reproduces, save_diffusers, save_kohya
from lora_writers import source_pipe as _source_pipe
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.personalized import PersonalizedSpec, applied, check
from cemaps.models.weight_deltas import lora_delta_state

UNET_MODULES = ["to_q", "to_k"]


def source_pipe(unet: LoraConfig | None, text_encoder: LoraConfig | None):
    """The tiny SD 1.x pipeline with a trainer's adapters on the UNet and/or the text encoder."""
    configs = {"unet": unet, "text_encoder": text_encoder}
    return _source_pipe({component: config for component, config in configs.items() if config is not None})


# --------------------------------------------------------------------------- 1. scaling in the header


@pytest.mark.parametrize(
    ("unet", "text_encoder"),
    [
        (LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), None),
        (LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "fc1"])),
        (LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES, rank_pattern={"attn2.to_k": 3}, alpha_pattern={"attn2.to_k": 1.5}), None),
        (LoraConfig(r=4, lora_alpha=8, target_modules=UNET_MODULES, use_rslora=True), None),
    ],
    ids=["unet", "unet+text_encoder", "rank_and_alpha_patterns", "rslora"],
)  # fmt: skip
def test_alpha_only_in_the_header_is_applied(tmp_path, unet, text_encoder):
    source = source_pipe(unet, text_encoder)
    path = save_diffusers(source, tmp_path)
    with safe_open(str(path), "pt") as handle:
        assert not any(k.endswith(".alpha") for k in handle.keys())
    assert_formula(source, assert_reproduces(source, path, "diffusers"))


def test_the_header_scaling_is_what_the_file_needs(tmp_path):
    """The same factors without the header load with scaling 1: a quarter of the update (alpha 8 / r 2 = 4)."""
    source = source_pipe(LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), None)
    with_header = assert_reproduces(source, save_diffusers(source, tmp_path / "a"), "diffusers")
    base = tiny_pipeline(seed=0)
    with applied(base, PersonalizedSpec("m", "lora", str(save_diffusers(source, tmp_path / "b", metadata=False)))):
        without = lora_delta_state(base, "m")
    for name, delta in with_header.items():
        torch.testing.assert_close(delta, 4 * without[name], rtol=1e-5, atol=1e-6)


def edit_header(path: Path, edit) -> Path:
    state = load_file(path)
    with safe_open(str(path), "pt") as handle:
        header = dict(handle.metadata())
    save_file(state, path, metadata=edit(header))
    return path


def edit_config(field: str, value) -> callable:
    def edit(header):
        config = json.loads(header["lora_adapter_metadata"])
        config[field] = value
        return {**header, "lora_adapter_metadata": json.dumps(config)}

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: {**h, "lora_adapter_metadata": "{r: 2"}, "is not valid JSON"),
        (edit_config("unet.r", 4), "gives unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k rank 4"),
        (edit_config("unet.lora_alpha", "eight"), "lacks a numeric r/lora_alpha"),
        (edit_config("unet.layer_replication", [[0, 1]]), "sets layer_replication=[[0, 1]]"),
        (edit_config("unet.use_dora", True), "use_dora=True, but unet"),
    ],
    ids=["malformed", "rank", "alpha", "unverified_option", "dora_flag"],
)
def test_a_header_that_cannot_fix_the_scaling_is_refused(tmp_path, edit, message):
    source = source_pipe(LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), None)
    path = edit_header(save_diffusers(source, tmp_path), edit)
    base = tiny_pipeline(seed=0)
    with pytest.raises(ModelLoadError, match="refusing|cannot|not valid|use_dora") as caught:
        check(base, PersonalizedSpec("m", "lora", str(path)))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ModelLoadError):
        with applied(base, PersonalizedSpec("m", "lora", str(path))):
            pass
    assert not any(isinstance(m, BaseTunerLayer) for m in base.unet.modules())


def test_a_component_missing_from_the_header_is_refused(tmp_path):
    """diffusers would build a default LoraConfig (r=8, alpha=8) for the text encoder: not the file's scaling."""
    source = source_pipe(
        LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), LoraConfig(r=2, target_modules=["q_proj"])
    )
    path = save_diffusers(source, tmp_path)
    edit_header(path, lambda h: {**h, "lora_adapter_metadata": json.dumps({k: v for k, v in json.loads(h["lora_adapter_metadata"]).items() if k.startswith("unet.")})})  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"configs for \['unet'\] but not for 'text_encoder'"):
        check(tiny_pipeline(seed=0), PersonalizedSpec("m", "lora", str(path)))


def test_kohya_alpha_only_in_the_header_is_applied(tmp_path):
    source = source_pipe(LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"]))  # fmt: skip
    header = {"ss_network_alpha": "8.0", "ss_network_dim": "2", "ss_network_module": "networks.lora"}
    assert_reproduces(source, save_kohya(source, tmp_path / "k.safetensors", header, alphas=False), "kohya")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"ss_network_alpha": "Dynamic", "ss_network_dim": "Dynamic"}, "network alpha is 'Dynamic', not a number"),
        ({"ss_network_alpha": "8.0", "ss_network_dim": "4"}, "has rank 2 but the header's network dim is 4"),
    ],
)
def test_kohya_header_alpha_that_cannot_fix_the_scaling_is_refused(tmp_path, header, message):
    source = source_pipe(LoraConfig(r=2, lora_alpha=8, target_modules=UNET_MODULES), None)
    path = save_kohya(source, tmp_path / "k.safetensors", header, alphas=False)
    with pytest.raises(ModelLoadError, match="scaling cannot be determined") as caught:
        check(tiny_pipeline(seed=0), PersonalizedSpec("m", "lora", str(path)))
    assert message in str(caught.value)


# --------------------------------------------------------------------------- 2. kohya text-encoder subsets


@pytest.mark.parametrize(
    ("unet", "te_modules"),
    [
        (None, ["q_proj", "k_proj", "v_proj", "out_proj"]),
        (None, ["q_proj"]),
        (None, ["k_proj", "fc2"]),
        (UNET_MODULES + ["to_v", "to_out.0", "proj_in", "conv1"], ["v_proj"]),
    ],
    ids=["attention_only", "one_projection", "mixed", "unet_with_partial_text_encoder"],
)
def test_kohya_text_encoder_subsets_load_exactly(tmp_path, unet, te_modules):
    # convert_state_dict_to_kohya writes alpha = r, so the source trains with alpha = r
    unet_config = LoraConfig(r=2, lora_alpha=2, target_modules=unet) if unet else None
    source = source_pipe(unet_config, LoraConfig(r=2, lora_alpha=2, target_modules=te_modules))
    path = save_kohya(source, tmp_path / "k.safetensors")
    deltas = assert_reproduces(source, path, "kohya")
    assert_formula(source, deltas)
    assert {name.split(".")[-2] for name in deltas if name.startswith("text_encoder.")} == set(te_modules)


# --------------------------------------------------------------------------- 3. DoRA and Tucker LoCon


@pytest.mark.parametrize("writer", ["diffusers", "kohya"])
def test_dora_loads_with_its_magnitudes(tmp_path, writer):
    source = source_pipe(LoraConfig(r=2, lora_alpha=2, target_modules=UNET_MODULES, use_dora=True), None)
    if writer == "diffusers":
        path = save_diffusers(source, tmp_path)
    else:
        path = save_kohya(source, tmp_path / "k.safetensors")
    assert_formula(source, assert_reproduces(source, path, writer))


def test_text_encoder_dora_loads_with_its_magnitudes(tmp_path):
    """transformers' load_adapter (peft 0.21) kept ||W|| as the magnitudes; cemaps' own peft injection keeps the file's."""
    source = source_pipe(None, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], use_dora=True))
    assert_formula(source, assert_reproduces(source, save_diffusers(source, tmp_path), "diffusers"))


def test_dora_scale_over_input_columns_is_refused(tmp_path):
    source = source_pipe(LoraConfig(r=2, lora_alpha=4, target_modules=["to_q"], use_dora=True), None)
    path = save_kohya(source, tmp_path / "k.safetensors")
    state = load_file(path)
    state = {k: (torch.ones(1, 32) if k.endswith(".dora_scale") else v) for k, v in state.items()}
    save_file(state, path)
    with pytest.raises(ModelLoadError, match=r"dora_scale' has shape \(1, 32\); expected \[32, 1\]"):
        check(tiny_pipeline(seed=0), PersonalizedSpec("m", "lora", str(path)))


def test_tucker_locon_is_composed_exactly(tmp_path):
    """LyCORIS LoCon with use_tucker: down [r, in, 1, 1], mid [r, r, 3, 3], up [out, r, 1, 1] (locon.py rebuild_tucker)."""
    base = tiny_pipeline(seed=0)
    generator = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    conv = base.unet.down_blocks[0].resnets[0].conv1
    rank, alpha = 2, 1.0
    down = torch.randn(rank, conv.in_channels, 1, 1, generator=generator) * 0.3
    mid = torch.randn(rank, rank, 3, 3, generator=generator) * 0.3
    up = torch.randn(conv.out_channels, rank, 1, 1, generator=generator) * 0.3
    state = {f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid, f"{name}.lora_up.weight": up}
    save_file({**state, f"{name}.alpha": torch.tensor(alpha)}, tmp_path / "t.safetensors")
    # LyCORIS' rebuild_tucker: einsum("i j k l, j r, p i -> p r k l", t, wa, wb)
    expected = torch.einsum("ijkl,jr,pi->prkl", mid, down.flatten(1), up.flatten(1)) * alpha / rank
    spec = PersonalizedSpec("t", "lora", str(tmp_path / "t.safetensors"))
    assert check(base, spec) == "kohya"
    x = torch.randn(1, conv.in_channels, 8, 8, generator=generator)
    with applied(base, spec):
        torch.testing.assert_close(lora_delta_state(base, "t")["unet.down_blocks.0.resnets.0.conv1.weight"], expected, rtol=1e-5, atol=1e-6)  # fmt: skip
        with torch.no_grad():
            out = base.unet.down_blocks[0].resnets[0].conv1(x)
    with torch.no_grad():
        reference = torch.nn.functional.conv2d(x, conv.weight + expected, conv.bias, padding=1)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_tucker_factor_with_a_wrong_shape_is_named(tmp_path):
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    state = {
        f"{name}.lora_down.weight": torch.ones(2, 32, 3, 3),
        f"{name}.lora_mid.weight": torch.ones(2, 2, 3, 3),
        f"{name}.lora_up.weight": torch.ones(32, 2, 1, 1),
    }
    save_file(state, tmp_path / "t.safetensors")
    with pytest.raises(ModelLoadError, match=r"is a LyCORIS Tucker LoCon .* expected lora_down \[r, in, 1, 1\]"):
        check(tiny_pipeline(seed=0), PersonalizedSpec("t", "lora", str(tmp_path / "t.safetensors")))
