"""LoRA kinds on every text encoder and on the tiny SDXL: DoRA, MLP-only text encoders, header alphas, Tucker.

Each file is written from a peft-wrapped source pipeline by diffusers' own writers (see
``lora_writers``); cemaps' applied model must give the source's outputs, and every measured
update must equal the one computed in the test from the factors and the config the test chose
(``alpha / r * B @ A``; DoRA ``m / ||W + d||_row * (W + d) - W``), for SD 1.x and the tiny SDXL
(two text encoders; kohya ``lora_te1_``/``lora_te2_`` and SGM block names).
"""

from __future__ import annotations

import pytest
import torch
from lora_writers import assert_formula, assert_reproduces, save_diffusers, save_kohya, source_pipe
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from sdxl_checkpoints import _RESNET_NAMES, _unet_prefixes, unet_to_sgm

from cemaps.errors import ModelLoadError
from cemaps.models.personalized import PersonalizedSpec, applied, check
from cemaps.models.personalized.lora_sgm import sgm_block_names
from cemaps.models.tiny import tiny_pipeline, tiny_sdxl_pipeline
from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_sd3_pipeline
from cemaps.models.weight_deltas import lora_delta_state

FAMILIES = {"sd1": tiny_pipeline, "sdxl": tiny_sdxl_pipeline}


def lora(modules: list[str], r: int = 2, alpha: float = 2, **kwargs) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=modules, **kwargs)


def write(source, tmp_path, writer: str, **kwargs):
    if writer == "diffusers":
        return save_diffusers(source, tmp_path, **kwargs)
    return save_kohya(source, tmp_path / "k.safetensors", **kwargs)


# --------------------------------------------------------------------------- DoRA on text encoders


@pytest.mark.parametrize("writer", ["diffusers", "kohya"])
@pytest.mark.parametrize(
    ("family", "configs"),
    [
        ("sd1", {"text_encoder": lora(["q_proj", "fc1"], use_dora=True)}),
        ("sd1", {"unet": lora(["to_k", "to_v"], use_dora=True), "text_encoder": lora(["out_proj"], use_dora=True)}),
        ("sdxl", {"text_encoder": lora(["k_proj"], use_dora=True), "text_encoder_2": lora(["v_proj", "fc2"], use_dora=True)}),
        ("sdxl", {"unet": lora(["to_q"], use_dora=True), "text_encoder_2": lora(["q_proj"], use_dora=True)}),
    ],
    ids=["sd1-attention+mlp", "sd1-unet+text_encoder", "sdxl-both_encoders", "sdxl-unet+text_encoder_2"],
)  # fmt: skip
def test_text_encoder_dora_loads_with_its_magnitudes(tmp_path, family, configs, writer):
    make = FAMILIES[family]
    source = source_pipe(configs, make)
    deltas = assert_reproduces(source, write(source, tmp_path, writer), writer, make)
    assert_formula(source, deltas)


def test_text_encoder_dora_magnitude_of_a_wrong_shape_is_named(tmp_path):
    source = source_pipe({"text_encoder": lora(["q_proj"], use_dora=True)})
    path = save_kohya(source, tmp_path / "k.safetensors")
    state = {k: (torch.ones(1, 32) if k.endswith(".dora_scale") else v) for k, v in load_file(path).items()}
    save_file(state, path)
    with pytest.raises(ModelLoadError, match=r"q_proj\.dora_scale' has shape \(1, 32\); expected \[32, 1\]"):
        check(tiny_pipeline(seed=0), PersonalizedSpec("m", "lora", str(path)))


# --------------------------------------------------------------------------- MLP-only text encoders


