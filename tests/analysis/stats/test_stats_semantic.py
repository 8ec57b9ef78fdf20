"""semantic_proximity: per-model and combined permutation tests, similarity Spearman, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cemaps.analysis.stats.common import StatsInputError
from cemaps.analysis.stats.semantic import semantic_proximity

DOMAINS = ("faces", "objects", "styles")


def disruption_table(
    seed: int = 0, n_prompts: int = 18, in_domain_shift: float = 0.0, subject_domains=("faces", "objects")
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s, subject_domain in enumerate(subject_domains):
        for p in range(n_prompts):
            domain = DOMAINS[p % 3]
            rows.append(
                dict(
                    model_id=f"m{s}",
                    subject_id=f"s{s}",
                    subject_domain=subject_domain,
                    prompt_id=f"p{p}",
                    domain=domain,
                    alignment_drop=rng.normal() + in_domain_shift * (domain == subject_domain),
                )
            )
    return pd.DataFrame(rows)


def test_per_model_difference_and_p_agree_with_scipy_permutation_test():
    table = disruption_table(in_domain_shift=0.8, n_prompts=30)
    out = semantic_proximity(table, "alignment_drop", n_perm=4999, seed=1)
    for row in out["per_model"]:
        model = table[table["model_id"] == row["model_id"]]
        inside = model.loc[model["domain"] == model["subject_domain"], "alignment_drop"].to_numpy()
        outside = model.loc[model["domain"] != model["subject_domain"], "alignment_drop"].to_numpy()
        assert row["difference"] == pytest.approx(inside.mean() - outside.mean())
        reference = stats.permutation_test(
            (inside, outside),
            lambda x, y, axis: x.mean(axis) - y.mean(axis),
            vectorized=True,
            n_resamples=4999,
            alternative="greater",
            rng=np.random.default_rng(2),
        )
        assert row["p"] == pytest.approx(reference.pvalue, abs=0.02)
    assert out["combined"]["statistic"] == pytest.approx(sum(r["difference"] for r in out["per_model"]))
    json.dumps(out, allow_nan=False)


def test_combined_test_detects_planted_effect_and_is_seeded():
    table = disruption_table(in_domain_shift=1.0, n_prompts=30)
    first = semantic_proximity(table, "alignment_drop", n_perm=999, seed=5)
    assert first["combined"]["p"] < 0.01 and first["combined"]["effect_size"] > 0.5
    assert semantic_proximity(table, "alignment_drop", n_perm=999, seed=5) == first


def test_model_whose_domain_has_no_prompts_is_skipped_and_reported():
    out = semantic_proximity(disruption_table(subject_domains=("faces", "scenes")), "alignment_drop", n_perm=99)
    assert out["skipped_models"] == [{"model_id": "m1", "subject_domain": "scenes", "reason": "no in-domain prompts"}]
    assert [r["model_id"] for r in out["per_model"]] == ["m0"] and out["combined"]["n"] == 1


def test_no_usable_model_gives_non_computable_combined_result():
    out = semantic_proximity(disruption_table(subject_domains=("scenes",)), "alignment_drop", n_perm=99)
    assert out["combined"]["p"] is None and out["per_model"] == []


def test_similarity_spearman_matches_scipy_and_detects_a_link():
    table = disruption_table(n_prompts=30)
    similarity = table[["model_id", "prompt_id"]].assign(
        similarity=table["alignment_drop"] + np.random.default_rng(3).normal(0, 0.5, len(table))
    )
    out = semantic_proximity(table, "alignment_drop", n_perm=999, similarity=similarity)
    expected = stats.spearmanr(similarity["similarity"], table["alignment_drop"]).statistic
    assert out["similarity"]["statistic"] == pytest.approx(expected)
    assert out["similarity"]["p"] == pytest.approx(1 / 1000)
    two_sided = semantic_proximity(
        table,
        "alignment_drop",
        n_perm=999,
        similarity=similarity.assign(similarity=-similarity["similarity"]),
        alternative="two-sided",
    )
    assert two_sided["similarity"]["statistic"] < 0 and two_sided["similarity"]["p"] < 0.01


def test_similarity_uses_only_prompts_seen_by_every_model():
    table = disruption_table(n_prompts=12)
    table = table[~((table["model_id"] == "m1") & (table["prompt_id"] == "p0"))]
    similarity = table[["model_id", "prompt_id"]].assign(similarity=np.arange(len(table), dtype=float))
    out = semantic_proximity(table, "alignment_drop", n_perm=99, similarity=similarity)
    assert out["similarity"]["n"] == 22 and out["similarity"]["extra"]["n_pairs_dropped_incomplete_prompts"] == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop(columns="subject_domain"), r"missing column\(s\) \['subject_domain'\]"),
        (lambda t: pd.concat([t, t.iloc[:1]]), r"\(model_id, prompt_id\) must be unique"),
        (lambda t: t.assign(subject_domain=["faces", "styles"] * (len(t) // 2)), "model_id='m0' has 2"),
        (lambda t: t.assign(domain=np.where(t["model_id"] == "m0", t["domain"], "faces")), "prompt_id='p1' has 2"),
        (lambda t: t.iloc[:0], "table is empty"),
    ],
)
def test_bad_disruption_raises_one_line_error(mutate, message):
    with pytest.raises(StatsInputError, match=message) as info:
        semantic_proximity(mutate(disruption_table()), "alignment_drop", n_perm=99)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_perm": 0}, "n_perm=0"),
        ({"alternative": "less"}, "alternative='less'"),
        ({"similarity": pd.DataFrame({"model_id": ["m0"], "prompt_id": ["p0"]})}, r"similarity: missing column"),
        (
            {"similarity": pd.DataFrame({"model_id": ["m0"] * 2, "prompt_id": ["p0"] * 2, "similarity": [1.0, 2.0]})},
            "similarity: .* must be unique",
        ),
        (
            {"similarity": pd.DataFrame({"model_id": ["zz"], "prompt_id": ["p0"], "similarity": [1.0]})},
            "only 0 .* pairs match",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(StatsInputError, match=message):
        semantic_proximity(disruption_table(), "alignment_drop", **{"n_perm": 99, **kwargs})
