"""Toy-world checks read from stores: subject detection, per-layer localisation, the report section.

Stores are written here with planted truth: images from the renderer, attention maps that
are (or are not) the object's mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cemaps.report.results import Results
from cemaps.store import StoreWriter, open_store
from cemaps.toyworld.abstract_words import random_training_pair
from cemaps.toyworld.ground_truth import (
    analyse_toy_world,
    is_toy_world_store,
    localisation_table,
    subject_check_table,
    summarise_localisation,
)
from cemaps.toyworld.report_section import toy_world_banner, toy_world_section
from cemaps.toyworld.subject_check import DETECTORS, shows_subject
from cemaps.toyworld.suite import TOY_SUBJECTS
from cemaps.toyworld.world import Scene, ToyObject, render

AXES = ("token", "step", "half", "head", "y", "x")
TOKENS = ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
GOOD, FLAT = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2",
)


def test_each_detector_recognises_its_subject_and_nothing_else():
    for subject in TOY_SUBJECTS:
        images = [np.asarray(image) for image in subject.images(20, seed=7)]
        for detector in DETECTORS:
            rate = np.mean([shows_subject(detector, image) for image in images])
            assert rate == (1.0 if detector == subject.subject_id else 0.0), (subject.subject_id, detector)


def test_each_subject_survives_the_shipped_vae():
    """The detectors read generated images, which pass through the VAE: its reconstructions must still count."""
    import cemaps

    vae = cemaps.load_pipeline("cemaps/toyworld", device="cpu").vae
    for subject in TOY_SUBJECTS:
        images = np.stack([np.asarray(image) for image in subject.images(16, seed=5)])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        assert np.mean([shows_subject(subject.subject_id, image) for image in decoded]) >= 0.9, subject.subject_id


def test_detectors_stay_silent_on_the_worlds_ordinary_scenes():
    rng = np.random.default_rng(1)
    images = [render(random_training_pair(rng)[0])[0] for _ in range(150)]
    for detector in DETECTORS:
        assert np.mean([shows_subject(detector, image) for image in images]) <= 0.02, detector


def test_a_filled_brown_shape_on_white_is_not_the_checkered_style():
    image, _ = render(Scene((ToyObject("square", "brown", "large", (16.0, 16.0)),), background="white"))
    assert not shows_subject("toystyle", image)


def test_a_float_image_is_refused_instead_of_judged_blank():
    with pytest.raises(ValueError, match=r"dtype float64 and shape \[32, 32, 3\]; expected uint8"):
        shows_subject("toyface", np.zeros((32, 32, 3)))


def test_unknown_subject_is_refused_with_the_known_ones_named():
    with pytest.raises(KeyError, match="toyface, toyobject, toystyle"):
        shows_subject("face1", np.zeros((32, 32, 3), np.uint8))


def _maps(mask: np.ndarray, planted: bool) -> np.ndarray:
    """[token, step, half, head, 16, 16]: the 'red' and 'circle' maps are the object's mask (or flat)."""
    small = F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], size=(16, 16), mode="area")[0, 0]
    maps = np.full((len(TOKENS), 1, 1, 1, 16, 16), 0.2, np.float32)
    if planted:
        maps[2, 0, 0, 0] = maps[3, 0, 0, 0] = small.numpy()
    return maps


def write_localisation_store(path: Path) -> Path:
    with StoreWriter(path, settings={}, base={"model_id": "cemaps/toyworld"}) as writer:
        writer.add_models([{"model_id": "base", "method": "base", "subject_id": None}])
        writer.add_prompts(
            [{"prompt_id": "t1", "text": "a red circle", "tokens": TOKENS, "token_ids": list(range(len(TOKENS)))}]
        )
        for seed, (x, y) in enumerate([(10.0, 12.0), (20.0, 18.0), (16.0, 16.0)]):
            scene = Scene((ToyObject("circle", "red", "medium", (x, y)),))
            if seed == 2:  # no red object at all: counted, not scored
                scene = Scene((ToyObject("circle", "blue", "medium", (x, y)),))
            image, masks = render(scene)
            arrays = {
                f"cross_attention/{GOOD}": _maps(masks[0], True),
                f"cross_attention/{FLAT}": _maps(masks[0], False),
            }
            writer.write_record("base", "t1", seed, arrays, {name: AXES for name in arrays}, image=image)
    return path


def test_planted_localisation_is_found_in_the_right_layer(tmp_path):
    with open_store(write_localisation_store(tmp_path / "study.h5")) as store:
        assert is_toy_world_store(store)
        table = localisation_table(store)
    summary = summarise_localisation(table).set_index(["layer", "word"])
    assert summary.loc[(GOOD, "colour"), "miou"] > 0.8
    assert summary.loc[(GOOD, "shape"), "miou"] > 0.8
    assert summary.loc[(FLAT, "colour"), "miou"] < 0.35  # a flat map thresholds to the whole image
    assert summary.loc[(GOOD, "colour"), "images"] == 2
    assert summary["images_without_object"].unique().tolist() == [1]


