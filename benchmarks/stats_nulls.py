"""Null rates and power of every p-value the report shows, measured on simulated studies under several nulls.

Each ``*_p_values`` function runs the public statistics function on ``n_sims`` studies of one
:class:`~stats_simulation.StudyDesign` and returns, per test decision, the p-values it produced.
Under a null (``planted=False``) the share below alpha is the false-positive rate; with a
planted effect it is the power. ``SCENARIOS`` names the nulls of issues 10 and 21 and the tests
each one threatens; ``null_rate_table`` gathers them (``python benchmarks/stats_validity.py``).
Used by benchmarks/stats_validity.py and tests/analysis/stats/test_stats_validity.py only: it is
not part of the shipped package.

Example:
    >>> import numpy as np
    >>> p = methods_p_values(5, seed=0, planted=False)
    >>> p["subject_hotelling"].shape, bool(np.all((p["subject_hotelling"] > 0) & (p["subject_hotelling"] <= 1)))
    ((5,), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats
from stats_simulation import LAYERS, StudyDesign, simulate_shift, simulate_similarity, simulate_study

from cemaps.analysis.stats.abstractness import compare_abstractness
from cemaps.analysis.stats.layers import asymptotic_layer_table, link_layers
from cemaps.analysis.stats.methods import compare_methods
from cemaps.analysis.stats.run import clustering
from cemaps.analysis.stats.semantic import semantic_proximity

ALPHA = 0.05
DESIGN = StudyDesign()
PAPER = replace(DESIGN, n_subjects=15, n_prompts=200)
# planted effects, in the metric's units (prompt SD 1.0, model SD 0.5, noise SD 0.3)
PLANTED_METHOD_OFFSETS = (0.0, 0.75, 1.5)
PLANTED_ABSTRACT = 1.0
PLANTED_IN_DOMAIN = 0.5
PLANTED_LINK = 0.5
PERMUTATIONS = 199  # per simulated study: enough for a valid p at alpha 0.05 ((1 + k) / 200 grid)


def _seeds(seed: int, n_sims: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_sims)]


def _arrays(out: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {k: np.asarray([np.nan if v is None else v for v in values], dtype=np.float64) for k, values in out.items()}


def methods_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Method comparison: Hotelling's T^2, one paired t, the Holm family; and the prompt-blocked Friedman (old).

    Null: no method offsets (model, subject and prompt effects stay). Planted: ``PLANTED_METHOD_OFFSETS``.
    """
    offsets = PLANTED_METHOD_OFFSETS if planted else (0.0,) * len(design.methods)
    design = replace(design, method_offsets=offsets[: len(design.methods)])
    out: dict[str, list] = {"subject_hotelling": [], "pair_lora_vs_dreambooth": [], "pairwise_any_holm": []}
    out["friedman_prompt_blocks (old)"] = []
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng)
        result = compare_methods(table, "alignment_drop", n_boot=0)
        out["subject_hotelling"].append(result["subject_test"]["p"])
        pair = [r for r in result["pairwise"] if {r["method_a"], r["method_b"]} == {"lora", "dreambooth"}]
        out["pair_lora_vs_dreambooth"].append(pair[0]["p"] if pair else None)
        holm = [r["p_holm"] for r in result["pairwise"] if r["p_holm"] is not None]
        out["pairwise_any_holm"].append(min(holm) if holm else None)
        complete = table.pivot_table(index=["subject_id", "prompt_id"], columns="method", values="alignment_drop")
        complete = complete.dropna()
        friedman = stats.friedmanchisquare(*complete.to_numpy().T).pvalue if complete.shape[1] >= 3 else None
        out["friedman_prompt_blocks (old)"].append(friedman)
    return _arrays(out)


def abstractness_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Abstractness: Kruskal-Wallis on prompt means and the prompt-permutation ANOVA."""
    out: dict[str, list] = {"kruskal_prompt_means": [], "prompt_permutation_anova": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng, abstract_effect=PLANTED_ABSTRACT if planted else 0.0)
        result = compare_abstractness(table, "alignment_drop", n_perm=PERMUTATIONS, seed=int(rng.integers(2**31)))
        out["kruskal_prompt_means"].append(result["kruskal"]["p"])
        out["prompt_permutation_anova"].append(result["prompt_anova"]["test"]["p"])
    return _arrays(out)


def proximity_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Semantic proximity: the interaction test and the prompt-centred similarity Spearman.

    Similarity follows domain (in-domain prompts 1.0 more similar) in the null as well, the
    confound of issue 21 when domains have main effects. Planted: ``PLANTED_IN_DOMAIN`` on in-domain
    pairs.
    """
    out: dict[str, list] = {"proximity_interaction": [], "similarity_spearman": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng, in_domain_effect=PLANTED_IN_DOMAIN if planted else 0.0)
        similarity = simulate_similarity(design, table, rng, domain_link=1.0)
        result = semantic_proximity(
            table, "alignment_drop", n_perm=PERMUTATIONS, seed=int(rng.integers(2**31)), similarity=similarity
        )
        out["proximity_interaction"].append(result["combined"]["p"])
        out["similarity_spearman"].append((result["similarity"] or {}).get("p"))
    return _arrays(out)


