"""The training command end to end at toy length: folders that the loaders read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import cemaps
from cemaps.cli import app
from cemaps.toyworld.clip_training import ClipTraining, train_toy_clip
from cemaps.toyworld.scorer import toy_clip_scorer
from cemaps.toyworld.train import PipelineTraining, train_pipeline


def test_pipeline_training_writes_a_loadable_diffusers_folder_with_its_record(tmp_path):
    settings = PipelineTraining(n_pairs=8, vae_steps=1, vae_batch=2, unet_minutes=0.002, unet_batch=2)
    out = train_pipeline(tmp_path / "toy", settings, device="cpu")
    pipe = cemaps.load_pipeline(str(out), device="cpu")
    assert sum(name.endswith("attn2") for name, _ in pipe.unet.named_modules()) == 16
    record = json.loads((out / "training_pipeline.json").read_text())
    assert record["settings"]["n_pairs"] == 8 and "command" in record
    assert (out / "train_log.csv").read_text().startswith("phase,step,seconds,loss")


def test_clip_training_writes_an_open_clip_config_and_weights_the_scorer_loads(tmp_path):
    out = train_toy_clip(tmp_path / "clip", ClipTraining(n_pairs=8, minutes=0.002, batch=4), device="cpu")
    config = json.loads((out / "cemaps-toyclip.json").read_text())
    assert config["vision_cfg"]["image_size"] == 32
    scorer = toy_clip_scorer(device="cpu", folder=out)
    assert scorer.image_embeddings(np.zeros((1, 32, 32, 3), dtype=np.uint8)).shape == (1, config["embed_dim"])


def test_command_line_rejects_an_unknown_phase(tmp_path):
    result = CliRunner().invoke(app, ["toyworld", "train", "fit", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "'fit' is not a model to train; expected one of pipeline, clip, vae-decoder" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vae-decoder"], "--resume is required"),
        (["pipeline", "--resume", "nowhere"], "--resume nowhere: not a saved pipeline folder"),
        (["pipeline", "--minutes", "0"], "--minutes 0.0: expected a positive, finite time budget"),
        (["clip", "--minutes", "nan"], "--minutes nan: expected a positive, finite time budget"),
        (["pipeline", "--pairs", "0"], "--pairs 0: expected at least one rendered pair per process"),
        (["pipeline", "--warmup", "0"], "--warmup 0: expected at least 1 step"),
        (["pipeline", "--lr", "0"], "--lr 0.0: expected a positive learning rate"),
        (["pipeline", "--lr", "-1"], "--lr -1.0: expected a positive learning rate"),
        (["pipeline", "--final-lr-fraction", "2"], "--final-lr-fraction 2.0: expected a fraction in (0, 1]"),
        (["pipeline", "--device", "nonsense"], "--device='nonsense': not a device name"),
        (["clip", "--lr", "1e-3"], "--lr: applies to toyworld train pipeline only"),
        (["clip", "--resume", "x"], "--resume: toyworld train clip always starts from scratch"),
        (["pipeline", "--unet-channels", "8,16"], "--unet-channels 8,16: expected 4 comma-separated widths"),
        (["pipeline", "--unet-channels", "12,16,32,32"], "--unet-channels 12,16,32,32: expected 4 comma-separated"),
        (["pipeline", "--unet-channels", "a,b,c,d"], "--unet-channels a,b,c,d: expected 4 comma-separated widths"),
        (["pipeline", "--text-width", "6"], "--text-width 6: expected a positive multiple of 4"),
        (["pipeline", "--batch", "0"], "--batch 0: expected at least one sample per process"),
        (["pipeline", "--vae", "nowhere"], "--vae nowhere: not a saved pipeline folder"),
        (["clip", "--text-width", "128"], "--text-width: applies to toyworld train pipeline only"),
    ],
)
def test_cli_refuses_bad_training_input_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["toyworld", "train", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_new_widths_with_resume(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "model_index.json").write_text("{}")
    args = ["pipeline", "--resume", str(saved), "--unet-channels", "32,64,128,128", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["toyworld", "train", *args])
    assert result.exit_code == 2 and "--unet-channels: a new model's setting; with --resume" in result.output
    assert not (tmp_path / "out").exists()


def test_pipeline_training_at_other_widths_on_the_shipped_vae(tmp_path):
    from cemaps.toyworld.assets import shipped_pipeline_folder

    shipped = shipped_pipeline_folder()
    settings = PipelineTraining(
        n_pairs=8, unet_minutes=0.002, unet_batch=2, unet_channels=(8, 8, 16, 16), text_width=8, vae=str(shipped)
    )
    out = train_pipeline(tmp_path / "toy", settings, device="cpu")
    pipe = cemaps.load_pipeline(str(out), device="cpu")
    assert tuple(pipe.unet.config.block_out_channels) == (8, 8, 16, 16)
    assert pipe.text_encoder.config.hidden_size == 8 == pipe.unet.config.cross_attention_dim
    # the VAE is the shipped one, untrained here (no VAE phase in the log), with its latent scaling
    shipped_vae = cemaps.load_pipeline("cemaps/toyworld", device="cpu").vae
    assert pipe.vae.config.scaling_factor == shipped_vae.config.scaling_factor
    for (name, value), (_, reference) in zip(
        pipe.vae.state_dict().items(), shipped_vae.state_dict().items(), strict=True
    ):
        assert (value == reference).all(), name
    assert not any(line.startswith("vae,") for line in (out / "train_log.csv").read_text().splitlines())


def test_cli_refuses_a_folder_of_user_files_and_keeps_them(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, ["toyworld", "train", "clip", "--out", str(tmp_path), "--minutes", "1"])
    assert result.exit_code == 2 and "mine.txt" in result.output
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_cli_passes_its_options_to_the_trainer(tmp_path, monkeypatch):
    import cemaps.toyworld.train as train

    seen = {}
    monkeypatch.setattr(train, "train_pipeline", lambda out, settings, device, progress: seen.update(locals()))
    args = ["--minutes", "3", "--pairs", "50", "--lr", "1e-3", "--final-lr-fraction", "0.1", "-q", "--batch", "128"]
    args += ["--unet-channels", "32,64,128,128", "--text-width", "96"]
    result = CliRunner().invoke(app, ["toyworld", "train", "pipeline", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert (settings.unet_minutes, settings.n_pairs, settings.unet_lr, settings.final_lr_fraction) == (3, 50, 1e-3, 0.1)
    assert (settings.unet_batch, settings.unet_channels, settings.text_width, settings.vae) == (
        128,
        (32, 64, 128, 128),
        96,
        None,
    )
    assert seen["progress"] is False and (tmp_path / "run").is_dir()


def test_cli_defaults_are_the_trainers_defaults():
    import inspect

    from cemaps.cli.toyworld import DEFAULTS_HELP, train_command
    from cemaps.toyworld.clip_training import ClipTraining

    options = {name: p.default.default for name, p in inspect.signature(train_command).parameters.items()}
    defaults = PipelineTraining()
    assert (options["pairs"], options["warmup"], options["lr"], options["final_lr_fraction"]) == (
        defaults.n_pairs,
        defaults.warmup_steps,
        defaults.unet_lr,
        defaults.final_lr_fraction,
    )
    widths = tuple(int(w) for w in options["unet_channels"].split(","))
    assert (options["batch"], widths, options["text_width"], options["vae"]) == (
        defaults.unet_batch,
        defaults.unet_channels,
        defaults.text_width,
        defaults.vae,
    )
    assert (
        f"pipeline {defaults.unet_minutes:g}" in DEFAULTS_HELP and f"clip {ClipTraining().minutes:g}" in DEFAULTS_HELP
    )


@pytest.mark.parametrize(
    ("argv0", "program"),
    [
        ("/venv/bin/cemaps", "cemaps"),
        ("/src/cemaps/__main__.py", "python -m cemaps"),
    ],
)
def test_training_record_keeps_the_command_as_typed(monkeypatch, argv0, program):
    from cemaps.toyworld.train_records import command_line

    monkeypatch.setattr("sys.argv", [argv0, "toyworld", "train", "clip", "--out", "my runs"])
    assert command_line() == f"{program} toyworld train clip --out 'my runs'"


def test_a_stop_file_left_by_an_earlier_run_does_not_end_the_next_one(tmp_path):
    out = tmp_path / "clip"
    out.mkdir()
    (out / "STOP").touch()
    train_toy_clip(out, ClipTraining(n_pairs=8, minutes=0.01, batch=4), device="cpu")
    assert not (out / "STOP").exists()
    rows = (out / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) >= 2 and rows[-1].startswith("clip,")  # a short run still logs its loss
