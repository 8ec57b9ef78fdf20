"""The training command end to end at toy length: folders that the loaders read."""

from __future__ import annotations

import json

import numpy as np

import cemaps
from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.toyworld.clip_training import ClipTraining, train_toy_clip
from cemaps.toyworld.train import PipelineTraining, main, train_pipeline


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
    scorer = ClipScorer.load("cemaps-toyclip", out / "open_clip_model.safetensors", device="cpu")
    assert scorer.image_embeddings(np.zeros((1, 32, 32, 3), dtype=np.uint8)).shape == (1, config["embed_dim"])


def test_command_line_rejects_an_unknown_phase(capsys):
    try:
        main(["fit", "--out", "x"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "invalid choice: 'fit'" in capsys.readouterr().err
