"""``prompt_sets:`` and ``in_context:`` in study.yaml, and the in-context set's checks before any image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cemaps.errors import ConfigError
from cemaps.study.config import load_config
from cemaps.study.prompt_sets import InContextSettings, in_context_store_path
from cemaps.study.sets import InContextSet

BASE = "base: cemaps/tiny-sd\nprompts: demo24\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(BASE + text, encoding="utf-8")
    return path


def test_defaults_run_only_the_unrelated_suite(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.prompt_sets == ("unrelated",)
    assert config.in_context == InContextSettings()


def test_both_sets_with_relative_paths_resolved(tmp_path):
    (tmp_path / "photos" / "face1").mkdir(parents=True)
    config = load_config(
        write(
            tmp_path,
            "prompt_sets: [unrelated, in_context]\n"
            "in_context: {prompts: mine.csv, subject_images: {face1: photos/face1}}\n",
        )
    )
    assert config.prompt_sets == ("unrelated", "in_context")
    assert config.in_context.prompts == str(tmp_path / "mine.csv")
    assert config.in_context.subject_images == {"face1": str(tmp_path / "photos" / "face1")}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("prompt_sets: [unrelated, related]\n", "unknown set 'related'"),
        ("prompt_sets: [in_context, in_context]\n", "twice"),
        ("prompt_sets: []\n", "non-empty"),
        ("prompt_sets: {a: 1}\n", "expected a list"),
        ("in_context: {prompts: in_context75}\n", "prompt_sets does not list in_context"),
        ("prompt_sets: [in_context]\nin_context: {templates: x}\n", "unknown key 'in_context.templates'"),
        ("prompt_sets: [in_context]\nin_context: [1]\n", "in_context: expected a mapping"),
        ("prompt_sets: [in_context]\nin_context: {subject_images: {face1: nowhere}}\n", "does not exist"),
        ("prompt_sets: [in_context]\nin_context: {subject_images: [a]}\n", "subject_images"),
        ("prompt_sets: [in_context]\npersonalized: [{id: m, method: lora, path: x}]\n", "has no subject"),
    ],
)
def test_bad_prompt_set_settings_name_the_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as error:
        load_config(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_in_context_set_checks_subjects_and_tokens_before_any_image(tmp_path):
    (tmp_path / "lora").mkdir()
    path = write(
        tmp_path, "prompt_sets: [in_context]\npersonalized: [{id: m, method: lora, path: lora, subject: face9}]\n"
    )
    with pytest.raises(ConfigError, match="subject 'face9' is not in subjects15"):
        InContextSet(load_config(path))
    path = write(
        tmp_path, "prompt_sets: [in_context]\npersonalized: [{id: m, method: lora, path: lora, subject: face1}]\n"
    )
    with pytest.raises(ConfigError, match="give token: sks"):
        InContextSet(load_config(path))
    # cemaps' own trainer records the token it trained: that is enough.
    (tmp_path / "lora" / "cemaps_train.json").write_text(json.dumps({"token": "zwx"}), encoding="utf-8")
    in_context = InContextSet(load_config(path))
    assert in_context.text("m", "face03@face1") == "a zwx woman wearing a red hat"
    assert in_context.text("base", "face03@face1") == "a woman wearing a red hat"
    assert in_context.prompt_ids("m") == [f"face{i:02d}@face1" for i in range(1, 26)]
    # A weights file inside the training folder finds the record beside it.
    (tmp_path / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    path = write(
        tmp_path,
        "prompt_sets: [in_context]\npersonalized: [{id: m, method: dreambooth, "
        "path: lora/pytorch_lora_weights.safetensors, subject: style4}]\n",
    )
    assert InContextSet(load_config(path)).text("m", "style07@style4") == "a zwx print of a sailing ship in a storm"


def test_in_context_store_sits_beside_the_main_one():
    assert in_context_store_path("out/study.h5") == Path("out/study.in_context.h5")
