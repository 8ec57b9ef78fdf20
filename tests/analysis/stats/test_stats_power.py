"""Minimum detectable effects: against closed forms, monotone in the design, and printed for a study config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.stats.power import (
    StudyLayout,
    VarianceComponents,
    estimate_components,
    layout_from_study,
    minimum_detectable_effects,
    power_text,
)
from cemaps.study.config import PersonalizedEntry, StudyConfig

DOMAINS = ("faces", "objects", "styles")


def layout(n_subjects: int = 6, n_prompts: int = 30, n_seeds: int = 1) -> StudyLayout:
    return StudyLayout(
        model_method=tuple(m for m in ("lora", "dreambooth") for _ in range(n_subjects)),
        model_subject=tuple(f"s{s}" for _ in range(2) for s in range(n_subjects)),
        model_subject_domain=tuple(DOMAINS[s % 3] for _ in range(2) for s in range(n_subjects)),
        prompt_class=tuple(("concrete", "abstract")[p % 2] for p in range(n_prompts)),
        prompt_domain=tuple(DOMAINS[p % 3] for p in range(n_prompts)),
        n_seeds=n_seeds,
    )


def test_abstractness_mde_matches_the_noncentral_f_power():
    design, components = layout(), VarianceComponents()
    mde = minimum_detectable_effects(design, components, n_sims=4000).set_index("question").loc["abstractness", "mde"]
    # independent: two classes of 15 prompts, prompt effects SD sqrt(1 + 0.3^2 / 12); power from the noncentral F
    sd = np.sqrt(1.0 + 0.3**2 / 12)
    critical = stats.f.ppf(0.95, 1, 28)
    power = stats.ncf.sf(critical, 1, 28, (mde / sd) ** 2 * 15 * 15 / 30)
    assert power == pytest.approx(0.8, abs=0.03)


def test_methods_mde_of_two_methods_matches_the_noncentral_t_power():
    design, components = layout(n_subjects=8), VarianceComponents(pair_sd=0.0, seed_sd=0.0)
    mde = minimum_detectable_effects(design, components, n_sims=4000).set_index("question").loc["methods", "mde"]
    # paired differences of model means: SD sqrt(2) x model SD 0.5 (subject effects cancel), 8 subjects
    sd = np.sqrt(2) * 0.5
    critical = stats.t.ppf(0.975, 7)
    delta = mde / sd * np.sqrt(8)
    assert stats.nct.sf(critical, 7, delta) + stats.nct.cdf(-critical, 7, delta) == pytest.approx(0.8, abs=0.03)


def test_more_prompts_and_seeds_detect_smaller_effects():
    small = minimum_detectable_effects(layout(n_prompts=24), VarianceComponents(), n_sims=300).set_index("question")
    large = minimum_detectable_effects(layout(n_prompts=96, n_seeds=4), VarianceComponents(), n_sims=300)
    large = large.set_index("question")
    for question in ("abstractness", "semantic_proximity", "layer_linking"):
        assert large.loc[question, "mde"] < small.loc[question, "mde"], question


def test_three_subjects_cannot_detect_proximity_and_say_why():
    table = minimum_detectable_effects(layout(n_subjects=3), VarianceComponents(), n_sims=100).set_index("question")
    assert np.isnan(table.loc["semantic_proximity", "mde"])
    assert "smallest possible p (0.167)" in table.loc["semantic_proximity", "note"]


def test_components_are_recovered_from_a_simulated_grid():
    rng = np.random.default_rng(0)
    n_subjects, n_prompts = 40, 200
    method = pd.Series(np.repeat(["a", "b"], n_subjects), index=[f"m{i}" for i in range(2 * n_subjects)])
    subject = pd.Series(np.tile([f"s{s}" for s in range(n_subjects)], 2), index=method.index)
    values = (
        rng.normal(0, 1.0, (1, n_prompts))
        + rng.normal(0, 0.5, (2 * n_subjects, 1))
        + np.tile(rng.normal(0, 0.4, (n_subjects, 1)), (2, 1))
        + rng.normal(0, 0.3, (2 * n_subjects, n_prompts))
    )
    grid = pd.DataFrame(values, index=method.index, columns=[f"p{p}" for p in range(n_prompts)])
    found = estimate_components(grid, method, subject, seed_sd=0.0)
    assert found.prompt_sd == pytest.approx(1.0, abs=0.15) and found.pair_sd == pytest.approx(0.3, abs=0.02)
    assert found.model_sd == pytest.approx(0.5, abs=0.15) and found.subject_sd == pytest.approx(0.4, abs=0.15)


def test_power_text_for_a_study_config():
    entries = tuple(
        PersonalizedEntry(id=f"{m}-{s}", method=m, path="x", subject=s)
        for m in ("lora", "dreambooth")
        for s in ("face1", "object1", "style1", "face2", "object2", "style2")
    )
    config = StudyConfig(prompts="demo24", seeds=(0, 1), personalized=entries)
    design = layout_from_study(config)
    assert design.n_models == 12 and design.n_prompts == 24 and design.n_seeds == 2
    assert set(design.model_subject_domain) == {"person", "object", "style"}
    text = power_text(config, n_sims=100)
    assert text.startswith("power (80%, simulated from this design: 12 models, 24 prompts, 2 seed(s)")
    assert "methods: detects >=" in text and "abstractness: detects >=" in text