@pytest.mark.parametrize("writer", ["diffusers", "kohya"])
@pytest.mark.parametrize(
    ("family", "configs"),
    [
        ("sd1", {"text_encoder": lora(["fc1", "fc2"])}),
        ("sd1", {"text_encoder": lora(["fc2"], r=3, alpha=3)}),
        ("sd1", {"unet": lora(["to_q", "proj_in"]), "text_encoder": lora(["fc1"])}),
        ("sdxl", {"text_encoder": lora(["fc1"]), "text_encoder_2": lora(["fc2"])}),
        ("sdxl", {"unet": lora(["to_k"]), "text_encoder_2": lora(["fc1", "fc2"])}),
    ],
    ids=["sd1-fc1+fc2", "sd1-fc2_rank3", "sd1-unet+fc1", "sdxl-both_encoders", "sdxl-unet+text_encoder_2"],
)
def test_mlp_only_text_encoder_lora_loads(tmp_path, family, configs, writer):
    """diffusers' text-encoder loader infers the key type from attention keys and fails on these."""
    make = FAMILIES[family]
    source = source_pipe(configs, make)
    deltas = assert_reproduces(source, write(source, tmp_path, writer), writer, make)
    assert_formula(source, deltas)
    mlp = {name.split(".")[-2] for name in deltas if name.startswith("text_encoder")}
    assert mlp <= {"fc1", "fc2"} and mlp


# --------------------------------------------------------------------------- scaling in the header, SDXL


@pytest.mark.parametrize(
    "configs",
    [
        {"unet": lora(["to_q", "to_k"], alpha=8), "text_encoder_2": lora(["q_proj", "fc1"], r=4, alpha=2)},
        {"text_encoder": lora(["v_proj"], r=2, alpha=6), "text_encoder_2": lora(["out_proj"], r=2, alpha=1)},
        {"unet": lora(["to_v"], r=4, alpha=8, use_rslora=True), "text_encoder": lora(["k_proj"], alpha=8, use_rslora=True)},
    ],
    ids=["unet+text_encoder_2", "both_encoders", "rslora"],
)  # fmt: skip
def test_sdxl_alpha_only_in_the_header_is_applied(tmp_path, configs):
    source = source_pipe(configs, tiny_sdxl_pipeline)
    path = save_diffusers(source, tmp_path)
    assert not any(k.endswith(".alpha") for k in load_file(path))
    assert_formula(source, assert_reproduces(source, path, "diffusers", tiny_sdxl_pipeline))


