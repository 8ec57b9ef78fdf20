"""Issue 22, kind 3: every bad value in study.yaml is refused in one line when the config is read."""

from __future__ import annotations

import textwrap

import pytest

from cemaps.errors import ConfigError
from cemaps.study.config import load_config

HEAD = "base: cemaps/tiny-sd\n"


def refused(tmp_path, body: str, files: dict[str, bytes] | None = None) -> str:
    for name, data in (files or {}).items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "study.yaml"
    path.write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("generation: {guidance_scale: .nan}", "generation.guidance_scale=nan: expected a finite number"),
        ("generation: {guidance_scale: .inf}", "generation.guidance_scale=inf: expected a finite number"),
        ("generation: {guidance_scale: -.inf}", "generation.guidance_scale=-inf: expected a finite number"),
        ("generation: {guidance_scale: -2}", "generation.guidance_scale=-2: expected a number >= 0"),
        (
            "personalized: [{id: a, method: lora, path: x, scale: .nan}]",
            "personalized 'a': scale=nan: expected a finite number",
        ),
        ("seeds: [9223372036854775808]", "seeds: 9223372036854775808 is not an integer in 0..2**63-1"),
        ("seeds: [18446744073709551616]", "seeds: 18446744073709551616 is not an integer in 0..2**63-1"),
        ("seeds: [-1]", "seeds: -1 is not an integer in 0..2**63-1"),
        ("seeds: [3, 1, 3]", "seeds: seed 3 is listed twice; expected each seed once"),
    ],
)
def test_numbers_and_seeds_are_checked_at_load(tmp_path, body, expected):
    assert refused(tmp_path, "prompts: [a]\n" + body).startswith(expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('prompts: ["a red\\0mug"]', "prompts[0]: holds a NUL character at position 5"),
        ('prompts: [ok, "a\\ud800b"]', "prompts[1]: holds a lone surrogate '\\ud800' at position 1"),
        ('prompts: [a]\ngeneration: {negative_prompt: "x\\0"}', "generation.negative_prompt: holds a NUL character"),
    ],
)
def test_texts_with_nul_or_lone_surrogates_are_refused_at_load(tmp_path, body, expected):
    assert refused(tmp_path, body).startswith(expected)


def test_a_prompt_file_with_a_nul_is_refused_at_load(tmp_path):
    message = refused(tmp_path, "prompts: p.csv\n", {"p.csv": b'prompt_id,text\np1,ok\np2,"a\x00b"\n'})
    assert message == f"{tmp_path / 'p.csv'}: prompt 'p2' text: holds a NUL character at position 1; remove it"


def test_emoji_and_right_to_left_prompts_pass(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(HEAD + 'prompts: ["a 🐱 on a mat", "שלום עולם", "café"]\n', encoding="utf-8")
    assert len(load_config(path).prompts) == 3


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("../../evil", "personalized id '../../evil': expected a name without '.'"),
        ("lora.v1", "personalized id 'lora.v1': expected a name without '.' (diffusers uses it as the LoRA adapter"),
        ("keys", "personalized id 'keys': is the name of a torch ModuleDict attribute"),
        ('"a\\0b"', "personalized id: holds a NUL character"),
    ],
)
def test_model_ids_follow_the_adapter_name_rule(tmp_path, model_id, expected):
    message = refused(tmp_path, f"prompts: [a]\npersonalized: [{{id: {model_id}, method: lora, path: x}}]\n")
    assert message.startswith(expected)