def layers_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Layer linking: one layer's prompt-permutation p, its BH q; scipy's asymptotic p (CSV only) for comparison.

    Planted: disruption += ``PLANTED_LINK`` x the shift of ``LAYERS[2]``, whose decisions are then taken.
    """
    layer = LAYERS[2] if planted else LAYERS[0]
    out: dict[str, list] = {"layer_p_perm": [], "layer_q_bh_perm": [], "layer_p_asymptotic (CSV only)": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng)
        shift = simulate_shift(design, table, rng, linked_layer=LAYERS[2] if planted else None, link=PLANTED_LINK)
        result = link_layers(
            shift, table, "alignment_drop", ridge=False, n_perm=PERMUTATIONS, seed=int(rng.integers(2**31))
        )
        rows = {r["layer"]: r for r in result["layers"]}
        out["layer_p_perm"].append(rows[layer]["p_perm"])
        out["layer_q_bh_perm"].append(rows[layer]["q_bh_perm"])
        asymptotic = asymptotic_layer_table(shift, table, "alignment_drop").set_index("layer")
        out["layer_p_asymptotic (CSV only)"].append(asymptotic.loc[layer, "p_asymptotic"])
    return _arrays(out)


def clustering_p_values(n_sims: int, seed: int, planted: bool, design: StudyDesign = DESIGN) -> dict[str, np.ndarray]:
    """Clustering as the pipeline runs it (correlation metric, average linkage, constant profiles set apart).

    ``cluster_computed`` is 1 when the prompt tree was built (NaN p otherwise): its mean is the share of
    studies that get an answer. Planted: twice ``PLANTED_ABSTRACT`` on non-concrete prompts.
    """
    out: dict[str, list] = {"cluster_prompts_abstractness": [], "cluster_computed": []}
    for rng in _seeds(seed, n_sims):
        table = simulate_study(design, rng, abstract_effect=2.0 * PLANTED_ABSTRACT if planted else 0.0)
        result = clustering(table, "alignment_drop", PERMUTATIONS, int(rng.integers(2**31)))
        rows = [r for r in result["prompts"].get("agreement") or [] if r["label"] == "abstractness"]
        out["cluster_prompts_abstractness"].append(rows[0]["p_ari"] if rows else None)
        out["cluster_computed"].append(float(bool(rows and rows[0]["computable"])))
    return _arrays(out)


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
    "semantic_proximity": f"+{PLANTED_IN_DOMAIN} on in-domain pairs",
    "layer_linking": f"disruption += {PLANTED_LINK} x one layer's shift",
    "clustering": f"+{2 * PLANTED_ABSTRACT} on abstract and compositional prompts",
}
ZERO_HEAVY = replace(DESIGN, skewed=True, zero_method="textual_inversion")
SCENARIOS: dict[str, tuple[StudyDesign, tuple[str, ...]]] = {
    "issue 10 (prompt, model, subject effects)": (DESIGN, tuple(FAMILIES)),
    "domain main effects SD 0.5, demo size": (replace(DESIGN, domain_sd=0.5), ("semantic_proximity", "abstractness")),
    "domain main effects SD 0.5, paper size": (replace(PAPER, domain_sd=0.5), ("semantic_proximity",)),
    "method-dependent variance (model SD 0.1/0.5/1.5)": (
        replace(DESIGN, method_model_sd=(0.1, 0.5, 1.5), n_subjects=6),
        ("methods",),
    ),
    "TI structural zeros, skewed zero-heavy": (ZERO_HEAVY, tuple(FAMILIES)),
    "heavy tails (t3 noise)": (
        replace(DESIGN, noise_df=3.0),
        ("methods", "abstractness", "semantic_proximity", "layer_linking"),
    ),
    "models missing 10% of prompts": (
        replace(DESIGN, missing_share=0.1),
        ("methods", "abstractness", "semantic_proximity", "layer_linking"),
    ),
    "1 subject per method": (replace(DESIGN, n_subjects=1), ("methods", "abstractness", "semantic_proximity")),
    "2 subjects per method": (replace(DESIGN, n_subjects=2), ("methods", "abstractness", "semantic_proximity")),
}
COMPARISON_ONLY = ("(old)", "(CSV only)", "cluster_computed")


def rejection_rate(p_values: np.ndarray, alpha: float = ALPHA) -> float:
    """Share of p-values below ``alpha``; NaN p-values (non-computable tests) count as no rejection."""
    p = np.asarray(p_values, dtype=np.float64)
    return float(np.mean(np.nan_to_num(p, nan=1.0) < alpha))


def null_rate_table(
    n_null: int = 1000,
    n_power: int = 0,
    seed: int = 0,
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
    families: tuple[str, ...] = tuple(FAMILIES),
) -> pd.DataFrame:
    """One row per (scenario, test): null rate with its binomial 95% interval, computable share, and power.

    Power (``n_power`` > 0) is measured with the scenario's design and the family's planted effect.

    Returns:
        Columns scenario, family, test, null_rate, null_ci_low, null_ci_high, computable, n_null, power,
        n_power, planted, shown (False for comparison-only rows).
    """
    rows = []
    for scenario in scenarios:
        design, threatened = SCENARIOS[scenario]
        for family in (f for f in threatened if f in families):
            null = FAMILIES[family](n_null, seed, planted=False, design=design)
            power = FAMILIES[family](n_power, seed + 1, planted=True, design=design) if n_power else {}
            for test, p in null.items():
                if test == "cluster_computed":
                    rate, computable = float("nan"), float(np.mean(p))
                else:
                    rate, computable = rejection_rate(p), float(np.mean(np.isfinite(p)))
                k = int(round(0.0 if np.isnan(rate) else rate * n_null))
                ci = stats.binomtest(k, n_null).proportion_ci(0.95)
                rows.append(
                    dict(
                        scenario=scenario,
                        family=family,
                        test=test,
                        null_rate=rate,
                        null_ci_low=ci.low,
                        null_ci_high=ci.high,
                        computable=computable,
                        n_null=n_null,
                        power=rejection_rate(power[test]) if test in power and test != "cluster_computed" else None,
                        n_power=n_power,
                        planted=PLANTED_TEXT[family],
                        shown=not any(tag in test for tag in COMPARISON_ONLY),
                    )
                )
    return pd.DataFrame(rows)
