"""compare_methods: blocks, Friedman, pairwise Wilcoxon, bootstrap means, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.stats_common import StatsInputError
from cemaps.analysis.stats_methods import compare_methods, method_blocks

METHODS = ("dreambooth", "lora", "textual_inversion")


def disruption_table(seed: int = 0, n_subjects: int = 3, n_prompts: int = 10, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [dict(model_id=f"{m}-{s}", method=m, subject_id=f"s{s}", prompt_id=f"p{p}",
                 alignment_drop=rng.normal() + shift * i)
            for i, m in enumerate(METHODS) for s in range(n_subjects) for p in range(n_prompts)]
    return pd.DataFrame(rows)


def test_friedman_matches_scipy_on_the_blocks_and_w_is_bounded():
    table = disruption_table(shift=0.5)
    out = compare_methods(table, "alignment_drop", n_boot=0)
    wide = table.pivot_table(index=["subject_id", "prompt_id"], columns="method", values="alignment_drop")
    expected = stats.friedmanchisquare(*(wide[m] for m in sorted(METHODS)))
    assert out["friedman"]["statistic"] == pytest.approx(expected.statistic)
    assert out["friedman"]["p"] == pytest.approx(expected.pvalue)
    assert out["friedman"]["n"] == 30
    assert out["friedman"]["effect_size"] == pytest.approx(expected.statistic / (30 * 2))
    assert 0 <= out["friedman"]["effect_size"] <= 1
    json.dumps(out, allow_nan=False)


def test_pairwise_wilcoxon_is_holm_corrected_with_signed_rank_biserial():
    table = disruption_table(shift=1.0)
    pairs = compare_methods(table, "alignment_drop", n_boot=0)["pairwise"]
    assert [(r["method_a"], r["method_b"]) for r in pairs] == [("dreambooth", "lora"),
                                                               ("dreambooth", "textual_inversion"),
                                                               ("lora", "textual_inversion")]
    raw = np.array([r["p"] for r in pairs])
    order = np.argsort(raw)
    holm = np.maximum.accumulate(np.minimum(raw[order] * np.array([3, 2, 1]), 1.0))
    np.testing.assert_allclose(np.array([r["p_holm"] for r in pairs])[order], holm)
    # dreambooth has shift 0, textual_inversion 2: a - b is negative
    assert pairs[1]["effect_size"] < -0.5 and pairs[1]["mean_difference"] < 0


def test_bootstrap_ci_contains_the_mean_and_is_seeded():
    table = disruption_table()
    first = compare_methods(table, "alignment_drop", n_boot=500, seed=3)["means"]
    again = compare_methods(table, "alignment_drop", n_boot=500, seed=3)["means"]
    assert first == again
    for row in first:
        assert row["ci_low"] < row["mean"] < row["ci_high"] and row["n_prompts"] == 10 and row["n_models"] == 3
        rows = table[table["method"] == row["method"]]
        assert row["mean"] == pytest.approx(rows.groupby("prompt_id")["alignment_drop"].mean().mean())


def test_incomplete_blocks_are_dropped_and_counted():
    table = disruption_table()
    table = table[~((table["method"] == "lora") & (table["prompt_id"] == "p0"))]
    out = compare_methods(table, "alignment_drop", n_boot=0)
    assert out["blocks"] == {"blocks_total": 30, "blocks_dropped_incomplete": 3, "cells_averaged_over_models": 0,
                             "blocks_used": 27}
    assert out["friedman"]["n"] == 27


def test_two_models_per_cell_are_averaged_and_counted():
    table = disruption_table(n_subjects=1, n_prompts=4)
    extra = table[table["method"] == "lora"].assign(model_id="lora-0-b", alignment_drop=10.0)
    blocks, counts = method_blocks(pd.concat([table, extra]), "alignment_drop")
    assert counts["cells_averaged_over_models"] == 4
    original = table[table["method"] == "lora"].set_index(["subject_id", "prompt_id"])["alignment_drop"]
    np.testing.assert_allclose(blocks["lora"], (original + 10.0) / 2)


def test_two_methods_give_wilcoxon_but_no_friedman():
    table = disruption_table()
    out = compare_methods(table[table["method"] != "lora"], "alignment_drop", n_boot=0)
    assert out["friedman"]["p"] is None and out["friedman"]["extra"]["computable"] is False
    assert len(out["pairwise"]) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.drop(columns="subject_id"), r"missing column\(s\) \['subject_id'\]"),
    (lambda t: t.assign(alignment_drop="x"), "expected numeric"),
    (lambda t: t.iloc[:0], "table is empty"),
    (lambda t: t[t["method"] == "lora"], "expected >= 2 methods"),
])
def test_bad_input_raises_one_line_error(mutate, message):
    with pytest.raises(StatsInputError, match=message) as info:
        compare_methods(mutate(disruption_table()), "alignment_drop", n_boot=0)
    assert "\n" not in str(info.value)


def test_negative_n_boot_is_rejected():
    with pytest.raises(StatsInputError, match="n_boot=-1"):
        compare_methods(disruption_table(), "alignment_drop", n_boot=-1)
