"""Issue 13, kind 10: every path in study.yaml is relative to the config file's folder,
whatever the current directory (store: included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import SMALL, assert_refused, snapshot, write

from cemaps.study.config import load_config


def test_every_path_resolves_against_the_config_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    config = write(
        project,
        SMALL.replace("[a red mug, freedom]", "prompts.csv").replace("cemaps/tiny-sd", "./models/base")
        + (
            "store: out/study.h5\nbase_config: configs/sd15\n"
            "personalized:\n  - {id: l, method: lora, path: loras/l.safetensors}\n"
        ),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    study = load_config(config)
    assert Path(study.store) == project / "out" / "study.h5"
    assert Path(study.prompts) == project / "prompts.csv"
    assert Path(study.base) == project / "models" / "base"
    assert Path(study.base_config) == project / "configs" / "sd15"
    assert Path(study.personalized[0].path) == project / "loras" / "l.safetensors"


@pytest.mark.parametrize("base", ["cemaps/tiny-sd", "tiny", "runwayml/stable-diffusion-v1-5"])
def test_hub_ids_and_aliases_stay_as_written(tmp_path, base):
    assert load_config(write(tmp_path, SMALL.replace("cemaps/tiny-sd", base))).base == base


def test_a_base_folder_beside_the_config_wins_over_a_hub_id(tmp_path):
    (tmp_path / "runwayml" / "stable-diffusion-v1-5").mkdir(parents=True)
    config = write(tmp_path, SMALL.replace("cemaps/tiny-sd", "runwayml/stable-diffusion-v1-5"))
    assert Path(load_config(config).base) == tmp_path / "runwayml" / "stable-diffusion-v1-5"


def test_capture_writes_the_store_beside_the_config(cli, tmp_path, monkeypatch):
    project = tmp_path / "project"
    config = write(project, SMALL + "store: study.h5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("capture", "-c", config, "-q")
    assert code == 0, err
    assert (project / "study.h5").is_file() and not (elsewhere / "study.h5").exists()


def test_a_missing_relative_path_is_named_as_resolved(cli, tmp_path, monkeypatch):
    project = tmp_path / "project"
    config = write(project, SMALL.replace("[a red mug, freedom]", "lists/prompts.csv"))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    assert_refused(code, err, str(project / "lists" / "prompts.csv"))
    assert snapshot(tmp_path) == before
