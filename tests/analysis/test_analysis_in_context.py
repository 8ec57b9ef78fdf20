"""Subjects in context: CLIP-T, CLIP-I and the non-subject attention shift on planted stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.analysis.in_context import (
    analyse_in_context,
    context_positions,
    in_context_scores,
    in_context_summary,
    load_subject_images,
    non_subject_shift,
    subject_fidelity,
)
from cemaps.analysis.shift.attention_shift import attention_shift
from cemaps.errors import ConfigError, StoreError
from cemaps.store import StoreWriter, open_store

AXES = ("token", "step", "half", "head", "y", "x")
LAYER = "cross_attention/down_blocks.0.attentions.0.transformer_blocks.0.attn2"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# (model, method, tokens, subject span): the base's "a woman" is two tokens, TI's "<sks-face1>" one,
# DreamBooth's "a sks woman" three; the context "a photo of ... on a beach" is shared.
TEXTS = {
    "base": (
        "base",
        "a photo of a woman on a beach",
        [BOS, "a</w>", "photo</w>", "of</w>", "a</w>", "woman</w>", "on</w>", "a</w>", "beach</w>", EOS],
        (4, 6),
    ),
    "ti": (
        "textual_inversion",
        "a photo of <sks-face1> on a beach",
        [BOS, "a</w>", "photo</w>", "of</w>", "<sks-face1>", "on</w>", "a</w>", "beach</w>", EOS],
        (4, 5),
    ),
    "db": (
        "dreambooth",
        "a photo of a sks woman on a beach",
        [BOS, "a</w>", "photo</w>", "of</w>", "a</w>", "sks</w>", "woman</w>", "on</w>", "a</w>", "beach</w>", EOS],
        (4, 7),
    ),
}


def context_maps(rng: np.random.Generator) -> np.ndarray:
    """Maps [8 context tokens, 2 steps, 1 half, 1 head, 4, 4] (positive; normalised per token later)."""
    return rng.random((8, 2, 1, 1, 4, 4)) + 0.1


def with_subject(context: np.ndarray, span: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Context maps with ``span[1] - span[0]`` random subject-token maps inserted at ``span[0]``."""
    subject = rng.random((span[1] - span[0], *context.shape[1:])) + 0.1
    return np.concatenate([context[: span[0]], subject, context[span[0] :]]).astype(np.float32)


def write_store(
    path: Path,
    images: dict[str, np.ndarray],
    maps: dict[str, np.ndarray],
    texts: dict = TEXTS,
    prompt_text: str = TEXTS["base"][1],
) -> Path:
    settings = {"capture": {"half_labels": ["cond"]}, "prompt_set": {"name": "in_context", "subject_images": {}}}
    with StoreWriter(path, settings=settings, base={"model_id": "cemaps/tiny-sd"}) as writer:
        writer.add_models(
            [{"model_id": m, "method": method, "subject_id": "face1"} for m, (method, *_rest) in texts.items()]
        )
        base_tokens = texts["base"][2]
        writer.add_prompts(
            [
                {
                    "prompt_id": "face01@face1",
                    "text": prompt_text,
                    "tokens": base_tokens,
                    "token_ids": list(range(len(base_tokens))),
                    "template_id": "face01",
                    "kind": "face",
                    "subject_id": "face1",
                    "class_word": "woman",
                }
            ]
        )
        writer.write_table(
            "in_context_texts",
            pd.DataFrame(
                [
                    {
                        "model_id": m,
                        "prompt_id": "face01@face1",
                        "subject_id": "face1",
                        "text": text,
                        "tokens": tokens,
                        "token_ids": list(range(len(tokens))),
                        "subject_start": span[0],
                        "subject_stop": span[1],
                    }
                    for m, (_method, text, tokens, span) in texts.items()
                ]
            ),
        )
        for model_id in texts:
            writer.write_record(
                model_id, "face01@face1", 0, {LAYER: maps[model_id]}, axes={LAYER: AXES}, image=images[model_id]
            )
    return path


@pytest.fixture()
def scorer():
    return ClipScorer.tiny(seed=0)


@pytest.fixture()
def images():
    rng = np.random.default_rng(0)
    return {m: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for m in TEXTS}


def test_context_positions_skip_the_subject_phrase():
    assert context_positions(TEXTS["db"][2], 4, 7).tolist() == [0, 1, 2, 3, 7, 8, 9, 10]
    with pytest.raises(StoreError, match="does not fit"):
        context_positions(TEXTS["ti"][2], 4, 9)


def test_identical_context_maps_shift_zero_whatever_the_subject_tokens(tmp_path, images):
    rng = np.random.default_rng(1)
    context = context_maps(rng)
    maps = {m: with_subject(context, TEXTS[m][3], rng) for m in TEXTS}
    with open_store(write_store(tmp_path / "s.h5", images, maps)) as store:
        shift = non_subject_shift(store)
    assert sorted(shift["model_id"]) == ["db", "ti"]
    assert (shift["n_context_tokens"] == 8).all()
    np.testing.assert_array_equal(shift["non_subject_shift"], 0.0)


