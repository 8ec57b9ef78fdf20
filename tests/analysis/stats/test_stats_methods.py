"""compare_methods: model means, Hotelling's T^2 across subjects, paired t-tests, bootstrap means, structural zeros, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.stats.common import StatsInputError
from cemaps.analysis.stats.methods import compare_methods, subject_method_means

METHODS = ("dreambooth", "lora", "textual_inversion")


def disruption_table(seed: int = 0, n_subjects: int = 3, n_prompts: int = 10, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        dict(
            model_id=f"{m}-{s}",
            method=m,
            subject_id=f"s{s}",
            prompt_id=f"p{p}",
            alignment_drop=rng.normal() + shift * i,
        )
        for i, m in enumerate(METHODS)
        for s in range(n_subjects)
        for p in range(n_prompts)
    ]
    return pd.DataFrame(rows)


def model_means(table: pd.DataFrame) -> pd.DataFrame:
    per_model = table.groupby(["subject_id", "method"])["alignment_drop"].mean()
    return per_model.unstack("method")[sorted(METHODS)]


def test_subject_test_is_hotellings_t2_on_method_contrasts_of_model_means():
    table = disruption_table(n_subjects=5, shift=0.5)
    out = compare_methods(table, "alignment_drop", n_boot=0)
    x = model_means(table).to_numpy()
    s, k = x.shape
    contrasts = x[:, 1:] - x[:, :1]
    mean = contrasts.mean(0)
    t2 = s * mean @ np.linalg.solve(np.cov(contrasts, rowvar=False), mean)  # independent of statsmodels
    f = t2 * (s - k + 1) / ((s - 1) * (k - 1))
    test = out["subject_test"]
    assert test["statistic"] == pytest.approx(f) and test["n"] == 5 and test["extra"]["df"] == [2, 3]
    assert test["p"] == pytest.approx(stats.f.sf(f, k - 1, s - k + 1))
    assert test["effect_size"] == pytest.approx(t2 / s)
    assert test["extra"]["null_rate_validated"] is True
    np.testing.assert_allclose([[r[m] for m in sorted(METHODS)] for r in out["model_means"]], x)
    json.dumps(out, allow_nan=False)


def test_two_methods_give_the_paired_t_test():
    table = disruption_table(n_subjects=4, shift=0.3)
    table = table[table["method"] != "textual_inversion"]
    test = compare_methods(table, "alignment_drop", n_boot=0)["subject_test"]
    per_model = table.groupby(["subject_id", "method"])["alignment_drop"].mean().unstack("method")
    expected = stats.ttest_rel(per_model["lora"], per_model["dreambooth"])
    assert test["p"] == pytest.approx(expected.pvalue)
    assert test["statistic"] == pytest.approx(expected.statistic**2)


def test_pairwise_paired_t_across_subjects_is_holm_corrected():
    table = disruption_table(shift=1.0)
    pairs = compare_methods(table, "alignment_drop", n_boot=0)["pairwise"]
    assert [(r["method_a"], r["method_b"]) for r in pairs] == [
        ("dreambooth", "lora"),
        ("dreambooth", "textual_inversion"),
        ("lora", "textual_inversion"),
    ]
    means = model_means(table)
    expected = stats.ttest_rel(means["dreambooth"], means["textual_inversion"])
    assert pairs[1]["statistic"] == pytest.approx(expected.statistic)
    assert pairs[1]["p"] == pytest.approx(expected.pvalue)
    raw = np.array([r["p"] for r in pairs])
    order = np.argsort(raw)
    holm = np.maximum.accumulate(np.minimum(raw[order] * np.array([3, 2, 1]), 1.0))
    np.testing.assert_allclose(np.array([r["p_holm"] for r in pairs])[order], holm)
    # dreambooth has shift 0, textual_inversion 2: a - b is negative
    assert pairs[1]["effect_size"] < -0.5 and pairs[1]["mean_difference"] < 0 and pairs[1]["n"] == 3


def test_model_effects_do_not_count_prompts_as_replicates():
    # one model per method far from the others, no method effect: 30 prompts must not make it significant
    table = disruption_table(n_prompts=30)
    table.loc[table["model_id"] == "lora-0", "alignment_drop"] += 3.0
    test = compare_methods(table, "alignment_drop", n_boot=0)["subject_test"]
    assert test["p"] > 0.05 and test["n"] == 3


def test_bootstrap_ci_contains_the_mean_and_is_seeded():
    table = disruption_table()
    first = compare_methods(table, "alignment_drop", n_boot=500, seed=3)["means"]
    again = compare_methods(table, "alignment_drop", n_boot=500, seed=3)["means"]
    assert first == again
    for row in first:
        assert row["ci_low"] < row["mean"] < row["ci_high"] and row["n_prompts"] == 10 and row["n_models"] == 3
        rows = table[table["method"] == row["method"]]
        assert row["mean"] == pytest.approx(rows.groupby("prompt_id")["alignment_drop"].mean().mean())


def test_subjects_lacking_a_method_and_prompts_lacking_a_model_are_dropped_and_counted():
    table = disruption_table()
    table = table[~((table["method"] == "lora") & (table["prompt_id"] == "p0"))]
    table = table[~(table["model_id"] == "lora-2")]
    out = compare_methods(table, "alignment_drop", n_boot=0)
    assert out["subjects"] == {
        "subjects_total": 3,
        "subjects_dropped_incomplete": 1,
        "prompts_used": 9,
        "subjects_used": 2,
    }
    assert out["subject_test"]["n"] == 2 and out["subject_test"]["p"] is None  # 2 subjects < 3 methods


def test_two_models_per_cell_are_averaged():
    table = disruption_table(n_subjects=2, n_prompts=4)
    extra = table[table["method"] == "lora"].assign(model_id=lambda t: t["model_id"] + "-b", alignment_drop=10.0)
    means, _ = subject_method_means(pd.concat([table, extra]), "alignment_drop")
    original = table[table["method"] == "lora"].groupby("subject_id")["alignment_drop"].mean()
    np.testing.assert_allclose(means["lora"], (original + 10.0) / 2)


def test_fewer_subjects_than_methods_give_a_non_computable_test_that_says_why():
    out = compare_methods(disruption_table(n_subjects=2), "alignment_drop", n_boot=0)
    assert out["subject_test"]["p"] is None and "has 3 methods and 2 subjects" in out["subject_test"]["extra"]["reason"]


def test_structural_zeros_are_counted_per_method_and_said_in_words():
    table = disruption_table()
    ti = table["method"] == "textual_inversion"
    table = table.assign(structural_zero=ti, alignment_drop=np.where(ti, 0.0, table["alignment_drop"]))
    out = compare_methods(table, "alignment_drop", n_boot=0)
    means = {r["method"]: r for r in out["means"]}
    assert means["textual_inversion"]["pairs_structural_zero"] == 30 == means["textual_inversion"]["n_pairs"]
    assert means["lora"]["pairs_structural_zero"] == 0
    assert out["structural_zeros"].startswith("textual_inversion: 30 of 30 (model, prompt) pairs are structural zeros")
    assert "by construction" in out["structural_zeros"]
    # the all-zero method is described but not tested: "methods differ" would hold by construction
    assert out["excluded_structural_zero_models"] == [f"textual_inversion-{s}" for s in range(3)]
    assert out["subject_test"]["extra"]["methods"] == ["dreambooth", "lora"]
    assert {(r["method_a"], r["method_b"]) for r in out["pairwise"]} == {("dreambooth", "lora")}
    plain = compare_methods(disruption_table(), "alignment_drop", n_boot=0)
    assert "every zero is measured" in plain["structural_zeros"] and plain["excluded_structural_zero_models"] == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop(columns="subject_id"), r"missing column\(s\) \['subject_id'\]"),
        (lambda t: t.assign(alignment_drop="x"), "expected numeric"),
        (lambda t: t.iloc[:0], "table is empty"),
        (lambda t: t[t["method"] == "lora"], "expected >= 2 methods"),
    ],
)
def test_bad_input_raises_one_line_error(mutate, message):
    with pytest.raises(StatsInputError, match=message) as info:
        compare_methods(mutate(disruption_table()), "alignment_drop", n_boot=0)
    assert "\n" not in str(info.value)


def test_negative_n_boot_is_rejected():
    with pytest.raises(StatsInputError, match="n_boot=-1"):
        compare_methods(disruption_table(), "alignment_drop", n_boot=-1)
