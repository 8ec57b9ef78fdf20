"""Personalized SD3 / Flux / PixArt-Sigma: LoRA (diffusers/peft and kohya Flux), DreamBooth swap, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.models.personalized import PersonalizedSpec, applied, check
from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_pixart_sigma_pipeline, tiny_sd3_pipeline


@pytest.fixture(scope="module")
def pipes():
    return {"sd3": tiny_sd3_pipeline(seed=0), "flux": tiny_flux_pipeline(seed=0)}


def _images(pipe) -> np.ndarray:
    size = {"height": 64, "width": 64} if type(pipe).__name__ == "FluxPipeline" else {}
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a dog", num_inference_steps=2, generator=generator, output_type="np", max_sequence_length=8, **size
    ).images


def _diffusers_lora(pipe, folder, targets=("to_q", "to_k", "to_v", "to_out.0")) -> LoraConfig:
    """A LoRA file as diffusers' DreamBooth-LoRA scripts save it (peft factors, lora_alpha metadata)."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="trained")
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    pipe.transformer.delete_adapters("trained")
    pipe.unload_lora_weights()
    type(pipe).save_lora_weights(
        folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config.to_dict()
    )
    return config


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_diffusers_lora_loads_verified_and_the_base_comes_back(pipes, family, tmp_path):
    pipe = pipes[family]
    base = _images(pipe)
    _diffusers_lora(pipe, tmp_path)
    spec = PersonalizedSpec(f"{family}-lora", "lora", path=str(tmp_path))
    assert check(pipe, spec) == "diffusers"
    with applied(pipe, spec) as model:
        to_q = pipe.transformer.transformer_blocks[0].attn.to_q
        assert float(to_q.scaling[spec.model_id]) == 2.0  # scale 1 * lora_alpha 8 / r 4, from the file's metadata
        assert model.format == "diffusers" and model.n_tensors_changed == len(
            [m for n, m in pipe.transformer.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
        )
        personalized = _images(pipe)
    assert not np.array_equal(personalized, base)
    assert np.array_equal(_images(pipe), base)
    assert not any(hasattr(m, "lora_A") for m in pipe.transformer.modules())


def test_kohya_flux_lora_is_converted_by_diffusers_and_its_delta_is_the_files(pipes, tmp_path):
    pipe = pipes["flux"]
    generator = torch.Generator().manual_seed(1)
    down, up = torch.randn(2, 32, generator=generator), torch.randn(96, 2, generator=generator)
    path = tmp_path / "kohya.safetensors"
    prefix = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file(
        {f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up, f"{prefix}.alpha": torch.tensor(1.0)}, path
    )
    spec = PersonalizedSpec("kohya", "lora", path=str(path), scale=0.5)
    assert check(pipe, spec) == "kohya"
    with applied(pipe, spec) as model:
        assert model.n_tensors_changed == 3  # BFL's fused qkv, split into to_q, to_k, to_v
        attn = pipe.transformer.transformer_blocks[0].attn
        for index, name in enumerate(("to_q", "to_k", "to_v")):
            delta = getattr(attn, name).get_delta_weight("kohya")
            expected = 0.5 * (1.0 / 2) * up[32 * index : 32 * (index + 1)] @ down  # scale * alpha / r * B @ A
            torch.testing.assert_close(delta, expected)


def test_a_flux_lora_on_sd3_is_one_line(pipes, tmp_path):
    _diffusers_lora(pipes["flux"], tmp_path, targets=("to_q",))
    with pytest.raises(ModelLoadError) as error:
        check(pipes["sd3"], PersonalizedSpec("wrong", "lora", path=str(tmp_path)))
    assert "\n" not in str(error.value) and "LoRA file" in str(error.value)


def test_dreambooth_swaps_the_transformer_and_restores_it(pipes, tmp_path):
    pipe = pipes["sd3"]
    base = _images(pipe)
    tuned = tiny_sd3_pipeline(seed=5).transformer
    tuned.save_pretrained(tmp_path / "transformer")
    spec = PersonalizedSpec("db", "dreambooth", path=str(tmp_path / "transformer"))
    assert check(pipe, spec) == "diffusers"
    with applied(pipe, spec) as model:
        assert model.n_tensors_changed > 0
        assert torch.equal(pipe.transformer.pos_embed.proj.weight, tuned.pos_embed.proj.weight)
        assert not np.array_equal(_images(pipe), base)
    assert np.array_equal(_images(pipe), base)


def test_dreambooth_of_another_family_is_refused(pipes, tmp_path):
    pipes["flux"].transformer.save_pretrained(tmp_path / "transformer")
    with pytest.raises(
        ModelLoadError, match="holds a FluxTransformer2DModel; the base's transformer is a SD3Transformer2DModel"
    ):
        check(pipes["sd3"], PersonalizedSpec("db", "dreambooth", path=str(tmp_path / "transformer")))


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_textual_inversion_is_refused_in_one_line(pipes, family):
    pipe = pipes.get(family) or tiny_pixart_sigma_pipeline(seed=0)
    spec = PersonalizedSpec("ti", "textual_inversion", path=None, token="<x>", embedding=torch.ones(32))
    with pytest.raises(ModelLoadError, match="Textual Inversion on .* is not supported") as error:
        check(pipe, spec)
    assert "\n" not in str(error.value)


def test_pixart_lora_is_refused_in_one_line(tmp_path):
    pipe = tiny_pixart_sigma_pipeline(seed=0)
    path = tmp_path / "lora.safetensors"
    save_file({"transformer.transformer_blocks.0.attn2.to_q.lora_A.weight": torch.ones(2, 48)}, path)
    with pytest.raises(ModelLoadError, match="PixArt-Sigma .* has no LoRA loader in diffusers"):
        check(pipe, PersonalizedSpec("p", "lora", path=str(path)))
