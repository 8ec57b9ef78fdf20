"""Personalized models: LoRA, Textual Inversion and DreamBooth applied to the tiny pipeline and removed exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from cemaps.errors import ModelLoadError
from cemaps.models import tiny_pipeline
from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied

PROMPT = "a watercolor of a lighthouse"


def render(pipe: StableDiffusionPipeline, prompt: str = PROMPT) -> np.ndarray:
    """One 64x64 image, 2 steps, fixed seed: [1, 64, 64, 3] float32."""
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def make_lora_dir(folder: Path, seed: int = 0, rank: int = 4) -> Path:
    """A diffusers/peft LoRA on the tiny UNet's attention projections, with non-zero lora_B."""
    pipe = tiny_pipeline(seed=0)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder


def to_kohya(diffusers_file: Path, target: Path) -> Path:
    """Renames diffusers LoRA keys to kohya sd-scripts' layout (lora_unet_<path_with_underscores>.lora_down/up + alpha)."""
    state = load_file(diffusers_file)
    kohya: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, tail = key.removeprefix("unet.").rpartition(".lora_")
        flat = "lora_unet_" + module.replace(".", "_")
        role = "lora_down" if tail.startswith("A") else "lora_up"
        kohya[f"{flat}.{role}.weight"] = tensor
        if role == "lora_down":
            kohya[f"{flat}.alpha"] = torch.tensor(
                float(tensor.shape[0])
            )  # alpha = rank: scaling 1, as in the peft file
    save_file(kohya, target)
    return target


def plain_modules(pipe: StableDiffusionPipeline) -> bool:
    return not any(isinstance(m, BaseTunerLayer) for m in [*pipe.unet.modules(), *pipe.text_encoder.modules()])


