"""The toy prompt suite and subjects: balanced, loadable by the main loaders, shipped as CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cemaps.data import ABSTRACTNESS_LEVELS, DOMAINS, load_prompts, load_subjects
from cemaps.toyworld.judge import judge_image
from cemaps.toyworld.suite import (
    PROMPTS_CSV,
    SUBJECTS_CSV,
    TOY_SUBJECTS,
    sample_prompt_scene,
    toy_prompts,
    toy_subjects,
)
from cemaps.toyworld.world import render


def test_suite_is_balanced_over_abstractness_and_domain():
    table = toy_prompts()
    counts = table.groupby(["abstractness", "domain"]).size()
    assert len(table) >= 60 and table["prompt_id"].is_unique and table["text"].is_unique
    assert set(counts.index) == {(a, d) for a in ABSTRACTNESS_LEVELS for d in DOMAINS}
    assert counts.min() == counts.max() == 4
    demo = table[table["in_demo24"]]
    assert len(demo) == 24 and demo.groupby("abstractness").size().tolist() == [8, 8, 8]


def test_shipped_csv_is_the_suite_and_loads_as_a_user_prompt_list():
    shipped = load_prompts(PROMPTS_CSV)
    expected = toy_prompts()
    pd.testing.assert_frame_equal(shipped[list(expected.columns)].astype(str), expected.astype(str))


def test_named_toy_lists_are_the_shipped_files():
    table = toy_prompts()
    assert load_prompts("toyworld72")["prompt_id"].tolist() == table["prompt_id"].tolist()
    assert load_prompts("toyworld-demo24")["prompt_id"].tolist() == table.loc[table["in_demo24"], "prompt_id"].tolist()
    expected = toy_subjects()
    shipped = load_subjects("toyworld")
    pd.testing.assert_frame_equal(shipped[list(expected.columns)].astype(str), expected.astype(str))
    assert load_subjects(SUBJECTS_CSV)["subject_id"].tolist() == expected["subject_id"].tolist()


def test_every_prompt_has_a_meaning_the_renderer_can_draw():
    rng = np.random.default_rng(0)
    for text in toy_prompts()["text"]:
        image, masks = render(sample_prompt_scene(text, rng))
        assert masks.any(axis=(1, 2)).all(), text


def test_subjects_load_and_render_what_they_describe(tmp_path):
    path = tmp_path / "subjects.csv"
    toy_subjects().to_csv(path, index=False)
    table = load_subjects(path)
    assert sorted(table["kind"]) == ["face", "object", "style"]
    face = judge_image(np.asarray(TOY_SUBJECTS[0].images(1)[0]))
    assert {(o.colour, o.kind) for o in face} >= {("orange", "face"), ("blue", "square")}
    images = TOY_SUBJECTS[2].images(3, seed=1)
    assert len(images) == 3 and images[0].size == (32, 32)


def test_toy_in_context_templates_are_in_the_worlds_language():
    from cemaps.data.in_context import load_in_context_prompts, subject_phrase
    from cemaps.toyworld.language import caption, random_spec

    rng = np.random.default_rng(0)
    words = {word for _ in range(3000) for word in caption(random_spec(rng)).split()}
    templates = load_in_context_prompts("toyworld30")
    assert templates.groupby("kind").size().to_dict() == {"face": 10, "object": 10, "style": 10}
    for template in templates["template"]:
        text = template.format(subject=subject_phrase("base", "face"))
        unknown = [word for word in text.split() if word not in words]
        assert not unknown, (template, unknown)
