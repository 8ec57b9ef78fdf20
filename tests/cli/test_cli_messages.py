"""Issue 13, kind 7: a CLI message names flags or study.yaml keys that exist, and a library's
multi-line message is not cut after its first line."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import SMALL, assert_refused, snapshot, write
from safetensors.torch import save_file


def _lora_file(path):
    save_file(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight": torch.zeros(4, 8),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.up.weight": torch.zeros(8, 4),
        },
        str(path),
    )
    return path


def test_pickle_refusal_names_the_study_yaml_key(cli, tmp_path):
    torch.save({"unet.x.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "lora.bin")
    config = write(tmp_path, SMALL + "personalized:\n  - {id: l, method: lora, path: lora.bin}\n")
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    line = assert_refused(code, err, "lora.bin", "allow_pickle: true", "study.yaml")
    assert "--allow-pickle" not in line
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before


@pytest.mark.parametrize("command", ["capture", "personalize"])
def test_a_lora_passed_as_base_is_named_as_such(cli, tmp_path, command):
    lora = _lora_file(tmp_path / "pytorch_lora_weights.safetensors")
    config = write(tmp_path, SMALL)
    images = tmp_path / "images"
    images.mkdir()
    before = snapshot(tmp_path)
    args = {
        "capture": ("capture", "-c", config, "-o", tmp_path / "s.h5", "--base", lora, "-q"),
        "personalize": (
            "personalize",
            "-m",
            "lora",
            "-i",
            images,
            "-t",
            "sks",
            "-c",
            "dog",
            "-o",
            tmp_path / "w",
            "--base",
            lora,
            "-q",
        ),
    }[command]
    line = assert_refused(*cli(*args)[::2], "--base", "LoRA weights", "personalized:")
    assert "--base-config" not in line and "stable-diffusion" not in line
    assert snapshot(tmp_path) == before


def test_a_pickle_base_says_how_to_proceed(cli, tmp_path):
    torch.save({"model.diffusion_model.x": torch.zeros(2)}, tmp_path / "sd.ckpt")
    config = write(tmp_path, SMALL.replace("cemaps/tiny-sd", "sd.ckpt"))
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    line = assert_refused(code, err, "sd.ckpt", "pickle", ".safetensors")
    assert "--allow-pickle" not in line
    assert snapshot(tmp_path) == before


@pytest.fixture()
def images(tmp_path):
    from cemaps.data import synthetic_subject_images

    folder = tmp_path / "images"
    folder.mkdir()
    synthetic_subject_images("object1", n=1, size=64)[0].save(folder / "a.png")
    return folder


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--rank", "0"), "--rank 0"),
        (("--learning-rate", "-1"), "--learning-rate -1.0"),
        (("--batch-size", "0"), "--batch-size 0"),
        (("--resolution", "12"), "--resolution 12"),
        (("--lora-targets", "everything"), "--lora-targets 'everything'"),
        (
            ("-m", "textual_inversion", "-t", "<new-tok>", "--initializer-token", "a red dog"),
            "--initializer-token 'a red dog'",
        ),
    ],
)
def test_personalize_errors_name_the_flags(cli, tmp_path, images, flags, named):
    before = snapshot(tmp_path)
    code, _, err = cli(
        "personalize",
        "-m",
        "lora",
        "-i",
        images,
        "-t",
        "sks",
        "-c",
        "dog",
        "-o",
        tmp_path / "w",
        "--steps",
        "2",
        "-q",
        *flags,
    )
    line = assert_refused(code, err, named)
    assert "TrainSettings" not in line and "=True" not in line
    assert snapshot(tmp_path) == before


def test_a_non_empty_out_names_the_overwrite_flag(cli, tmp_path, images):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x.txt").write_text("x")
    before = snapshot(tmp_path)
    code, _, err = cli("personalize", "-m", "lora", "-i", images, "-t", "sks", "-c", "dog", "-o", tmp_path / "w", "-q")
    line = assert_refused(code, err, "--overwrite", "x.txt")
    assert "overwrite=True" not in line
    assert snapshot(tmp_path) == before


def test_a_state_dict_error_is_not_cut_after_its_first_line(monkeypatch, tmp_path):
    """torch's "Error(s) in loading state_dict for CLIP:" is followed by the keys on the next lines."""
    import open_clip

    from cemaps.analysis.clip_scorer import ClipScorer
    from cemaps.errors import ModelLoadError

    def refuse(*args, **kwargs):
        raise RuntimeError('Error(s) in loading state_dict for CLIP:\n\tMissing key(s) in state_dict: "visual.proj".')

    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "clip.safetensors"))
    with pytest.raises(ModelLoadError) as raised:
        ClipScorer.load("ViT-B-32", tmp_path / "clip.safetensors", device="cpu")
    message = str(raised.value)
    assert "\n" not in message and 'Missing key(s) in state_dict: "visual.proj"' in message


def test_the_printer_joins_a_multi_line_error(cli, tmp_path, monkeypatch):
    from cemaps.errors import StoreError

    def fail(path):
        raise StoreError(f"{path}: first line\n  second line with the detail")

    monkeypatch.setattr("cemaps.store.open_store", fail)
    code, _, err = cli("inspect", tmp_path / "s.h5")
    assert_refused(code, err, "first line second line with the detail")