def test_a_planted_context_shift_is_found_at_its_aligned_tokens(tmp_path, images):
    rng = np.random.default_rng(2)
    context = context_maps(rng)
    moved = context.copy()
    moved[5, ..., :2, :2] += 5.0  # "a" of "on a beach" looks at the top-left corner in the personalized model
    maps = {
        "base": with_subject(context, TEXTS["base"][3], rng),
        "ti": with_subject(moved, TEXTS["ti"][3], rng),
        "db": with_subject(context, TEXTS["db"][3], rng),
    }
    with open_store(write_store(tmp_path / "s.h5", images, maps)) as store:
        shift = non_subject_shift(store).set_index("model_id")["non_subject_shift"]
    expected = attention_shift(context[:, :, :, :, :, :].astype(np.float32), moved.astype(np.float32), AXES, ["cond"])
    assert shift["ti"] == pytest.approx(float(expected), rel=1e-5)
    assert shift["ti"] > 0.01
    assert shift["db"] == 0.0
    with open_store(tmp_path / "s.h5") as store:
        per_token = non_subject_shift(store, per="token")
    ti = per_token[per_token["model_id"] == "ti"].set_index("token")
    # Only the moved "a" of "on a beach" (TI position 6) shifts; "a" of "a photo" (position 1) does not.
    assert ti.loc[ti["token_index"] == 6, "non_subject_shift"].item() > 0.05
    assert (ti.loc[ti["token_index"] != 6, "non_subject_shift"] == 0).all()
    assert ti["non_subject_shift"].mean() == pytest.approx(shift["ti"], rel=1e-5)
    assert list(ti.index) == [BOS, "a</w>", "photo</w>", "of</w>", "on</w>", "a</w>", "beach</w>", EOS]


def test_context_tokens_that_differ_from_the_twin_are_an_error(tmp_path, images):
    rng = np.random.default_rng(3)
    texts = dict(
        TEXTS,
        ti=(
            "textual_inversion",
            "x",
            [BOS, "a</w>", "photo</w>", "of</w>", "<sks-face1>", "in</w>", "a</w>", "beach</w>", EOS],
            (4, 5),
        ),
    )
    context = context_maps(rng)
    maps = {m: with_subject(context, texts[m][3], rng) for m in texts}
    with (
        open_store(write_store(tmp_path / "s.h5", images, maps, texts)) as store,
        pytest.raises(StoreError, match="context tokens"),
    ):
        non_subject_shift(store)


def test_identical_images_have_clip_i_one_and_clip_t_uses_the_class_prompt(tmp_path, images, scorer):
    rng = np.random.default_rng(4)
    context = context_maps(rng)
    maps = {m: with_subject(context, TEXTS[m][3], rng) for m in TEXTS}
    folder = tmp_path / "face1"
    folder.mkdir()
    Image.fromarray(images["ti"]).save(folder / "0.png")  # the subject's one training image is ti's image
    with open_store(write_store(tmp_path / "s.h5", images, maps)) as store:
        scores = in_context_scores(store, scorer, {"face1": folder}).set_index("model_id")
    assert scores.at["ti", "clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert scores.at["base", "clip_i"] < 0.999
    # CLIP-T of every image is with the class-word text, whatever text the model got.
    assert (scores["class_text"] == TEXTS["base"][1]).all()
    assert scores.at["ti", "text"] == TEXTS["ti"][1]
    expected = scorer.clip_score(images["ti"][None], [TEXTS["base"][1]])[0]
    assert scores.at["ti", "clip_t"] == pytest.approx(float(expected), rel=1e-5)


def test_no_training_images_leave_clip_i_missing(tmp_path, images, scorer):
    rng = np.random.default_rng(5)
    context = context_maps(rng)
    maps = {m: with_subject(context, TEXTS[m][3], rng) for m in TEXTS}
    with open_store(write_store(tmp_path / "s.h5", images, maps)) as store:
        scores = in_context_scores(store, scorer)
    assert scores["clip_i"].isna().all() and scores["clip_t"].notna().all()


def test_an_empty_or_missing_image_folder_is_an_error(tmp_path, scorer):
    with pytest.raises(ConfigError, match="does not exist"):
        load_subject_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        load_subject_images(tmp_path / "empty")


def test_subject_fidelity_is_the_mean_cosine():
    a = np.array([[1.0, 0.0]])
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert subject_fidelity(a, reference).tolist() == [0.5]


def test_summary_pairs_each_model_with_its_base_twins():
    scores = pd.DataFrame(
        {
            "model_id": ["base", "ti", "db"],
            "method": ["base", "textual_inversion", "dreambooth"],
            "subject_id": "face1",
            "prompt_id": "p",
            "seed": 0,
            "clip_t": [30.0, 25.0, 28.0],
            "clip_i": [0.5, 0.9, 0.7],
        }
    )
    shift = pd.DataFrame({"model_id": ["ti", "ti", "db"], "non_subject_shift": [0.1, 0.3, 0.0]})
    summary = in_context_summary(scores, shift).set_index("model_id")
    assert summary.at["ti", "clip_t_change"] == -5.0
    assert summary.at["db", "clip_i_change"] == pytest.approx(0.2)
    assert summary.at["ti", "non_subject_shift"] == pytest.approx(0.2)
    assert "base" not in summary.index


def test_analyse_in_context_writes_nothing_without_an_in_context_store(tmp_path, scorer):
    assert analyse_in_context(tmp_path / "study.h5", tmp_path, scorer) == {}


def test_the_main_analysis_refuses_an_in_context_store_with_a_hint(tmp_path, images, scorer):
    from cemaps.analysis.pipeline import run_analysis

    rng = np.random.default_rng(6)
    context = context_maps(rng)
    maps = {m: with_subject(context, TEXTS[m][3], rng) for m in TEXTS}
    path = write_store(tmp_path / "s.in_context.h5", images, maps)
    with pytest.raises(StoreError, match="in-context store; analyze the main store") as error:
        run_analysis(path, tmp_path / "results", scorer=scorer, progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "results").exists()
