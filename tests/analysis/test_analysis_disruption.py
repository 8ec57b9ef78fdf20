"""Disruption table (CLIP alignment drop, image drift), aggregation over seeds, semantic similarity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.analysis.disruption import (
    aggregate_over_seeds,
    disruption_table,
    semantic_similarity,
    structural_zero_sentence,
    structural_zeros_by_model,
)
from cemaps.errors import ConfigError
from cemaps.store import StoreWriter, open_store

PROMPTS = {
    "p000": ("a red mug on a wooden table", "concrete", "object"),
    "p001": ("the feeling of freedom", "abstract", "concept"),
    "p002": ("a cat sitting on a red chair next to a lamp", "compositional", "animal"),
}
MODELS = [
    {"model_id": "base", "method": "base", "subject_id": None, "subject_domain": None},
    {"model_id": "lora-mug", "method": "lora", "subject_id": "mug", "subject_domain": "object"},
    {"model_id": "ti-face1", "method": "ti", "subject_id": "face1", "subject_domain": "person"},
]
SEEDS = (0, 1)
ATTN = "cross_attention/mid_block.attentions.0.transformer_blocks.0.attn2"


class CountingScorer(ClipScorer):
    """The tiny scorer, counting how many images it embeds."""

    images_embedded = 0

    def image_embeddings(self, images, batch_size=64):
        self.images_embedded += len(images)
        return super().image_embeddings(images, batch_size)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(seed=0)


@pytest.fixture(scope="module")
def scorer():
    tiny = ClipScorer.tiny(seed=1)
    return CountingScorer(tiny.model, tiny.preprocess, tiny.tokenizer)


def build_store(
    path, *, identical: bool, with_text: bool = True, lora_maps_differ: bool = False, lora_without_maps: bool = False
):
    rng = np.random.default_rng(0)
    with StoreWriter(
        path, settings={"capture": {"halves": ["cond"]}}, base={"model_id": "tiny"}, records_per_part=8
    ) as writer:
        writer.add_models(MODELS)
        writer.add_prompts(
            [
                {
                    "prompt_id": pid,
                    "text": text if with_text else "",
                    "tokens": ["a"],
                    "token_ids": [1],
                    "abstractness": abstractness,
                    "domain": domain,
                }
                for pid, (text, abstractness, domain) in PROMPTS.items()
            ]
        )
        base_images = {}
        for model in MODELS:
            for prompt_id in PROMPTS:
                for seed in SEEDS:
                    if model["method"] == "base" or not identical:
                        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    else:
                        image = base_images[prompt_id, seed]
                    if model["method"] == "base":
                        base_images[prompt_id, seed] = image
                    attention = 0.5 if lora_maps_differ and model["method"] == "lora" else 0.25
                    arrays = {ATTN: np.full((1, 1, 1, 1, 2, 2), attention, np.float16)}
                    axes = {ATTN: ("token", "step", "half", "head", "y", "x")}
                    if lora_without_maps and model["method"] == "lora":  # a record must store some array
                        arrays, axes = {"scores/x": np.zeros((1, 2), np.float16)}, {"scores/x": ("token", "x")}
                    writer.write_record(model["model_id"], prompt_id, seed, arrays, axes=axes, image=image)
    return open_store(path)


@pytest.fixture(scope="module")
def same_store(tmp_path_factory):
    with build_store(tmp_path_factory.mktemp("same") / "same.h5", identical=True) as store:
        yield store


@pytest.fixture(scope="module")
def different_store(tmp_path_factory):
    with build_store(tmp_path_factory.mktemp("different") / "different.h5", identical=False) as store:
        yield store


def test_identical_images_give_zero_drop_and_drift(same_store, scorer):
    table = disruption_table(same_store, scorer, batch_size=4)
    assert list(table.columns) == [
        "model_id",
        "prompt_id",
        "seed",
        "clip_base",
        "clip_personalized",
        "alignment_drop",
        "image_drift",
        "image_identical",
        "structural_zero",
    ]
    assert len(table) == 2 * len(PROMPTS) * len(SEEDS)
    # bit-identical image and maps: zero by construction, exactly
    assert table["image_identical"].all() and table["structural_zero"].all()
    assert (table["alignment_drop"] == 0.0).all() and (table["image_drift"] == 0.0).all()
    counts = structural_zeros_by_model(table.assign(method=table["model_id"].str.split("-").str[0]))
    assert counts[["model_id", "method", "n_records", "records_structural_zero"]].values.tolist() == [
        ["lora-mug", "lora", 6, 6],
        ["ti-face1", "ti", 6, 6],
    ]
    sentence = structural_zero_sentence(counts)
    assert "ti-face1 (ti): 6 of 6 records" in sentence and "by construction" in sentence


def test_identical_image_with_different_maps_is_not_a_structural_zero(tmp_path, scorer):
    with build_store(tmp_path / "maps.h5", identical=True, lora_maps_differ=True) as store:
        table = disruption_table(store, scorer, batch_size=3)
    lora = table["model_id"] == "lora-mug"
    assert table["image_identical"].all()
    assert not table.loc[lora, "structural_zero"].any() and table.loc[~lora, "structural_zero"].all()
    pairs = aggregate_over_seeds(table, ["alignment_drop"])
    assert pairs.groupby("model_id")["structural_zero"].all().to_dict() == {"lora-mug": False, "ti-face1": True}


def test_a_record_without_the_base_twins_maps_is_not_a_structural_zero(tmp_path, scorer):
    with build_store(tmp_path / "nomaps.h5", identical=True, lora_without_maps=True) as store:
        table = disruption_table(store, scorer, batch_size=4)
    lora = table["model_id"] == "lora-mug"
    assert table["image_identical"].all()
    assert not table.loc[lora, "structural_zero"].any() and table.loc[~lora, "structural_zero"].all()


def test_measured_records_are_not_structural_zeros(different_store, scorer):
    table = disruption_table(different_store, scorer, batch_size=5)
    assert not table["image_identical"].any() and not table["structural_zero"].any()
    assert "every zero in these results is measured" in structural_zero_sentence(structural_zeros_by_model(table))
    with pytest.raises(ConfigError, match="structural_zero"):
        structural_zeros_by_model(table.drop(columns="structural_zero"))


def test_values_match_a_direct_computation_and_base_embeddings_are_cached(different_store, scorer):
    store = different_store
    scorer.images_embedded = 0
    table = disruption_table(store, scorer, batch_size=5)
    # every personalized image once, and each base twin once although two models share it
    assert scorer.images_embedded == len(table) + len(PROMPTS) * len(SEEDS)
    records = store.records.set_index(["model_id", "prompt_id", "seed"])["record"]
    row = table.iloc[7]
    text = PROMPTS[row.prompt_id][0]
    base_image = store.images([int(records["base", row.prompt_id, row.seed])])
    personalized_image = store.images([int(records[row.model_id, row.prompt_id, row.seed])])
    assert row.clip_base == pytest.approx(float(scorer.clip_score(base_image, [text])[0]), abs=1e-4)
    assert row.clip_personalized == pytest.approx(float(scorer.clip_score(personalized_image, [text])[0]), abs=1e-4)
    drift = 1 - float(np.sum(scorer.image_embeddings(base_image) * scorer.image_embeddings(personalized_image)))
    assert row.image_drift == pytest.approx(drift, abs=1e-5)
    np.testing.assert_allclose(table["alignment_drop"], table["clip_base"] - table["clip_personalized"])
    assert (table["image_drift"] > 0).all()
    assert table[["clip_base", "clip_personalized"]].stack().between(0, 100).all()


def test_disruption_table_bad_input(same_store, scorer):
    with pytest.raises(ConfigError, match="batch_size"):
        disruption_table(same_store, scorer, batch_size=0)


def test_aggregate_over_seeds_statistics():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "model_id": ["m1"] * 4 + ["m2"] * 3 + ["m3"],
            "prompt_id": ["p1"] * 4 + ["p1"] * 3 + ["p2"],
            "seed": [0, 1, 2, 3, 0, 1, 2, 0],
            "alignment_drop": rng.normal(size=8),
            "image_drift": rng.random(8),
        }
    )
    out = aggregate_over_seeds(table, ["alignment_drop", "image_drift"]).set_index(["model_id", "prompt_id"])
    values = table.loc[table.model_id == "m1", "alignment_drop"].to_numpy()
    m1 = out.loc[("m1", "p1")]
    assert m1.alignment_drop == pytest.approx(values.mean())
    assert m1.alignment_drop_sd == pytest.approx(values.std(ddof=1))
    assert m1.alignment_drop_n == 4
    low, high = stats.t.interval(0.95, df=3, loc=values.mean(), scale=stats.sem(values))
    assert (m1.alignment_drop_ci_low, m1.alignment_drop_ci_high) == pytest.approx((low, high))
    single = out.loc[("m3", "p2")]
    assert single.image_drift_n == 1 and np.isnan(single.image_drift_sd) and np.isnan(single.image_drift_ci_low)


def test_aggregate_skips_nan_values_in_n():
    table = pd.DataFrame({"model_id": ["m"] * 3, "prompt_id": ["p"] * 3, "alignment_drop": [1.0, np.nan, 3.0]})
    out = aggregate_over_seeds(table, "alignment_drop").iloc[0]
    assert out.alignment_drop == 2.0 and out.alignment_drop_n == 2


def test_aggregate_joins_store_labels(different_store, scorer):
    store = different_store
    table = disruption_table(store, scorer)
    out = aggregate_over_seeds(table, ["alignment_drop"], models=store.models, prompts=store.prompts)
    assert list(out.columns[:7]) == [
        "model_id",
        "prompt_id",
        "method",
        "subject_id",
        "subject_domain",
        "abstractness",
        "domain",
    ]
    assert len(out) == 2 * len(PROMPTS)
    assert (out["alignment_drop_n"] == len(SEEDS)).all()
    row = out[(out.model_id == "ti-face1") & (out.prompt_id == "p001")].iloc[0]
    assert (row.method, row.subject_id, row.subject_domain, row.abstractness, row.domain) == (
        "ti",
        "face1",
        "person",
        "abstract",
        "concept",
    )


@pytest.mark.parametrize(
    ("value_cols", "message"),
    [([], "empty"), (["clip_missing"], "lacks column"), (["label"], "not numeric")],
)
def test_aggregate_bad_input(value_cols, message):
    table = pd.DataFrame({"model_id": ["m"], "prompt_id": ["p"], "label": ["x"], "alignment_drop": [1.0]})
    with pytest.raises(ConfigError, match=message):
        aggregate_over_seeds(table, value_cols)


def test_aggregate_label_table_without_key():
    table = pd.DataFrame({"model_id": ["m"], "prompt_id": ["p"], "alignment_drop": [1.0]})
    with pytest.raises(ConfigError, match="'model_id'"):
        aggregate_over_seeds(table, ["alignment_drop"], models=pd.DataFrame({"method": ["lora"]}))


def test_semantic_similarity_with_the_pipeline_text_encoder(pipe):
    descriptors = {"lora-mug": "a red mug", "ti-face1": "a young woman's face"}
    prompts = {"p000": "a red mug", "p001": "the feeling of freedom", "p002": "a portrait of an old man"}
    table = semantic_similarity(pipe.text_encoder, pipe.tokenizer, descriptors, prompts)
    assert list(table.columns) == ["model_id", "prompt_id", "similarity"]
    assert len(table) == 6
    assert table["similarity"].between(-1 - 1e-6, 1 + 1e-6).all()
    same = table[(table.model_id == "lora-mug") & (table.prompt_id == "p000")]["similarity"].item()
    assert same == pytest.approx(1.0, abs=1e-5)
    assert table.set_index(["model_id", "prompt_id"])["similarity"].drop(("lora-mug", "p000")).lt(1 - 1e-6).all()
    # batching does not change results
    batched = semantic_similarity(pipe.text_encoder, pipe.tokenizer, descriptors, prompts, batch_size=1)
    np.testing.assert_allclose(batched["similarity"], table["similarity"], atol=1e-6)


@pytest.mark.parametrize(
    ("descriptors", "prompts", "message"),
    [
        ({}, {"p": "x"}, "descriptors"),
        ({"m": "x"}, {"p": " "}, r"prompts\['p'\]"),
        ({"m": None}, {"p": "x"}, "descriptors"),
    ],
)
def test_semantic_similarity_bad_input(pipe, descriptors, prompts, message):
    with pytest.raises(ConfigError, match=message):
        semantic_similarity(pipe.text_encoder, pipe.tokenizer, descriptors, prompts)
