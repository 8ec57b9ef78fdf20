"""compare_abstractness: units of analysis, Kruskal, Mann-Whitney, mixed model, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.stats_abstractness import abstractness_units, compare_abstractness
from cemaps.analysis.stats_common import StatsInputError

CLASSES = ("concrete", "abstract", "compositional")


def disruption_table(seed: int = 0, n_prompts: int = 18, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [dict(model_id=f"{m}-{s}", method=m, subject_id=f"s{s}", prompt_id=f"p{p}",
                 abstractness=CLASSES[p % 3], alignment_drop=rng.normal() + shift * (p % 3 != 0) + 0.3 * s)
            for m in ("lora", "dreambooth") for s in range(3) for p in range(n_prompts)]
    return pd.DataFrame(rows)


def test_prompt_unit_averages_models_and_kruskal_matches_scipy():
    table = disruption_table(shift=1.0)
    units = abstractness_units(table, "alignment_drop", "prompt")
    assert len(units) == 18
    prompt_means = table.groupby("prompt_id")["alignment_drop"].mean()
    np.testing.assert_allclose(units.set_index("prompt_id")["alignment_drop"], prompt_means.loc[units["prompt_id"]])
    out = compare_abstractness(table, "alignment_drop", mixed_model=False)
    groups = [units.loc[units["abstractness"] == c, "alignment_drop"] for c in CLASSES]
    h, p = stats.kruskal(*groups)
    assert out["kruskal"]["statistic"] == pytest.approx(h) and out["kruskal"]["p"] == pytest.approx(p)
    assert out["kruskal"]["effect_size"] == pytest.approx(h / 17)
    assert out["n_units"] == 18 and out["unit"] == "prompt"
    json.dumps(out, allow_nan=False)


def test_pair_unit_uses_every_row():
    out = compare_abstractness(disruption_table(), "alignment_drop", unit="pair", mixed_model=False)
    assert out["n_units"] == 108 and out["kruskal"]["n"] == 108


def test_pairwise_mann_whitney_orients_against_concrete_and_is_holm_corrected():
    out = compare_abstractness(disruption_table(shift=2.0), "alignment_drop", mixed_model=False)
    pairs = {(r["class_a"], r["class_b"]): r for r in out["pairwise"]}
    assert set(pairs) == {("abstract", "concrete"), ("compositional", "concrete"), ("compositional", "abstract")}
    assert pairs[("abstract", "concrete")]["effect_size"] > 0.8
    for row in out["pairwise"]:
        assert row["p"] <= row["p_holm"] <= 1


def test_mixed_model_reports_coefficients_and_lrt():
    out = compare_abstractness(disruption_table(shift=1.0, n_prompts=30), "alignment_drop")
    mixed = out["mixed_model"]
    assert mixed["reference_class"] == "concrete"
    assert {c["term"] for c in mixed["coefficients"]} == {"abstract", "compositional"}
    assert all(0.5 < c["estimate"] < 1.5 for c in mixed["coefficients"])
    assert mixed["lrt"]["extra"]["df"] == 2 and mixed["lrt"]["p"] < 0.001
    assert mixed["lrt"]["extra"]["converged_full"] is True
    json.dumps(out, allow_nan=False)


def test_prompt_with_two_abstractness_classes_is_rejected():
    table = disruption_table()
    table.loc[0, "abstractness"] = "abstract"  # p0 is concrete in the other rows
    with pytest.raises(StatsInputError, match="prompt_id='p0' has 2 different values"):
        compare_abstractness(table, "alignment_drop", mixed_model=False)


@pytest.mark.parametrize("kwargs, mutate, message", [
    ({"unit": "model"}, lambda t: t, "unit='model': expected one of"),
    ({}, lambda t: t.drop(columns="abstractness"), r"missing column\(s\) \['abstractness'\]"),
    ({}, lambda t: t.assign(alignment_drop=np.nan), "NaN or infinite"),
    ({}, lambda t: t.iloc[:0], "table is empty"),
    ({"mixed_model": True}, lambda t: t.assign(subject_id="only"), "needs >= 2 subjects"),
    ({"mixed_model": True}, lambda t: t.assign(abstractness="concrete"), "needs >= 2 classes"),
])
def test_bad_input_raises_one_line_error(kwargs, mutate, message):
    kwargs = {"mixed_model": False, **kwargs}
    with pytest.raises(StatsInputError, match=message) as info:
        compare_abstractness(mutate(disruption_table()), "alignment_drop", **kwargs)
    assert "\n" not in str(info.value)


def test_single_class_gives_non_computable_kruskal():
    out = compare_abstractness(disruption_table().assign(abstractness="concrete"), "alignment_drop",
                               mixed_model=False)
    assert out["kruskal"]["p"] is None and out["pairwise"] == []
