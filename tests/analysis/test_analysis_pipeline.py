"""End to end: a captured study with personalized models -> results folder; a planted layer change."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cemaps.analysis.pipeline import run_analysis
from cemaps.analysis.shift.attention_shift import attention_shift_table
from cemaps.models import tiny_pipeline
from cemaps.probes import CrossAttentionSettings
from cemaps.store import open_store
from cemaps.study.config import GenerationSettings, PersonalizedEntry, StudyConfig
from cemaps.study.runner import run_study

TARGET = "down_blocks.2.attentions.0.transformer_blocks.0.attn2"
EXECUTION_ORDER_BEFORE = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.0.attentions.1.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
]


def _planted_unet(folder, layer=TARGET, scale=3.0):
    """A "personalized" model whose only change is one cross-attention layer's to_k weights."""
    pipe = tiny_pipeline(seed=0)
    to_k = pipe.unet.get_submodule(layer).to_k
    with torch.no_grad():
        to_k.weight.add_(scale * torch.randn(to_k.weight.shape, generator=torch.Generator().manual_seed(1)))
    pipe.unet.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    config = StudyConfig(
        prompts="demo24",
        seeds=(0,),
        generation=GenerationSettings(steps=3, batch_size=8),
        capture=CrossAttentionSettings(timesteps=[0], spatial="native", dtype="float32"),
        personalized=(
            PersonalizedEntry(
                id="db-tok", method="dreambooth", path=str(_planted_unet(root / "unet")), subject="object1"
            ),
            PersonalizedEntry(
                id="db-same", method="dreambooth", path=str(_planted_unet(root / "same", scale=0.0)), subject="face1"
            ),
        ),
    )
    run_study(config, root / "study.h5", progress=False, pipe=tiny_pipeline(seed=0))
    return root / "study.h5"


def test_a_planted_to_k_change_shows_where_it_is(planted_store):
    with open_store(planted_store) as store:
        shift = attention_shift_table(store)
    planted = shift[shift.model_id == "db-tok"].groupby("layer")["attention_shift"].mean()
    assert planted.idxmax() == TARGET
    assert planted[TARGET] > 1e-3
    for layer in EXECUTION_ORDER_BEFORE:  # they run before the change at the first step
        assert planted[layer] == pytest.approx(0.0, abs=1e-7), layer
    unchanged = shift[shift.model_id == "db-same"]["attention_shift"]
    assert unchanged.abs().max() == pytest.approx(0.0, abs=1e-7)


def test_run_analysis_writes_the_results_folder(planted_store, tmp_path):
    summary_path = run_analysis(planted_store, tmp_path / "results", n_perm=199, progress=False)
    out = summary_path.parent
    for name in (
        "manifest.json",
        "summary.json",
        "disruption.csv",
        "disruption.parquet",
        "disruption_by_prompt.csv",
        "attention_shift.csv",
        "layers.csv",
        "similarity.csv",
        "cem_alignment_drop.csv",
        "cem_image_drift.csv",
        "entanglement_maps.h5",
        "prompts.csv",
        "models.csv",
        "weight_deltas.csv",
        "layers_asymptotic.csv",
    ):
        assert (out / name).is_file(), name
    summary = json.loads(summary_path.read_text())
    questions = {"methods", "abstractness", "semantic_proximity", "layer_linking", "clustering"}
    assert set(summary) == questions | {"power"}
    assert all(set(summary[q]) == {"alignment_drop", "image_drift", "findings"} for q in questions)
    assert set(summary["power"]) == {"alignment_drop", "image_drift"}
    # the all-zero model is left out of the tests and every layer correlation
    assert summary["abstractness"]["alignment_drop"]["excluded_structural_zero_models"] == ["db-same"]
    asymptotic = pd.read_csv(out / "layers_asymptotic.csv")
    assert not asymptotic["null_rate_validated"].any() and "p_asymptotic" in asymptotic
    assert "p_asymptotic" not in json.dumps(summary["layer_linking"])
    disruption = pd.read_csv(out / "disruption.csv")
    assert len(disruption) == 2 * 24
    same = disruption[disruption.model_id == "db-same"]
    assert np.allclose(same["image_drift"], 0, atol=1e-6) and np.allclose(same["alignment_drop"], 0, atol=1e-4)
    assert same["structural_zero"].all()  # an unchanged model is bit-identical to the base: 0 by construction
    assert not disruption[disruption.model_id == "db-tok"]["structural_zero"].all()
    assert (disruption[disruption.model_id == "db-tok"]["image_drift"] > 0).any()
    layers = pd.read_csv(out / "layers.csv")
    assert len(layers) == 16 and layers["layer"].iloc[0].startswith("down_blocks.0")
    deltas = pd.read_csv(out / "weight_deltas.csv")
    assert set(deltas["model_id"]) == {"db-tok"}
    assert set(deltas["module"]) == {TARGET + ".to_k"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["base"]["model_id"] == "cemaps/tiny-sd"


def test_analysis_refuses_a_store_without_personalized_models(tmp_path):
    from cemaps.errors import StoreError

    run_study(
        StudyConfig(prompts=["a cat"], generation=GenerationSettings(steps=2)),
        tmp_path / "s.h5",
        progress=False,
        pipe=tiny_pipeline(seed=0),
    )
    with pytest.raises(StoreError, match="no personalized models"):
        run_analysis(tmp_path / "s.h5", tmp_path / "results", progress=False)
