"""The nulls that failed before issue 21, at a size that runs in seconds; planted effects are found.

The full null-rate table (500 studies per row, every scenario) is ``python benchmarks/stats_validity.py``,
quoted in docs/statistics.md. Here each null runs on 60-200 simulated studies: enough to tell the
old failures (0.09-0.31, or "not computed" in 190 of 200 studies) from a rate near 0.05, with an
upper bound of 0.05 + about 3 binomial SDs so that a valid test never fails by chance.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats
from stats_nulls import clustering_p_values, methods_p_values, proximity_p_values, rejection_rate
from stats_simulation import LAYERS, StudyDesign, simulate_shift, simulate_study

from cemaps.analysis.stats.abstractness import compare_abstractness
from cemaps.analysis.stats.layers import link_layers
from cemaps.analysis.stats.methods import compare_methods, subject_hotelling
from cemaps.analysis.stats.semantic import semantic_proximity


def upper_bound(n: int) -> float:
    """0.05 plus three binomial SDs at 0.05 for n studies."""
    return 0.05 + 3.0 * np.sqrt(0.05 * 0.95 / n)


def test_proximity_interaction_holds_alpha_under_domain_main_effects():
    # issue 21: the in-domain test rejected 0.10 (demo) and 0.31 (paper) of these nulls; larger domain effects, more
    design = replace(StudyDesign(n_subjects=6, n_prompts=48), domain_sd=1.0)
    p = proximity_p_values(50, seed=7, planted=False, design=design)
    for test in ("proximity_interaction", "similarity_spearman"):
        assert rejection_rate(p[test]) <= upper_bound(50), test
    assert np.mean(p["proximity_interaction"] > 0.99) < 0.1  # a p near 1 is no longer a common null outcome


def test_method_test_holds_alpha_when_methods_differ_in_variance():
    # model means of 6 subjects x 3 methods, model SD 0.1 / 0.5 / 1.5 by method, subject effects shared: the
    # blocked ANOVA this replaces assumed equal variances and rejected 0.09 of such nulls (issue 21)
    rng = np.random.default_rng(3)
    n, hotelling, anova = 1000, [], []
    for _ in range(n):
        means = rng.normal(size=(6, 3)) * [0.1, 0.5, 1.5] + rng.normal(0, 0.5, (6, 1))
        hotelling.append(subject_hotelling(pd.DataFrame(means, columns=["a", "b", "c"])).p)
        residual = means - means.mean(1, keepdims=True) - means.mean(0, keepdims=True) + means.mean()
        f_value = 6 * np.sum((means.mean(0) - means.mean()) ** 2) / 2 / (np.sum(residual**2) / 10)
        anova.append(stats.f.sf(f_value, 2, 10))
    assert rejection_rate(np.array(hotelling)) <= upper_bound(n)
    assert rejection_rate(np.array(anova)) > 0.07  # the old test, for contrast


def test_structural_zero_method_is_left_out_so_methods_do_not_differ_by_construction():
    design = replace(StudyDesign(n_subjects=4), skewed=True, zero_method="textual_inversion")
    table = simulate_study(design.without_method_offsets(), np.random.default_rng(0))
    out = compare_methods(table, "alignment_drop", n_boot=0)
    assert out["excluded_structural_zero_models"] == [f"textual_inversion-s{s}" for s in range(4)]
    assert out["subject_test"]["extra"]["methods"] == ["dreambooth", "lora"]
    assert "left out of the tests" in out["excluded_note"]
    p = methods_p_values(20, seed=5, planted=False, design=design)
    assert np.isfinite(p["subject_hotelling"]).all()  # computed on the measured methods (null rate: benchmark)


def test_clustering_answers_with_constant_profiles_as_the_pipeline_runs_it():
    design = replace(StudyDesign(), skewed=True, zero_method="textual_inversion")
    p = clustering_p_values(10, seed=2, planted=False, design=design)
    assert p["cluster_computed"].mean() == 1.0  # issue 21: "not computed" in 190 of 200 such studies


# ---- planted effects are found in one larger study -------------------------------------------------------------

BIG = StudyDesign(n_subjects=6, n_prompts=60)


def test_planted_method_effect_is_found_across_subjects():
    design = replace(BIG, method_offsets=(0.0, 1.0, 2.0))
    out = compare_methods(simulate_study(design, np.random.default_rng(2)), "alignment_drop", n_boot=0)
    assert out["subject_test"]["p"] < 0.01
    largest = max(out["pairwise"], key=lambda r: abs(r["mean_difference"]))
    assert {largest["method_a"], largest["method_b"]} == {"lora", "dreambooth"}  # offsets 0 and 2
    assert largest["p_holm"] < 0.01 and largest["ci_low"] <= abs(largest["mean_difference"]) <= largest["ci_high"]


def test_planted_abstractness_effect_is_found_by_every_prompt_level_test():
    out = compare_abstractness(simulate_study(BIG, np.random.default_rng(1), abstract_effect=1.5), "alignment_drop")
    assert out["kruskal"]["p"] < 0.01 and out["prompt_anova"]["test"]["p"] < 0.01
    for effect in out["prompt_anova"]["class_effects"]:
        # class contrast over 20 + 20 prompts: sampling SD ~ 1.0 * sqrt(2 / 20) = 0.32
        assert abs(effect["estimate"] - 1.5) < 0.7 and effect["ci_low"] < 1.5 < effect["ci_high"]


def test_planted_in_domain_effect_is_found_with_an_interval_that_covers_it():
    design = replace(BIG, n_subjects=9, domain_sd=1.0)  # domain main effects do not hide it
    out = semantic_proximity(simulate_study(design, np.random.default_rng(3), in_domain_effect=0.5), "alignment_drop")
    combined = out["combined"]
    assert combined["p"] < 0.01 and combined["extra"]["ci_low"] < 0.5 < combined["extra"]["ci_high"]


def test_planted_layer_link_is_found_by_permutation_and_ridge():
    rng = np.random.default_rng(4)
    data = simulate_study(BIG, rng)
    shift = simulate_shift(BIG, data, rng, linked_layer=LAYERS[2], link=1.0)
    out = link_layers(shift, data, "alignment_drop", seed=0)
    q_perm = {row["layer"]: row["q_bh_perm"] for row in out["layers"]}
    assert min(q_perm, key=q_perm.get) == LAYERS[2] and q_perm[LAYERS[2]] < 0.01
    ablation = {r["block"]: r["delta_r2"] for r in out["ridge"]["ablation"]}
    assert ablation["up"] < -0.1 < ablation["down"]  # the linked layer is in the up block
