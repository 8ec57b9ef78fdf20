"""Null rates and power of every test the report marks, measured on simulated studies.

Each ``*_p_values`` function runs the public statistics function on ``n_sims``
studies from :mod:`cemaps.analysis.stats.simulation` and returns, per test
decision, the p-values it produced. Under the null (``planted=False``) the share
below alpha is the test's false-positive rate; with a planted effect it is its
power. ``null_rate_and_power`` gathers them into the README's table
(``python benchmarks/stats_validity.py``); ``tests/analysis/stats/test_stats_validity.py``
asserts the rates.

Example:
    >>> import numpy as np
    >>> p = methods_p_values(5, seed=0, planted=False)
    >>> p["subject_anova"].shape, bool(np.all((p["subject_anova"] > 0) & (p["subject_anova"] <= 1)))
    ((5,), True)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats.abstractness import compare_abstractness
from cemaps.analysis.stats.clustering import cluster
from cemaps.analysis.stats.layers import link_layers
from cemaps.analysis.stats.methods import compare_methods
from cemaps.analysis.stats.semantic import semantic_proximity
from cemaps.analysis.stats.simulation import (
    LAYERS,
    StudyDesign,
    simulate_shift,
    simulate_similarity,
    simulate_study,
)

ALPHA = 0.05
DESIGN = StudyDesign()
# planted effects, in the metric's units (prompt SD 1.0, model SD 0.5, noise SD 0.3)
PLANTED_METHOD_OFFSETS = (0.0, 0.75, 1.5)
PLANTED_ABSTRACT = 1.0
PLANTED_IN_DOMAIN = 0.5
PLANTED_LINK = 0.5
PERMUTATIONS = 199  # per simulated study: enough for a valid p at alpha 0.05 ((1 + k) / 200 grid)


def _seeds(seed: int, n_sims: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_sims)]


def methods_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Method comparison: subject-blocked ANOVA, one paired t, Holm family; and the old prompt-blocked Friedman.

    Null: no method offsets (model, subject and prompt effects stay). Planted: offsets
    ``PLANTED_METHOD_OFFSETS``. ``friedman_prompt_blocks`` is the test cemaps used before issue 10,
    measured for comparison only.
    """
    design = (
        design.without_method_offsets()
        if not planted
        else StudyDesign(**{**design.__dict__, "method_offsets": PLANTED_METHOD_OFFSETS})
    )
    out: dict[str, list[float]] = {
        "subject_anova": [],
        "pair_lora_vs_dreambooth": [],
        "pairwise_any_holm": [],
        "friedman_prompt_blocks": [],
    }
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng)
        result = compare_methods(table, "alignment_drop", n_boot=0)
        out["subject_anova"].append(result["subject_anova"]["p"])
        pair = next(r for r in result["pairwise"] if {r["method_a"], r["method_b"]} == {"lora", "dreambooth"})
        out["pair_lora_vs_dreambooth"].append(pair["p"])
        out["pairwise_any_holm"].append(min(r["p_holm"] for r in result["pairwise"]))
        # rows are (method, subject, prompt) in order: blocks (subject, prompt) x methods
        blocks = table["alignment_drop"].to_numpy().reshape(len(design.methods), -1)
        out["friedman_prompt_blocks"].append(stats.friedmanchisquare(*blocks).pvalue)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def abstractness_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Abstractness: Kruskal-Wallis and Mann-Whitney (abstract vs concrete) on prompt means, permutation ANOVA."""
    out: dict[str, list[float]] = {
        "kruskal_prompt_means": [],
        "mannwhitney_abstract_vs_concrete": [],
        "prompt_permutation_anova": [],
    }
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng, abstract_effect=PLANTED_ABSTRACT if planted else 0.0)
        result = compare_abstractness(table, "alignment_drop", n_perm=PERMUTATIONS, seed=int(rng.integers(2**31)))
        out["kruskal_prompt_means"].append(result["kruskal"]["p"])
        out["mannwhitney_abstract_vs_concrete"].append(
            next(r["p"] for r in result["pairwise"] if (r["class_a"], r["class_b"]) == ("abstract", "concrete"))
        )
        out["prompt_permutation_anova"].append(result["prompt_anova"]["test"]["p"])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def proximity_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Semantic proximity: the combined prompt permutation, one model's own permutation, similarity Spearman.

    Planted: ``PLANTED_IN_DOMAIN`` added to in-domain pairs; similarity then carries the same
    effect (in-domain prompts get a similarity 2 higher), so its power is measured on the same link.
    """
    out: dict[str, list[float]] = {"proximity_combined": [], "proximity_one_model": [], "similarity_spearman": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng, in_domain_effect=PLANTED_IN_DOMAIN if planted else 0.0)
        similarity = simulate_similarity(design, table, rng)
        if planted:
            similarity["similarity"] += 2.0 * (table["domain"] == table["subject_domain"]).to_numpy()
        result = semantic_proximity(
            table, "alignment_drop", n_perm=PERMUTATIONS, seed=int(rng.integers(2**31)), similarity=similarity
        )
        out["proximity_combined"].append(result["combined"]["p"])
        out["proximity_one_model"].append(result["per_model"][0]["p"])
        out["similarity_spearman"].append(result["similarity"]["p"])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def layers_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Layer linking: per-layer prompt-permutation p (one layer per study), its BH q, and scipy's asymptotic p.

    Planted: disruption += ``PLANTED_LINK`` x the shift of ``LAYERS[2]``; the decisions are then
    those of that layer. Under the null, layer ``LAYERS[0]``.
    """
    layer = LAYERS[2] if planted else LAYERS[0]
    out: dict[str, list[float]] = {"layer_p_perm": [], "layer_q_bh_perm": [], "layer_p_asymptotic": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng)
        shift = simulate_shift(design, table, rng, linked_layer=LAYERS[2] if planted else None, link=PLANTED_LINK)
        rows = {
            r["layer"]: r
            for r in link_layers(
                shift, table, "alignment_drop", ridge=False, n_perm=PERMUTATIONS, seed=int(rng.integers(2**31))
            )["layers"]
        }
        out["layer_p_perm"].append(rows[layer]["p_perm"])
        out["layer_q_bh_perm"].append(rows[layer]["q_bh_perm"])
        out["layer_p_asymptotic"].append(rows[layer]["p_asymptotic"])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def clustering_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Clustering: permutation p of the ARI between the prompt tree and abstractness (planted: abstractness effect)."""
    out: dict[str, list[float]] = {"cluster_prompts_abstractness": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng, abstract_effect=2.0 * PLANTED_ABSTRACT if planted else 0.0)
        cem = table.pivot(index="model_id", columns="prompt_id", values="alignment_drop")
        prompts = table.drop_duplicates("prompt_id")[["prompt_id", "abstractness"]]
        models = table.drop_duplicates("model_id")[["model_id", "method"]]
        result = cluster(cem, prompts, models, metric="euclidean", n_perm=PERMUTATIONS, seed=int(rng.integers(2**31)))
        out["cluster_prompts_abstractness"].append(
            next(r["p_ari"] for r in result["prompts"]["agreement"] if r["label"] == "abstractness")
        )
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