def sgm_names(unet):
    """A UNet module path renamed to Stability's SGM blocks, as kohya sd-scripts names SDXL modules."""
    prefixes = _unet_prefixes(unet)

    def rename(path: str) -> str:
        for diffusers_prefix, sgm_prefix in prefixes:
            if path.startswith(diffusers_prefix):
                return sgm_prefix + path[len(diffusers_prefix) :]
        return path

    return rename


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_sdxl_kohya_alpha_only_in_the_header_with_sgm_names(tmp_path, dora):
    """lora_unet_input_blocks_*/lora_te1_/lora_te2_ keys, ss_network_alpha in the header, no .alpha tensors."""
    configs = {
        "unet": lora(["to_q", "to_v"], alpha=8, use_dora=dora),
        "text_encoder": lora(["q_proj"], alpha=8, use_dora=dora),
        "text_encoder_2": lora(["k_proj", "fc1"], alpha=8, use_dora=dora),
    }
    source = source_pipe(configs, tiny_sdxl_pipeline)
    header = {"ss_network_alpha": "8.0", "ss_network_dim": "2", "ss_network_module": "networks.lora"}
    path = save_kohya(source, tmp_path / "k.safetensors", header, alphas=False, unet_names=sgm_names(source.unet))
    keys = load_file(path).keys()
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys) and not any(k.endswith(".alpha") for k in keys)
    assert {k.split("_text_model")[0] for k in keys if k.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    assert_formula(source, assert_reproduces(source, path, "kohya", tiny_sdxl_pipeline))


def test_every_sgm_unet_module_is_renamed_to_its_diffusers_module():
    """kohya SDXL LoCon names every Linear/Conv2d (ResBlock in_layers_2/out_layers_3/emb_layers_1/skip_connection,
    Downsample op, conv_in/out, time_embed, label_emb); each goes to the module the single-file table names."""
    unet = tiny_sdxl_pipeline(seed=0).unet
    sgm_of = {}
    for name in unet.state_dict():
        original = name
        if "resnets" in name:
            for diffusers_word, sgm_word in _RESNET_NAMES:
                original = original.replace(diffusers_word, sgm_word)
        sgm_of[name] = sgm_names(unet)(original)
    weights = unet_to_sgm(unet)
    expected, state = {}, {}
    for index, (name, sgm) in enumerate(sorted(sgm_of.items())):
        if name.endswith(".weight") and weights[f"model.diffusion_model.{sgm}"].ndim in (2, 4):
            flat = lambda path: "lora_unet_" + path.removesuffix(".weight").replace(".", "_") + ".lora_down.weight"  # noqa: E731
            state[flat(sgm)] = torch.tensor([float(index)])
            expected[flat(name)] = float(index)
    assert len(expected) > 150 and any("in_layers_2" in key for key in state)
    renamed = sgm_block_names(state, tiny_sdxl_pipeline(seed=0), "file")
    assert {key: float(value) for key, value in renamed.items()} == expected


# --------------------------------------------------------------------------- Tucker LoCon on the SDXL UNet


def test_sdxl_tucker_locon_is_composed_exactly(tmp_path):
    """LyCORIS LoCon with use_tucker on an SDXL resnet conv, SGM-named: delta = up . mid . down * alpha / r."""
    base = tiny_sdxl_pipeline(seed=0)
    conv = base.unet.down_blocks[1].resnets[0].conv2
    generator = torch.Generator().manual_seed(0)
    rank, alpha = 2, 3.0
    down = torch.randn(rank, conv.in_channels, 1, 1, generator=generator) * 0.3
    mid = torch.randn(rank, rank, 3, 3, generator=generator) * 0.3
    up = torch.randn(conv.out_channels, rank, 1, 1, generator=generator) * 0.3
    name = "lora_unet_" + sgm_names(base.unet)("down_blocks.1.resnets.0.").replace(".", "_") + "out_layers_3"
    assert name.startswith("lora_unet_input_blocks_")
    state = {f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid, f"{name}.lora_up.weight": up}
    save_file({**state, f"{name}.alpha": torch.tensor(alpha)}, tmp_path / "t.safetensors")
    expected = torch.einsum("ijkl,jr,pi->prkl", mid, down.flatten(1), up.flatten(1)) * alpha / rank
    spec = PersonalizedSpec("t", "lora", str(tmp_path / "t.safetensors"))
    x = torch.randn(1, conv.in_channels, 8, 8, generator=generator)
    with applied(base, spec) as model:
        assert model.format == "kohya"
        deltas = lora_delta_state(base, "t")
        with torch.no_grad():
            out = base.unet.down_blocks[1].resnets[0].conv2(x)
    assert list(deltas) == ["unet.down_blocks.1.resnets.0.conv2.weight"]
    torch.testing.assert_close(deltas["unet.down_blocks.1.resnets.0.conv2.weight"], expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        reference = torch.nn.functional.conv2d(x, conv.weight + expected, conv.bias, padding=1)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, BaseTunerLayer) for m in base.unet.modules())


# --------------------------------------------------------------------------- DoRA and rsLoRA on SD3


def sd3_transformer_output(pipe) -> torch.Tensor:
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(0)
    size = config.sample_size
    with torch.no_grad():
        return pipe.transformer(
            hidden_states=torch.randn(1, config.in_channels, size, size, generator=generator),
            encoder_hidden_states=torch.randn(1, 6, config.joint_attention_dim, generator=generator),
            pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=generator),
            timestep=torch.tensor([10]),
        ).sample


