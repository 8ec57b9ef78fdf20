"""Issue 13, kind 2: every boolean, number and enum of study.yaml is type-checked when the
config is read; duplicate keys and an empty file are errors; capture needs --config."""

from __future__ import annotations

import pytest
from cli_helpers import SMALL, assert_refused, snapshot, write

LORA_BIN = "personalized:\n  - {id: lora1, method: lora, path: lora.bin, allow_pickle: %s}\n"


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (LORA_BIN % '"false"', ("allow_pickle='false'", "true or false")),  # the example: a quoted boolean
        (LORA_BIN % "yes please", ("allow_pickle='yes please'", "true or false")),
        ("personalized:\n  - {id: l, method: lora, path: x.safetensors, scale: high}\n", ("scale='high'", "a number")),
        ("personalized:\n  - {id: l, method: lora, path: x.safetensors, scale: true}\n", ("scale=True", "a number")),
        ("images: 'no'\n", ("images='no'", "true or false")),
        ("dtype: int8\n", ("dtype='int8'", "float16")),
        ("device: 7\n", ("device=7", "a string")),
    ],
)
def test_wrong_types_are_refused_when_the_config_is_read(cli, tmp_path, extra, fragments):
    (tmp_path / "lora.bin").write_bytes(b"not really a pickle")
    config = write(tmp_path, SMALL + extra)
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    assert_refused(code, err, "study.yaml", *fragments)
    assert snapshot(tmp_path) == before  # no store, nothing else written


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("steps: 2", "steps: 2.5", "generation.steps"),
        ("steps: 2", 'steps: "2"', "generation.steps"),
        ("batch_size: 2", "batch_size: 2, guidance_scale: high", "generation.guidance_scale='high'"),
        ("timesteps: 2", "timesteps: 2, spatial: true", "capture.spatial=True"),
        ("timesteps: 2", "timesteps: [0, one]", "capture.timesteps"),
        ("timesteps: 2", "timesteps: 2, heads: 3", "capture.heads=3"),
    ],
)
def test_numbers_and_enums_in_sections(cli, tmp_path, old, new, fragment):
    config = write(tmp_path, SMALL.replace(old, new))
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    assert_refused(code, err, fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "text",
    [
        SMALL + "seeds: [1, 2]\n",  # a top-level key twice
        SMALL.replace("capture: {timesteps: 2}", "capture: {timesteps: 2, timesteps: 3}"),
        SMALL + "personalized:\n  - id: a\n    method: lora\n    path: x.safetensors\n    path: y.safetensors\n",
    ],
)
def test_duplicate_keys_are_an_error(cli, tmp_path, text):
    config = write(tmp_path, text)
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    line = assert_refused(code, err, "study.yaml", "appears twice", "line")
    assert "first on line" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_an_empty_config_is_an_error(cli, tmp_path, text):
    config = write(tmp_path, text)
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    assert_refused(code, err, "study.yaml", "empty")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags", [(), ("--prompts", "demo24"), ("-o", "s.h5")])
def test_capture_without_a_config_refuses(cli, tmp_path, monkeypatch, flags):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-q", *flags)
    assert_refused(code, err, "--config", "cemaps demo")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "study.h5").exists()


def test_python_api_gets_the_same_checks():
    from cemaps.errors import ConfigError
    from cemaps.study.config import PersonalizedEntry, config_from_dict

    with pytest.raises(ConfigError, match="allow_pickle='false'"):
        PersonalizedEntry(id="a", method="lora", path="x.bin", allow_pickle="false")
    with pytest.raises(ConfigError, match="images=1"):
        config_from_dict({"images": 1})