@pytest.fixture()
def base_pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """One LoRA folder shared by the tests that only read it."""
    return make_lora_dir(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def lora_state(lora_dir) -> dict[str, torch.Tensor]:
    return load_file(lora_dir / "pytorch_lora_weights.safetensors")


def test_lora_round_trip_changes_images_and_restores_bit_identical(base_pipe, lora_dir):
    before = render(base_pipe)
    spec = PersonalizedSpec("dog-lora", "lora", str(lora_dir), subject_id="dog")
    with applied(base_pipe, spec) as model:
        personalized = render(base_pipe)
        assert model.format == "diffusers"
        assert model.n_tensors_changed == 4 * 16 * 2  # q,k,v,out of attn1 and attn2 in 16 transformer blocks
        assert len(model.sha256) == 64
    assert not np.array_equal(before, personalized)
    assert plain_modules(base_pipe)
    np.testing.assert_array_equal(render(base_pipe), before)


def test_kohya_lora_matches_the_diffusers_lora(base_pipe, tmp_path, lora_dir):
    folder = lora_dir
    kohya = to_kohya(folder / "pytorch_lora_weights.safetensors", tmp_path / "kohya.safetensors")
    with applied(base_pipe, PersonalizedSpec("peft", "lora", str(folder))):
        from_peft = render(base_pipe)
    with applied(base_pipe, PersonalizedSpec("kohya", "lora", str(kohya))) as model:
        assert model.format == "kohya"
        from_kohya = render(base_pipe)
    np.testing.assert_allclose(from_kohya, from_peft, atol=1e-6)


def test_lora_scale_zero_is_the_base_model(base_pipe, lora_dir):
    before = render(base_pipe)
    with applied(base_pipe, PersonalizedSpec("off", "lora", str(lora_dir), scale=0.0)):
        np.testing.assert_allclose(render(base_pipe), before, atol=1e-6)


def test_lora_restored_after_exception(base_pipe, lora_dir):
    before = render(base_pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with applied(base_pipe, PersonalizedSpec("x", "lora", str(lora_dir))):
            raise RuntimeError("boom")
    assert plain_modules(base_pipe)
    np.testing.assert_array_equal(render(base_pipe), before)


def test_lora_for_missing_module_is_refused(base_pipe, tmp_path, lora_state):
    state = dict(lora_state)
    # SDXL has a second transformer block in down_blocks.1; SD v1.x does not
    state["unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_q.lora_A.weight"] = torch.zeros(4, 32)
    state["unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_q.lora_B.weight"] = torch.zeros(32, 4)
    save_file(state, tmp_path / "xl.safetensors")
    with pytest.raises(
        ModelLoadError, match=r"no module 'down_blocks\.1\.attentions\.0\.transformer_blocks\.1\.attn2\.to_q'"
    ):
        with applied(base_pipe, PersonalizedSpec("xl", "lora", str(tmp_path / "xl.safetensors"))):
            pass
    assert plain_modules(base_pipe)


@pytest.mark.parametrize(
    ("key", "shape", "match"),
    [
        ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", (4, 1280), "SDXL"),
        (
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",
            (4, 768),
            "input width 32, not 768",
        ),
    ],
)
def test_lora_for_other_architecture_is_refused(base_pipe, tmp_path, lora_state, key, shape, match):
    state = dict(lora_state)
    state[key] = torch.zeros(shape)
    save_file(state, tmp_path / "other.safetensors")
    with pytest.raises(ModelLoadError, match=match):
        with applied(base_pipe, PersonalizedSpec("other", "lora", str(tmp_path / "other.safetensors"))):
            pass


def test_lora_folder_without_weights_is_refused(base_pipe, tmp_path):
    with pytest.raises(ModelLoadError, match="has no weight file"):
        with applied(base_pipe, PersonalizedSpec("empty", "lora", str(tmp_path))):
            pass


# --------------------------------------------------------------------------- Textual Inversion


def embedding_table(pipe: StableDiffusionPipeline) -> torch.Tensor:
    return pipe.text_encoder.get_input_embeddings().weight.detach().clone()


@pytest.mark.parametrize("layout", ["diffusers", "a1111-safetensors", "tensor"])
def test_textual_inversion_round_trip_restores_tokenizer_and_table(base_pipe, tmp_path, layout):
    width = base_pipe.text_encoder.config.hidden_size
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(3))
    if layout == "diffusers":
        save_file({"<sks>": vectors}, tmp_path / "learned_embeds.safetensors")
        spec = PersonalizedSpec("sks-ti", "textual_inversion", str(tmp_path))
    elif layout == "a1111-safetensors":
        save_file({"emb_params": vectors}, tmp_path / "sks.safetensors")
        spec = PersonalizedSpec("sks-ti", "textual_inversion", str(tmp_path / "sks.safetensors"), token="<sks>")
    else:
        spec = PersonalizedSpec("sks-ti", "textual_inversion", None, token="<sks>", embedding=vectors)
    length, table, before = len(base_pipe.tokenizer), embedding_table(base_pipe), render(base_pipe, "a photo of <sks>")
    with applied(base_pipe, spec) as model:
        assert model.tokens == ("<sks>", "<sks>_1")
        assert model.n_params_changed == 2 * width
        ids = base_pipe.tokenizer.convert_tokens_to_ids(list(model.tokens))
        torch.testing.assert_close(base_pipe.text_encoder.get_input_embeddings().weight[ids].detach(), vectors)
        assert not np.array_equal(render(base_pipe, "a photo of <sks>"), before)
    assert len(base_pipe.tokenizer) == length
    assert "<sks>" not in base_pipe.tokenizer.get_vocab()
    assert torch.equal(embedding_table(base_pipe), table)
    np.testing.assert_array_equal(render(base_pipe, "a photo of <sks>"), before)


def test_a1111_pickle_embedding_needs_opt_in_then_loads(base_pipe, tmp_path):
    width = base_pipe.text_encoder.config.hidden_size
    torch.save({"string_to_param": {"*": torch.randn(1, width)}, "name": "<a1111>", "step": 100}, tmp_path / "a.pt")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        with applied(base_pipe, PersonalizedSpec("a", "textual_inversion", str(tmp_path / "a.pt"))):
            pass
    with applied(
        base_pipe, PersonalizedSpec("a", "textual_inversion", str(tmp_path / "a.pt"), allow_pickle=True)
    ) as model:
        assert model.tokens == ("<a1111>",) and model.format == "a1111"
    assert "<a1111>" not in base_pipe.tokenizer.get_vocab()


def test_textual_inversion_of_wrong_width_is_refused(base_pipe, tmp_path):
    save_file({"<xl>": torch.randn(1280)}, tmp_path / "xl.safetensors")
    with pytest.raises(ModelLoadError, match=r"shape \(1280,\); expected \[32\].*SDXL"):
        with applied(base_pipe, PersonalizedSpec("xl", "textual_inversion", str(tmp_path / "xl.safetensors"))):
            pass


def test_textual_inversion_with_existing_token_is_refused(base_pipe):
    spec = PersonalizedSpec("cat", "textual_inversion", None, token="cat</w>", embedding=torch.zeros(32))
    with pytest.raises(ModelLoadError, match="already in the tokenizer"):
        with applied(base_pipe, spec):
            pass


# --------------------------------------------------------------------------- DreamBooth


@pytest.mark.parametrize("layout", ["diffusers-pipeline", "diffusers-unet", "diffusers-single-file"])
def test_dreambooth_swap_equals_tuned_model_and_restores(base_pipe, tmp_path, layout):
    tuned = tiny_pipeline(seed=1)
    if layout == "diffusers-pipeline":
        tuned.save_pretrained(tmp_path / "db")
        path, expected_components = tmp_path / "db", 2
    elif layout == "diffusers-unet":
        tuned.unet.save_pretrained(tmp_path / "db")
        path, expected_components = tmp_path / "db", 1
    else:
        state = {f"unet.{k}": v for k, v in tuned.unet.state_dict().items()}
        state |= {f"text_encoder.text_model.{k}": v for k, v in tuned.text_encoder.state_dict().items()}
        save_file(state, tmp_path / "db.safetensors")
        path, expected_components = tmp_path / "db.safetensors", 2
    before = render(base_pipe)
    base = BaseWeights(base_pipe)
    with applied(base_pipe, PersonalizedSpec("db", "dreambooth", str(path)), base=base) as model:
        assert model.format == layout
        swapped = render(base_pipe)
        assert all(
            torch.equal(a, b)
            for a, b in zip(base_pipe.unet.state_dict().values(), tuned.unet.state_dict().values(), strict=False)
        )
    if expected_components == 2:
        # DreamBooth swaps UNet and text encoder only; the VAE stays the base one
        reference = StableDiffusionPipeline(
            **{**tiny_pipeline(seed=0).components, "unet": tuned.unet, "text_encoder": tuned.text_encoder}
        )
        reference.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(swapped, render(reference))
    assert not np.array_equal(swapped, before)
    np.testing.assert_array_equal(render(base_pipe), before)


def test_dreambooth_restored_after_exception_without_given_snapshot(base_pipe, tmp_path):
    tiny_pipeline(seed=1).unet.save_pretrained(tmp_path / "db")
    before = render(base_pipe)
    with pytest.raises(KeyboardInterrupt):
        with applied(base_pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db"))):
            raise KeyboardInterrupt
    np.testing.assert_array_equal(render(base_pipe), before)


def test_dreambooth_counts_only_changed_tensors(base_pipe, tmp_path):
    state = {f"unet.{k}": v.clone() for k, v in base_pipe.unet.state_dict().items()}
    state["unet.conv_in.bias"] += 1.0
    save_file(state, tmp_path / "one.safetensors")
    with applied(base_pipe, PersonalizedSpec("one", "dreambooth", str(tmp_path / "one.safetensors"))) as model:
        assert (model.n_tensors_changed, model.n_params_changed) == (1, base_pipe.unet.conv_in.bias.numel())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda s: s.update({"add_embedding.linear_1.weight": torch.zeros(4, 4)}),
            r"is for SDXL \(key 'add_embedding.*base model is SD 1.x/2.x",
        ),
        (lambda s: s.pop("conv_in.bias"), "key 'conv_in.bias' is missing"),
        (
            lambda s: s.update({"conv_in.weight": torch.zeros(64, 4, 3, 3)}),
            r"'conv_in.weight' has shape \(64, 4, 3, 3\)",
        ),
        (lambda s: s.update({"down_blocks.9.weight": torch.zeros(1)}), "'down_blocks.9.weight' does not exist"),
    ],
)
def test_dreambooth_mismatch_is_refused_and_base_kept(base_pipe, tmp_path, edit, match):
    state = dict(tiny_pipeline(seed=1).unet.state_dict())
    edit(state)
    save_file(state, tmp_path / "bad.safetensors")
    before = render(base_pipe)
    with pytest.raises(ModelLoadError, match=match):
        with applied(base_pipe, PersonalizedSpec("bad", "dreambooth", str(tmp_path / "bad.safetensors"))):
            pass
    np.testing.assert_array_equal(render(base_pipe), before)


