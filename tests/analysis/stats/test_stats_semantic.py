"""semantic_proximity: the prompt-centred interaction, its arrangements and interval, similarity Spearman, bad input."""

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


def many_subjects(seed: int = 0, n_subjects: int = 9, n_prompts: int = 24, effect: float = 0.0, domain_sd=0.0):
    """Subjects of three domains, two methods each; optional domain main effects shared by every model."""
    rng = np.random.default_rng(seed)
    domain_effect = dict(zip(DOMAINS, rng.normal(0, domain_sd, 3), strict=True))
    prompt_effect = rng.normal(size=n_prompts)
    rows = []
    for method in ("lora", "dreambooth"):
        for s in range(n_subjects):
            for p in range(n_prompts):
                domain, subject_domain = DOMAINS[p % 3], DOMAINS[s % 3]
                rows.append(
                    dict(
                        model_id=f"{method}-{s}",
                        subject_id=f"s{s}",
                        subject_domain=subject_domain,
                        prompt_id=f"p{p}",
                        domain=domain,
                        alignment_drop=prompt_effect[p]
                        + domain_effect[domain]
                        + 0.3 * rng.normal()
                        + effect * (domain == subject_domain),
                    )
                )
    return pd.DataFrame(rows)


def test_statistic_is_the_sum_of_prompt_centred_in_minus_out_differences():
    table = many_subjects(effect=0.4)
    out = semantic_proximity(table, "alignment_drop", n_perm=999, seed=1)
    grid = table.pivot(index="model_id", columns="prompt_id", values="alignment_drop")
    centred = grid - grid.mean(axis=0)  # independent recomputation
    domain = table.drop_duplicates("prompt_id").set_index("prompt_id")["domain"]
    total = 0.0
    for row in out["per_model"]:
        inside = (domain.loc[centred.columns] == row["subject_domain"]).to_numpy()
        values = centred.loc[row["model_id"]].to_numpy()
        assert row["difference"] == pytest.approx(values[inside].mean() - values[~inside].mean())
        raw = grid.loc[row["model_id"]].to_numpy()
        assert row["mean_in"] == pytest.approx(raw[inside].mean())
        total += row["difference"]
    assert out["combined"]["statistic"] == pytest.approx(total)
    json.dumps(out, allow_nan=False)


def test_domain_main_effects_alone_are_not_proximity():
    # some domains far more fragile under every model, no proximity: the raw in-minus-out difference is large,
    # the prompt-centred interaction is not
    table = many_subjects(seed=2, domain_sd=3.0)
    out = semantic_proximity(table, "alignment_drop", n_perm=999, seed=0)
    assert max(abs(r["mean_in"] - r["mean_out"]) for r in out["per_model"]) > 0.5
    assert abs(out["combined"]["effect_size"]) < 0.2
    assert out["combined"]["extra"]["ci_low"] < 0 < out["combined"]["extra"]["ci_high"]


def test_planted_interaction_is_found_with_an_interval_and_is_seeded():
    table = many_subjects(effect=0.5, domain_sd=1.0)
    first = semantic_proximity(table, "alignment_drop", n_perm=999, seed=5)
    combined = first["combined"]
    assert combined["p"] < 0.01 and combined["extra"]["ci_low"] < 0.5 < combined["extra"]["ci_high"]
    assert semantic_proximity(table, "alignment_drop", n_perm=999, seed=5) == first


def test_three_subjects_give_six_arrangements_and_say_the_smallest_p():
    table = many_subjects(n_subjects=3, effect=2.0)
    combined = semantic_proximity(table, "alignment_drop", n_perm=999)["combined"]
    extra = combined["extra"]
    assert extra["exact"] and extra["n_arrangements"] == 6 and extra["smallest_possible_p"] == pytest.approx(1 / 6)
    assert combined["p"] == pytest.approx(1 / 6)  # the strongest effect cannot go below 1/6
    assert extra["ci_high"] is None or extra["ci_low"] is None  # unbounded (JSON null): the design cannot bound it
    assert "p near 1" in extra["reading"]


def test_model_whose_domain_has_no_prompts_is_skipped_and_reported():
    out = semantic_proximity(disruption_table(subject_domains=("faces", "scenes")), "alignment_drop", n_perm=99)
    assert out["skipped_models"] == [{"model_id": "m1", "subject_domain": "scenes", "reason": "no in-domain prompts"}]
    assert [r["model_id"] for r in out["per_model"]] == ["m0"] and out["combined"]["n"] == 1
    assert out["combined"]["extra"]["n_arrangements"] == 2  # m1 still enters the arrangements and the centring


def test_no_usable_model_gives_non_computable_combined_result():
    out = semantic_proximity(disruption_table(subject_domains=("scenes",)), "alignment_drop", n_perm=99)
    assert out["combined"]["p"] is None and out["per_model"] == []


def test_similarity_spearman_is_on_prompt_centred_values_and_detects_a_link():
    table = disruption_table(n_prompts=30)
    similarity = table[["model_id", "prompt_id"]].assign(
        similarity=table["alignment_drop"] + np.random.default_rng(3).normal(0, 0.5, len(table))
    )
    out = semantic_proximity(table, "alignment_drop", n_perm=999, similarity=similarity)
    pairs = table.merge(similarity, on=["model_id", "prompt_id"])
    centred = pairs.groupby("prompt_id")[["similarity", "alignment_drop"]].transform(lambda x: x - x.mean())
    expected = stats.spearmanr(centred["similarity"], centred["alignment_drop"]).statistic
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
