"""`cemaps personalize`, registered on a throwaway typer app as the lead registers it."""

from __future__ import annotations

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cemaps.cli.personalize import personalize_command


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("personalize")(personalize_command)

    @app.command("noop")  # a second command keeps typer from collapsing the app into one command
    def noop() -> None: ...

    return app


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "subject"
    folder.mkdir()
    Image.new("RGB", (64, 64), "saddlebrown").save(folder / "dog.png")
    return folder


def test_lora_run_writes_the_artifact(app, image_folder, tmp_path):
    out = tmp_path / "lora"
    args = [
        "personalize",
        "--method",
        "lora",
        "--images",
        str(image_folder),
        "--token",
        "sks",
        "--class-word",
        "dog",
        "--out",
        str(out),
        "--steps",
        "2",
        "--rank",
        "2",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "cemaps_train.json").is_file()
    assert "lora: 2 steps" in result.output


def test_textual_inversion_run_with_learning_rate(app, image_folder, tmp_path):
    out = tmp_path / "ti"
    args = [
        "personalize",
        "-m",
        "textual_inversion",
        "-i",
        str(image_folder),
        "-t",
        "<my-dog>",
        "-c",
        "dog",
        "-o",
        str(out),
        "--steps",
        "1",
        "--learning-rate",
        "0.01",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "learned_embeds.safetensors").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--method": "hypernetwork"}, "method 'hypernetwork' is unknown"),
        ({"--images": "missing-folder"}, "does not exist"),
        ({"--base": "./no/such/model"}, "does not exist"),
        ({"--steps": "0"}, "steps"),
        ({"--num-vectors": "2"}, "--num-vectors"),
    ],
)
def test_bad_input_exits_2_with_one_line(app, image_folder, tmp_path, change, message):
    options = {
        "--method": "lora",
        "--images": str(image_folder),
        "--token": "sks",
        "--class-word": "dog",
        "--out": str(tmp_path / "out"),
        "--quiet": None,
        **change,
    }
    args = ["personalize"] + [part for key, value in options.items() for part in (key, value) if part is not None]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(app, image_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    base_args = [
        "personalize",
        "-m",
        "lora",
        "-i",
        str(image_folder),
        "-t",
        "sks",
        "-c",
        "dog",
        "-o",
        str(out),
        "--steps",
        "1",
        "--quiet",
    ]
    refused = CliRunner().invoke(app, base_args)
    assert refused.exit_code == 2 and "overwrite" in refused.output
    # --overwrite replaces only an earlier personalize output: a file the user put there is never deleted
    kept = CliRunner().invoke(app, [*base_args, "--overwrite"])
    assert kept.exit_code == 2 and "old.txt" in kept.output
    assert (out / "old.txt").read_text() == "x"
    (out / "old.txt").unlink()
    assert CliRunner().invoke(app, base_args).exit_code == 0
    replaced = CliRunner().invoke(app, [*base_args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (out / "pytorch_lora_weights.safetensors").is_file()
