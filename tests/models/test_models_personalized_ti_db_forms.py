"""Textual Inversion and DreamBooth files in the layouts people download, on the tiny pipeline.

Layouts:
- Textual Inversion, diffusers ``textual_inversion.py``: ``learned_embeds.safetensors`` = ``{token: [dim]}``
  (older scripts) or ``{token: [n_vectors, dim]}``; A1111 ``modules/textual_inversion/textual_inversion.py``
  reads ``string_to_param['*']`` (``.pt``) and ``emb_params`` (``.safetensors``), and for SDXL
  ``clip_l`` ``[n, 768]`` + ``clip_g`` ``[n, 1280]``.
- DreamBooth, original Stable Diffusion (CompVis ``ldm``) single file: ``model.diffusion_model.*``
  (UNet, SGM block names ``input_blocks``/``middle_block``/``output_blocks``),
  ``cond_stage_model.transformer.text_model.*`` (CLIP), ``first_stage_model.*`` (VAE). The mapping
  below is the inverse of diffusers' ``convert_ldm_unet_checkpoint``, laid out as in diffusers'
  ``scripts/convert_diffusers_to_original_stable_diffusion.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied, check


@pytest.fixture()
def pipe():
    return tiny_pipeline(seed=0)


def render(pipe: StableDiffusionPipeline, prompt: str = "a photo of <sks>") -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


# --------------------------------------------------------------------------- Textual Inversion


@pytest.mark.parametrize("shape", [(32,), (1, 32), (3, 32)], ids=["[dim]", "[1,dim]", "multi-vector"])
def test_diffusers_learned_embeds_in_every_shape(pipe, tmp_path, shape):
    vectors = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    save_file({"<sks>": vectors}, tmp_path / "learned_embeds.safetensors")
    spec = PersonalizedSpec("ti", "textual_inversion", str(tmp_path))
    assert check(pipe, spec) == "diffusers"
    n_vectors = 1 if len(shape) == 1 else shape[0]
    with applied(pipe, spec) as model:
        assert len(model.tokens) == n_vectors and model.tokens[0] == "<sks>"
        ids = pipe.tokenizer.convert_tokens_to_ids(list(model.tokens))
        assert torch.equal(
            pipe.text_encoder.get_input_embeddings().weight[ids].detach(), vectors.reshape(n_vectors, 32)
        )
    assert "<sks>" not in pipe.tokenizer.get_vocab()


def test_a1111_safetensors_takes_its_token_from_the_file_name(pipe, tmp_path):
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "my-style.safetensors")
    with applied(pipe, PersonalizedSpec("ti", "textual_inversion", str(tmp_path / "my-style.safetensors"))) as model:
        assert model.tokens == ("my-style", "my-style_1") and model.format == "a1111"


def test_sdxl_embedding_is_refused_by_name(pipe, tmp_path):
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, tmp_path / "xl.safetensors")
    with pytest.raises(ModelLoadError, match=r"is for SDXL \(key 'clip_[gl]'\), but the base model is SD 1\.x/2\.x"):
        check(pipe, PersonalizedSpec("xl", "textual_inversion", str(tmp_path / "xl.safetensors"), token="<xl>"))


def test_sd2_embedding_is_named_by_its_width(pipe, tmp_path):
    save_file({"<sd2>": torch.zeros(1, 1024)}, tmp_path / "sd2.safetensors")
    with pytest.raises(ModelLoadError, match=r"width 1024 is SD 2\.x's; this base has 32"):
        check(pipe, PersonalizedSpec("sd2", "textual_inversion", str(tmp_path / "sd2.safetensors")))


def test_nan_embedding_is_refused_naming_the_token(pipe, tmp_path):
    save_file({"<nan>": torch.tensor([float("nan")] * 32)}, tmp_path / "n.safetensors")
    with pytest.raises(ModelLoadError, match=r"tensor '<nan>' has 32 non-finite value"):
        check(pipe, PersonalizedSpec("n", "textual_inversion", str(tmp_path / "n.safetensors")))


# --------------------------------------------------------------------------- DreamBooth, original SD single file


def _unet_prefix_map(layers_per_block: int, n_blocks: int) -> list[tuple[str, str]]:
    """(diffusers prefix, original-SD prefix) for the UNet's blocks: SD v1.x's layout, sizes from the config."""
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ]
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    per_down, per_up = layers_per_block + 1, layers_per_block + 1
    for i in range(n_blocks):
        for j in range(layers_per_block):
            pairs += [
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per_down * i + j + 1}.0."),
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per_down * i + j + 1}.1."),
            ]
        for j in range(layers_per_block + 1):
            pairs += [
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per_up * i + j}.0."),
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per_up * i + j}.1."),
            ]
        if i < n_blocks - 1:
            pairs += [
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per_down * (i + 1)}.0.op."),
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{per_up * i + layers_per_block}.{1 if i == 0 else 2}.",
                ),
            ]
    return pairs


_RESNET_NAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def to_original_sd(tuned: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The tiny pipeline's weights under original Stable Diffusion (ldm) key names."""
    config = tuned.unet.config
    prefixes = _unet_prefix_map(config.layers_per_block, len(config.block_out_channels))
    checkpoint = {}
    for name, tensor in tuned.unet.state_dict().items():
        original = name
        if "resnets" in name:
            for diffusers_name, sd_name in _RESNET_NAMES:
                original = original.replace(diffusers_name, sd_name)
        for diffusers_prefix, sd_prefix in prefixes:
            if original.startswith(diffusers_prefix):
                original = sd_prefix + original[len(diffusers_prefix) :]
                break
        checkpoint[f"model.diffusion_model.{original}"] = tensor.clone()
    checkpoint |= {
        f"cond_stage_model.transformer.text_model.{k}": v.clone() for k, v in tuned.text_encoder.state_dict().items()
    }
    checkpoint |= {
        f"first_stage_model.{k}": v.clone() for k, v in tuned.vae.state_dict().items()
    }  # ignored: the VAE is not swapped
    return checkpoint