@pytest.mark.parametrize(
    "config",
    [lora(["to_q", "to_k"], alpha=8, use_dora=True), lora(["to_v", "add_k_proj"], r=4, alpha=8, use_rslora=True)],
    ids=["dora", "rslora"],
)
def test_sd3_dora_and_rslora_load_with_the_files_scaling(tmp_path, config):
    """diffusers' SD3 loader reads use_dora/use_rslora from the header; cemaps verifies magnitudes and alpha/sqrt(r)."""
    source = source_pipe({"transformer": config}, tiny_sd3_pipeline)
    path = save_diffusers(source, tmp_path)
    base = tiny_sd3_pipeline(seed=0)
    before = sd3_transformer_output(base)
    spec = PersonalizedSpec("m", "lora", str(path))
    assert check(base, spec) == "diffusers"
    with applied(base, spec) as model:
        during = sd3_transformer_output(base)
        deltas = lora_delta_state(base, "m")
        assert model.n_tensors_changed == len(deltas)
    torch.testing.assert_close(during, sd3_transformer_output(source), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(during, before, atol=1e-4)
    assert torch.equal(sd3_transformer_output(base), before)
    assert_formula(source, deltas)


def test_sd3_dora_magnitude_of_a_wrong_shape_is_named(tmp_path):
    source = source_pipe({"transformer": lora(["to_q"], use_dora=True)}, tiny_sd3_pipeline)
    path = save_diffusers(source, tmp_path)
    state = load_file(path)
    key = next(k for k in state if k.endswith(".lora_magnitude_vector"))
    save_file({**state, key: torch.ones(3)}, path, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"DoRA magnitude of transformer\.\S+ has shape \(3,\); expected \[\d+\]"):
        check(tiny_sd3_pipeline(seed=0), PersonalizedSpec("m", "lora", str(path)))


# --------------------------------------------------------------------------- kohya Flux with its alpha in the header


def kohya_flux_file(path, header: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BFL's fused qkv of double block 0, as kohya sd-scripts' Flux LoRA names it, without an .alpha tensor."""
    generator = torch.Generator().manual_seed(1)
    down, up = torch.randn(2, 32, generator=generator), torch.randn(96, 2, generator=generator)
    prefix = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up}, path, metadata=header)
    return down, up


def test_flux_kohya_alpha_only_in_the_header_is_applied(tmp_path):
    """diffusers' Flux converter takes alpha = r without an .alpha tensor; the header's alpha 8 (r 2) gives 4x that."""
    path = tmp_path / "k.safetensors"
    down, up = kohya_flux_file(path, {"ss_network_alpha": "8", "ss_network_dim": "2"})
    pipe = tiny_flux_pipeline(seed=0)
    spec = PersonalizedSpec("k", "lora", str(path), scale=0.5)
    with applied(pipe, spec) as model:
        assert model.format == "kohya" and model.n_tensors_changed == 3  # fused qkv split into to_q, to_k, to_v
        deltas = lora_delta_state(pipe, "k")
    for index, name in enumerate(("to_q", "to_k", "to_v")):
        expected = 0.5 * (8 / 2) * up[32 * index : 32 * (index + 1)] @ down  # scale * alpha / r * B @ A
        torch.testing.assert_close(deltas[f"transformer.transformer_blocks.0.attn.{name}.weight"], expected)


@pytest.mark.parametrize(
    ("header", "message"),
    [({"ss_network_alpha": "Dynamic"}, "not a number"), ({"ss_network_alpha": "8", "ss_network_dim": "4"}, "network dim is 4")],
)  # fmt: skip
def test_flux_kohya_header_that_cannot_fix_the_scaling_is_refused(tmp_path, header, message):
    path = tmp_path / "k.safetensors"
    kohya_flux_file(path, header)
    with pytest.raises(ModelLoadError, match="scaling cannot be determined") as caught:
        check(tiny_flux_pipeline(seed=0), PersonalizedSpec("k", "lora", str(path)))
    assert message in str(caught.value) and "\n" not in str(caught.value)