def write_in_context_store(path: Path) -> Path:
    face, style = TOY_SUBJECTS[0], TOY_SUBJECTS[2]
    with StoreWriter(path, settings={}, base={"model_id": "cemaps/toyworld"}) as writer:
        writer.add_models(
            [
                {"model_id": "base", "method": "base", "subject_id": None},
                {"model_id": "lora-toyface", "method": "lora", "subject_id": "toyface"},
                {"model_id": "ti-toystyle", "method": "textual_inversion", "subject_id": "toystyle"},
            ]
        )
        writer.add_prompts(
            [
                {"prompt_id": f"p{i}@{s}", "text": f"a {w}", "tokens": ["a</w>"], "token_ids": [0], "subject_id": s}
                for i in range(4)
                for s, w in (("toyface", "face"), ("toystyle", "drawing"))
            ]
        )
        plain, _ = render(Scene((ToyObject("circle", "green", "medium", (16.0, 16.0)),)))
        faces = [np.asarray(image) for image in face.images(4, seed=2)]
        styles = [np.asarray(image) for image in style.images(4, seed=2)]
        arrays, axes = {"x": np.zeros(1, np.float32)}, {"x": ("one",)}
        for i in range(4):
            writer.write_record("base", f"p{i}@toyface", 0, arrays, axes, image=faces[i] if i == 0 else plain)
            writer.write_record("base", f"p{i}@toystyle", 0, arrays, axes, image=plain)
            writer.write_record("lora-toyface", f"p{i}@toyface", 0, arrays, axes, image=faces[i] if i < 3 else plain)
            writer.write_record("ti-toystyle", f"p{i}@toystyle", 0, arrays, axes, image=styles[i] if i < 2 else plain)
    return path


def test_subject_check_counts_the_images_showing_each_models_subject(tmp_path):
    with open_store(write_in_context_store(tmp_path / "study.in_context.h5")) as store:
        table = subject_check_table(store).set_index("model_id")
    assert table.loc["lora-toyface", ["images", "shows_subject"]].tolist() == [4, 3]
    assert table.loc["lora-toyface", "rate"] == 0.75 and bool(table.loc["lora-toyface", "learned"])
    assert table.loc["lora-toyface", "base_rate"] == 0.25
    assert table.loc["ti-toystyle", "rate"] == 0.5 and not bool(table.loc["ti-toystyle", "learned"])
    assert table.loc["ti-toystyle", "base_rate"] == 0.0


def test_analysis_writes_both_tables_and_the_report_shows_them(tmp_path):
    write_localisation_store(tmp_path / "study.h5")
    write_in_context_store(tmp_path / "study.in_context.h5")
    out = tmp_path / "results"
    out.mkdir()
    files = analyse_toy_world(tmp_path / "study.h5", out)
    assert set(files) == {"toyworld_localisation", "toyworld_subjects"}
    html = toy_world_section(Results(out, {}, {}, {}, {}, {}))
    assert 'id="fig-toyworld-localisation"' in html and "data:image/png;base64," in html
    assert "1 of 2 models reach 70%" in html
    banner = toy_world_banner(Results(out, {"provenance": {"base": {"model_id": "cemaps/toyworld"}}}, {}, {}, {}, {}))
    assert "Base model: cemaps/toyworld" in banner and "1 of 2 personalizations render their subject" in banner
    assert "localises best" not in banner  # a best-of-layers pick is not a banner claim (issue 21)
    assert toy_world_banner(Results(out, {"provenance": {"base": {"model_id": "my/sd15"}}}, {}, {}, {}, {})) == ""
    assert pd.read_csv(out / files["toyworld_subjects"])["model_id"].tolist() == ["lora-toyface", "ti-toystyle"]


def test_other_studies_get_no_toy_world_tables(tmp_path):
    path = tmp_path / "study.h5"
    with StoreWriter(path, settings={}, base={"model_id": "cemaps/tiny-sd"}) as writer:
        writer.add_models([{"model_id": "base", "method": "base", "subject_id": None}])
        writer.add_prompts([{"prompt_id": "p", "text": "a red circle", "tokens": ["a</w>"], "token_ids": [0]}])
        writer.write_record(
            "base", "p", 0, {"x": np.zeros(1, np.float32)}, {"x": ("one",)}, np.zeros((64, 64, 3), np.uint8)
        )
    out = tmp_path / "results"
    out.mkdir()
    assert analyse_toy_world(path, out) == {}
    assert toy_world_section(Results(out, {}, {}, {}, {}, {})) == ""