def test_original_sd_single_file_swaps_exactly_and_restores(pipe, tmp_path):
    tuned = tiny_pipeline(seed=1)
    checkpoint = to_original_sd(tuned)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in checkpoint
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in checkpoint  # up_blocks.0 upsampler
    save_file(checkpoint, tmp_path / "db.safetensors")
    spec = PersonalizedSpec("db", "dreambooth", str(tmp_path / "db.safetensors"))
    assert check(pipe, spec) == "ldm"
    before, base = render(pipe), BaseWeights(pipe)
    with applied(pipe, spec, base=base) as model:
        assert model.format == "ldm"
        for component in ("unet", "text_encoder"):
            ours, theirs = getattr(pipe, component).state_dict(), getattr(tuned, component).state_dict()
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
        swapped = render(pipe)
    reference = StableDiffusionPipeline(
        **{**tiny_pipeline(seed=0).components, "unet": tuned.unet, "text_encoder": tuned.text_encoder}
    )
    reference.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(swapped, render(reference))
    np.testing.assert_array_equal(render(pipe), before)


def test_original_sd_file_for_sd2_is_named_by_its_context_width(pipe, tmp_path):
    checkpoint = to_original_sd(tiny_pipeline(seed=1))
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    checkpoint[key] = torch.zeros(checkpoint[key].shape[0], 1024)
    save_file(checkpoint, tmp_path / "sd2.safetensors")
    with pytest.raises(
        ModelLoadError,
        match=r"attn2\.to_k\.weight' has shape \(32, 1024\), the base has \(32, 32\) \(width 1024 is SD 2\.x's",
    ):
        check(pipe, PersonalizedSpec("sd2", "dreambooth", str(tmp_path / "sd2.safetensors")))


def test_nan_in_a_dreambooth_unet_is_refused_naming_the_tensor(pipe, tmp_path):
    state = {k: v.clone() for k, v in tiny_pipeline(seed=1).unet.state_dict().items()}
    state["mid_block.resnets.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    save_file(state, tmp_path / "db.safetensors")
    with pytest.raises(ModelLoadError, match=r"tensor 'unet\.mid_block\.resnets\.0\.conv1\.weight' has 1 non-finite"):
        check(pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db.safetensors")))


def test_embedding_given_as_dreambooth_is_named(pipe, tmp_path):
    save_file({"<sks>": torch.zeros(32)}, tmp_path / "e.safetensors")
    with pytest.raises(ModelLoadError, match="looks like a Textual Inversion embedding.*use method: textual_inversion"):
        check(pipe, PersonalizedSpec("e", "dreambooth", str(tmp_path / "e.safetensors")))
