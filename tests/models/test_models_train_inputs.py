"""Settings defaults and every bad-input case of the trainers: one-line ConfigErrors, nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cemaps.errors import ConfigError
from cemaps.models.train import METHOD_DEFAULTS, TrainSettings, personalize
from cemaps.models.train.common import load_instance_images


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "subject"
    folder.mkdir()
    for index, colour in enumerate(("brown", "white")):
        Image.new("RGB", (72, 64), colour).save(folder / f"{index}.png")
    return folder


def test_settings_take_diffusers_script_defaults_per_method():
    assert (TrainSettings(method="dreambooth").steps, TrainSettings(method="dreambooth").learning_rate) == (400, 5e-6)
    assert (TrainSettings(method="lora").steps, TrainSettings(method="lora").learning_rate) == (500, 1e-4)
    ti = TrainSettings(method="textual_inversion")
    assert (ti.steps, ti.learning_rate, ti.max_grad_norm) == (3000, 5e-4, None)
    assert TrainSettings(method="lora").rank == 4
    assert TrainSettings(method="lora", steps=7, learning_rate=3e-4).steps == 7
    assert METHOD_DEFAULTS["dreambooth"].max_grad_norm == 1.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"method": "hypernetwork"}, "hypernetwork"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"resolution": 4}, "resolution"),
        ({"rank": 0}, "rank"),
        ({"lora_targets": "mlp"}, "lora_targets"),
        ({"prior_loss_weight": -0.5}, "prior_loss_weight"),
        ({"num_class_images": 0}, "num_class_images"),
        ({"class_inference_steps": 0}, "class_inference_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"method": "lora", "prior_preservation": True}, "prior_preservation"),
        ({"instance_template": "a photo of a dog"}, "instance_template"),
        ({"instance_template": "{token} and {token}"}, "instance_template"),
        ({"instance_template": "a {token} {colour}"}, "instance_template"),
        ({"class_template": "a {token} {class_word}"}, "class_template"),
        ({"class_template": "a {"}, "class_template"),
        ({"method": "textual_inversion", "num_vectors": 0}, "num_vectors"),
        ({"method": "lora", "num_vectors": 2}, "num_vectors"),
    ],
)
def test_bad_settings_raise_one_line_config_error(overrides, field):
    with pytest.raises(ConfigError) as error:
        TrainSettings(**{"method": "dreambooth", **overrides})
    assert field in str(error.value) and "\n" not in str(error.value)


def test_missing_folder_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_instance_images(tmp_path / "nope")


def test_empty_folder_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="is empty"):
        load_instance_images(tmp_path)


def test_folder_without_readable_images_is_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("a dog")
    with pytest.raises(ConfigError, match="no readable images"):
        load_instance_images(tmp_path)


def test_corrupt_image_file_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="broken.png"):
        load_instance_images(tmp_path)


def test_empty_list_and_non_images_are_rejected():
    with pytest.raises(ConfigError, match="empty"):
        load_instance_images([])
    with pytest.raises(ConfigError, match=r"images\[1\]"):
        load_instance_images([Image.new("RGB", (8, 8)), "dog.png"])


def test_folder_images_are_sorted_hashed_and_notes_ignored(image_folder):
    (image_folder / "caption.txt").write_text("a dog")
    sources = load_instance_images(image_folder)
    assert [s.name for s in sources] == ["0.png", "1.png"]
    assert all(len(s.sha256) == 64 for s in sources) and sources[0].sha256 != sources[1].sha256


def _expect_config_error(pipe, tmp_path, match, method="lora", images=None, token="sks", settings=None, **kwargs):
    out = tmp_path / "out"
    images = images if images is not None else [Image.new("RGB", (64, 64), "brown")]
    with pytest.raises(ConfigError, match=match) as error:
        personalize(pipe, method, images, token, "dog", out, settings, progress=False, **kwargs)
    assert "\n" not in str(error.value)
    return out


def test_unknown_method_is_rejected(tiny_pipe, tmp_path):
    out = _expect_config_error(tiny_pipe, tmp_path, "method 'hypernetwork' is unknown", method="hypernetwork")
    assert not out.exists()


def test_settings_for_another_method_are_rejected(tiny_pipe, tmp_path):
    _expect_config_error(tiny_pipe, tmp_path, "differs", settings=TrainSettings(method="dreambooth"))


@pytest.mark.parametrize("token", ["", "two words", " sks"])
def test_bad_token_is_rejected(tiny_pipe, tmp_path, token):
    _expect_config_error(tiny_pipe, tmp_path, "token", token=token)


def test_token_already_in_tokenizer_is_rejected_for_textual_inversion(tiny_pipe, tmp_path):
    tiny_pipe.tokenizer.add_tokens("<my-dog>")
    settings = TrainSettings(method="textual_inversion", steps=1)
    _expect_config_error(
        tiny_pipe, tmp_path, "already in the tokenizer", method="textual_inversion", token="<my-dog>", settings=settings
    )


# A known "<my-dog>_1" is refused even for one vector: diffusers' maybe_convert_prompt would spell
# "<my-dog> <my-dog>_1" wherever the prompt says <my-dog>.
@pytest.mark.parametrize(("taken", "num_vectors"), [("<my-dog>_2", 3), ("<my-dog>_1", 1)])
def test_taken_vector_token_is_rejected_for_textual_inversion(tiny_pipe, tmp_path, taken, num_vectors):
    tiny_pipe.tokenizer.add_tokens(taken)
    settings = TrainSettings(method="textual_inversion", steps=1, num_vectors=num_vectors)
    _expect_config_error(
        tiny_pipe,
        tmp_path,
        f"'{taken}' is already in the tokenizer",
        method="textual_inversion",
        token="<my-dog>",
        settings=settings,
    )


def test_multi_token_initializer_is_rejected(tiny_pipe, tmp_path):
    settings = TrainSettings(method="textual_inversion", steps=1, initializer_token="golden retriever")
    _expect_config_error(
        tiny_pipe,
        tmp_path,
        "initializer_token='golden retriever' is invalid.*it is 2 tokens",
        method="textual_inversion",
        token="<my-dog>",
        settings=settings,
    )


def test_non_empty_out_is_rejected_without_overwrite(tiny_pipe, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep me")
    _expect_config_error(tiny_pipe, tmp_path, "not empty.*overwrite=True")
    assert (tmp_path / "out" / "old.txt").read_text() == "keep me"


def test_out_that_is_a_file_is_rejected(tiny_pipe, tmp_path):
    (tmp_path / "out").write_text("")
    _expect_config_error(tiny_pipe, tmp_path, "is a file")


def test_resolution_must_be_a_multiple_of_the_vae_factor(tiny_pipe, tmp_path):
    _expect_config_error(
        tiny_pipe, tmp_path, "multiple of the VAE factor 8", settings=TrainSettings("lora", resolution=60)
    )


def test_missing_images_folder_fails_before_anything_is_written(tiny_pipe, tmp_path):
    out = _expect_config_error(tiny_pipe, tmp_path, "does not exist", images=tmp_path / "missing")
    assert not out.exists()


def test_8bit_adam_without_bitsandbytes_says_how_to_install(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    _expect_config_error(
        tiny_pipe, tmp_path, "pip install bitsandbytes", settings=TrainSettings("lora", use_8bit_adam=True)
    )


def test_lora_refuses_a_unet_that_already_has_adapters(tiny_pipe, tmp_path):
    from peft import LoraConfig

    tiny_pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_k"]), adapter_name="user")
    _expect_config_error(tiny_pipe, tmp_path, "already has LoRA adapters")


def test_dreambooth_refuses_a_half_precision_unet(tiny_pipe, tmp_path):
    tiny_pipe.unet.to(torch.float16)
    _expect_config_error(tiny_pipe, tmp_path, "float32", method="dreambooth")