FAMILIES: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "methods": methods_p_values,
    "abstractness": abstractness_p_values,
    "semantic_proximity": proximity_p_values,
    "layer_linking": layers_p_values,
    "clustering": clustering_p_values,
}
PLANTED_TEXT = {
    "methods": f"method offsets {PLANTED_METHOD_OFFSETS}",
    "abstractness": f"+{PLANTED_ABSTRACT} on abstract and compositional prompts",
    "semantic_proximity": f"+{PLANTED_IN_DOMAIN} on in-domain pairs (similarity +2 on them)",
    "layer_linking": f"disruption += {PLANTED_LINK} x one layer's shift",
    "clustering": f"+{2 * PLANTED_ABSTRACT} on abstract and compositional prompts",
}


def rejection_rate(p_values: np.ndarray, alpha: float = ALPHA) -> float:
    """Share of p-values below ``alpha``; NaN p-values (non-computable tests) count as no rejection."""
    p = np.asarray(p_values, dtype=np.float64)
    return float(np.mean(np.nan_to_num(p, nan=1.0) < alpha))


def null_rate_and_power(
    n_null: int = 1000, n_power: int = 500, seed: int = 0, families: tuple[str, ...] = tuple(FAMILIES)
) -> pd.DataFrame:
    """One row per test decision: null rate (with its binomial 95% interval) and power at alpha 0.05.

    Returns:
        Columns family, test, null_rate, null_ci_low, null_ci_high, n_null, power, n_power, planted.
    """
    rows = []
    for family in families:
        null = FAMILIES[family](n_null, seed, planted=False)
        power = FAMILIES[family](n_power, seed + 1, planted=True)
        for test, p in null.items():
            rate = rejection_rate(p)
            ci = stats.binomtest(int(round(rate * n_null)), n_null).proportion_ci(0.95)
            rows.append(
                dict(
                    family=family,
                    test=test,
                    null_rate=rate,
                    null_ci_low=ci.low,
                    null_ci_high=ci.high,
                    n_null=n_null,
                    power=rejection_rate(power[test]),
                    n_power=n_power,
                    planted=PLANTED_TEXT[family],
                )
            )
    return pd.DataFrame(rows)