def test_dreambooth_pickle_checkpoint_needs_opt_in(base_pipe, tmp_path):
    torch.save(
        {"state_dict": {f"unet.{k}": v for k, v in tiny_pipeline(seed=1).unet.state_dict().items()}},
        tmp_path / "db.ckpt",
    )
    with pytest.raises(ModelLoadError, match="refusing to read pickle-based"):
        with applied(base_pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db.ckpt"))):
            pass
    with applied(
        base_pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db.ckpt"), allow_pickle=True)
    ) as model:
        assert model.n_tensors_changed > 0


def test_dreambooth_refused_while_a_lora_is_loaded(base_pipe, tmp_path, lora_dir):
    tiny_pipeline(seed=1).unet.save_pretrained(tmp_path / "db")
    with applied(base_pipe, PersonalizedSpec("l", "lora", str(lora_dir))):
        with pytest.raises(ModelLoadError, match="still has LoRA adapters"):
            with applied(base_pipe, PersonalizedSpec("db", "dreambooth", str(tmp_path / "db"))):
                pass


def test_all_three_rounds_in_sequence_leave_base_bit_identical(base_pipe, tmp_path, lora_dir):
    before = render(base_pipe)
    tiny_pipeline(seed=1).save_pretrained(tmp_path / "db")
    specs = [
        PersonalizedSpec("lora", "lora", str(lora_dir)),
        PersonalizedSpec("ti", "textual_inversion", None, token="<t>", embedding=torch.randn(32)),
        PersonalizedSpec("db", "dreambooth", str(tmp_path / "db")),
    ]
    base = BaseWeights(base_pipe)
    for spec in specs:
        with applied(base_pipe, spec, base=base):
            render(base_pipe)
    np.testing.assert_array_equal(render(base_pipe), before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model_id": "", "method": "lora", "path": "x"}, "model_id is empty"),
        ({"model_id": "m", "method": "hypernetwork", "path": "x"}, "method 'hypernetwork' is not one of"),
        ({"model_id": "m", "method": "lora", "path": None}, "path is None"),
        ({"model_id": "m", "method": "textual_inversion", "path": None, "embedding": torch.zeros(3)}, "needs token="),
        (
            {"model_id": "m", "method": "lora", "path": None, "embedding": torch.zeros(3)},
            "only for method 'textual_inversion'",
        ),
        ({"model_id": "m", "method": "lora", "path": "x", "scale": float("nan")}, "not a finite number"),
    ],
)
def test_bad_specs_are_refused(kwargs, match):
    with pytest.raises(ModelLoadError, match=match):
        PersonalizedSpec(**kwargs)


def test_missing_path_is_refused(base_pipe, tmp_path):
    for method in ("lora", "textual_inversion", "dreambooth"):
        with pytest.raises(ModelLoadError, match="does not exist"):
            with applied(base_pipe, PersonalizedSpec("m", method, str(tmp_path / "nope"))):
                pass


def test_incomplete_original_sd_checkpoint_is_refused_after_conversion(base_pipe, tmp_path):
    # input_blocks.0.0.weight converts to conv_in.weight, so the first gap is conv_in.bias
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, tmp_path / "ldm.safetensors")
    with pytest.raises(ModelLoadError, match="unet key 'conv_in.bias' is missing from the checkpoint"):
        with applied(base_pipe, PersonalizedSpec("ldm", "dreambooth", str(tmp_path / "ldm.safetensors"))):
            pass


def test_sdxl_single_file_is_refused(base_pipe, tmp_path):
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)}, tmp_path / "xl.safetensors")
    with pytest.raises(ModelLoadError, match=r"is for SDXL \(key 'conditioner.*base model is SD 1.x/2.x"):
        with applied(base_pipe, PersonalizedSpec("xl", "dreambooth", str(tmp_path / "xl.safetensors"))):
            pass
