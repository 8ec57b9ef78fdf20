"""compare_abstractness: units of analysis, Kruskal, Mann-Whitney, prompt-permutation ANOVA, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.stats.abstractness import abstractness_units, compare_abstractness
from cemaps.analysis.stats.common import StatsInputError

CLASSES = ("concrete", "abstract", "compositional")


def disruption_table(seed: int = 0, n_prompts: int = 18, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        dict(
            model_id=f"{m}-{s}",
            method=m,
            subject_id=f"s{s}",
            prompt_id=f"p{p}",
            abstractness=CLASSES[p % 3],
            alignment_drop=rng.normal() + shift * (p % 3 != 0) + 0.3 * s,
        )
        for m in ("lora", "dreambooth")
        for s in range(3)
        for p in range(n_prompts)
    ]
    return pd.DataFrame(rows)


def test_prompt_unit_averages_models_and_kruskal_matches_scipy():
    table = disruption_table(shift=1.0)
    units = abstractness_units(table, "alignment_drop", "prompt")
    assert len(units) == 18
    prompt_means = table.groupby("prompt_id")["alignment_drop"].mean()
    np.testing.assert_allclose(units.set_index("prompt_id")["alignment_drop"], prompt_means.loc[units["prompt_id"]])
    out = compare_abstractness(table, "alignment_drop", n_perm=0)
    groups = [units.loc[units["abstractness"] == c, "alignment_drop"] for c in CLASSES]
    h, p = stats.kruskal(*groups)
    assert out["kruskal"]["statistic"] == pytest.approx(h) and out["kruskal"]["p"] == pytest.approx(p)
    assert out["kruskal"]["effect_size"] == pytest.approx(h / 17)
    assert out["n_units"] == 18 and out["unit"] == "prompt"
    json.dumps(out, allow_nan=False)


def test_pair_unit_uses_every_row():
    out = compare_abstractness(disruption_table(), "alignment_drop", unit="pair", n_perm=0)
    assert out["n_units"] == 108 and out["kruskal"]["n"] == 108


def test_pairwise_mann_whitney_orients_against_concrete_and_is_holm_corrected():
    out = compare_abstractness(disruption_table(shift=2.0), "alignment_drop", n_perm=0)
    pairs = {(r["class_a"], r["class_b"]): r for r in out["pairwise"]}
    assert set(pairs) == {("abstract", "concrete"), ("compositional", "concrete"), ("compositional", "abstract")}
    assert pairs[("abstract", "concrete")]["effect_size"] > 0.8
    for row in out["pairwise"]:
        assert row["p"] <= row["p_holm"] <= 1


def test_prompt_anova_is_a_permutation_f_on_model_centred_prompt_effects():
    table = disruption_table(shift=1.0, n_prompts=30)
    table.loc[table["model_id"] == "lora-0", "alignment_drop"] += 5.0  # a model level: must not matter
    out = compare_abstractness(table, "alignment_drop", n_perm=999, seed=1)
    anova = out["prompt_anova"]["test"]
    centred = table["alignment_drop"] - table.groupby("model_id")["alignment_drop"].transform("mean")
    effects = centred.groupby(table["prompt_id"]).mean()
    classes = table.drop_duplicates("prompt_id").set_index("prompt_id")["abstractness"].loc[effects.index]
    expected = stats.f_oneway(*(effects[classes == c] for c in CLASSES))
    assert anova["statistic"] == pytest.approx(expected.statistic) and anova["n"] == 30
    assert anova["p"] == pytest.approx(1 / 1000) and anova["extra"]["null_rate_validated"] is True
    assert out["prompt_anova"]["reference_class"] == "concrete"
    estimates = {r["term"]: r["estimate"] for r in out["prompt_anova"]["class_effects"]}
    assert set(estimates) == {"abstract", "compositional"} and all(0.5 < e < 1.5 for e in estimates.values())
    assert estimates["abstract"] == pytest.approx(
        effects[classes == "abstract"].mean() - effects[classes == "concrete"].mean()
    )
    again = compare_abstractness(table, "alignment_drop", n_perm=999, seed=1)["prompt_anova"]["test"]
    assert again["p"] == anova["p"]
    json.dumps(out, allow_nan=False)


def test_prompt_anova_p_is_uniformish_without_effect():
    out = compare_abstractness(disruption_table(n_prompts=30), "alignment_drop", n_perm=499)
    assert 0.002 < out["prompt_anova"]["test"]["p"] <= 1


def test_prompt_with_two_abstractness_classes_is_rejected():
    table = disruption_table()
    table.loc[0, "abstractness"] = "abstract"  # p0 is concrete in the other rows
    with pytest.raises(StatsInputError, match="prompt_id='p0' has 2 different values"):
        compare_abstractness(table, "alignment_drop", n_perm=0)


@pytest.mark.parametrize(
    "kwargs, mutate, message",
    [
        ({"unit": "model"}, lambda t: t, "unit='model': expected one of"),
        ({}, lambda t: t.drop(columns="abstractness"), r"missing column\(s\) \['abstractness'\]"),
        ({}, lambda t: t.assign(alignment_drop=np.nan), "NaN or infinite"),
        ({}, lambda t: t.iloc[:0], "table is empty"),
        ({"n_perm": -1}, lambda t: t, "n_perm=-1"),
    ],
)
def test_bad_input_raises_one_line_error(kwargs, mutate, message):
    kwargs = {"n_perm": 0, **kwargs}
    with pytest.raises(StatsInputError, match=message) as info:
        compare_abstractness(mutate(disruption_table()), "alignment_drop", **kwargs)
    assert "\n" not in str(info.value)


def test_single_class_gives_non_computable_kruskal():
    out = compare_abstractness(disruption_table().assign(abstractness="concrete"), "alignment_drop", n_perm=0)
    assert out["kruskal"]["p"] is None and out["pairwise"] == []
    single = compare_abstractness(disruption_table().assign(abstractness="concrete"), "alignment_drop", n_perm=99)
    assert (
        single["prompt_anova"]["test"]["p"] is None
        and "needs >= 2 classes" in single["prompt_anova"]["test"]["extra"]["reason"]
    )
