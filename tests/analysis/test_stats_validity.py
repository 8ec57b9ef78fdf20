"""Do the statistics find planted effects, and hold their false-positive rate on null data?

Null data keep the nuisance structure of real studies (subject, method and
prompt effects, prompt effects shared by every model), so a test that ignores
the unit of analysis would show an inflated rate here. Each false-positive rate
is estimated from 250 seeded simulations of the public family functions; with
250 draws the binomial SD at 0.05 is 0.014, so [0.02, 0.08] is about +-2.2 SD.
The mixed model is checked once on planted data, not in the loops (it takes
~0.5 s per fit).

Run with ``-s`` to print the measured rates.
"""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

from cemaps.analysis.stats_abstractness import abstractness_units, compare_abstractness, kruskal_test
from cemaps.analysis.stats_layers import link_layers
from cemaps.analysis.stats_methods import compare_methods
from cemaps.analysis.stats_semantic import semantic_proximity

ALPHA = 0.05
N_SIMULATIONS = 250
FPR_RANGE = (0.02, 0.08)
DOMAINS = ("faces", "objects", "styles", "scenes")
CLASSES = ("concrete", "abstract", "compositional")
METHODS = ("lora", "textual_inversion", "dreambooth")
TOTAL_SD = float(np.sqrt(0.5**2 + 0.5**2 + 1.0))  # SD of one (model, prompt) value: prompt, subject, residual
LAYERS = ("down_blocks.1.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn2",
          "up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.2.attentions.1.transformer_blocks.0.attn2")


def simulate_disruption(rng: np.random.Generator, n_subjects: int, n_prompts: int, methods=METHODS,
                        abstract_shift: float = 0.0, method_shift: float = 0.0, in_domain_shift: float = 0.0,
                        prompt_sd: float = 0.5, subject_sd: float = 0.5) -> pd.DataFrame:
    """One row per (model, prompt); residual SD 1, shifts in absolute units (see ``TOTAL_SD``).

    Prompt effects are shared by all models (the pseudo-replication trap);
    subjects get random intercepts; in-domain = prompt domain == subject domain.
    """
    prompt_class = np.array([CLASSES[p % 3] for p in range(n_prompts)])
    prompt_domain = np.array([DOMAINS[(p // 3) % len(DOMAINS)] for p in range(n_prompts)])
    subject_domain = np.array([DOMAINS[s % 3] for s in range(n_subjects)])
    n_models = len(methods) * n_subjects
    method_index = np.repeat(np.arange(len(methods)), n_subjects)  # [n_models]
    subject_index = np.tile(np.arange(n_subjects), len(methods))  # [n_models]
    prompt_effect = rng.normal(0.0, prompt_sd, n_prompts)
    subject_effect = rng.normal(0.0, subject_sd, n_subjects)
    value = (subject_effect[subject_index][:, None] + method_shift * method_index[:, None] + prompt_effect[None, :]
             + rng.normal(0.0, 1.0, (n_models, n_prompts))
             + abstract_shift * (prompt_class != "concrete")[None, :]
             + in_domain_shift * (prompt_domain[None, :] == subject_domain[subject_index][:, None]))
    methods = np.asarray(methods)
    subjects = np.array([f"s{s}" for s in range(n_subjects)])
    return pd.DataFrame({
        "model_id": np.repeat(np.char.add(np.char.add(methods[method_index], "-"), subjects[subject_index]), n_prompts),
        "method": np.repeat(methods[method_index], n_prompts),
        "subject_id": np.repeat(subjects[subject_index], n_prompts),
        "subject_domain": np.repeat(subject_domain[subject_index], n_prompts),
        "prompt_id": np.tile(np.array([f"p{p}" for p in range(n_prompts)]), n_models),
        "abstractness": np.tile(prompt_class, n_models),
        "domain": np.tile(prompt_domain, n_models),
        "alignment_drop": value.ravel(),
    })


def simulate_shift(rng: np.random.Generator, disruption: pd.DataFrame, linked_layer: str | None) -> pd.DataFrame:
    """Per-layer shifts; if ``linked_layer`` is given, disruption := that layer's shift + noise (in place)."""
    n = len(disruption)
    shift = pd.DataFrame({
        "model_id": np.tile(disruption["model_id"].to_numpy(), len(LAYERS)),
        "prompt_id": np.tile(disruption["prompt_id"].to_numpy(), len(LAYERS)),
        "layer": np.repeat(np.array(LAYERS), n),
        "attention_shift": rng.normal(size=n * len(LAYERS)),
    })
    if linked_layer is not None:
        linked = shift.loc[shift["layer"] == linked_layer, "attention_shift"].to_numpy()
        disruption["alignment_drop"] = linked + rng.normal(0.0, 1.0, len(disruption))
    return shift


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """statsmodels' Holm correction calls gc.collect() on every call, which scans the whole
    test-process heap (~0.1-0.2 s); freezing the objects that exist now makes that cheap."""
    gc.freeze()
    yield
    gc.unfreeze()


def false_positive_rate(p_values: list[float]) -> float:
    p = np.asarray(p_values, dtype=np.float64)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    return float(np.mean(p < ALPHA))


# ---- planted effects are found --------------------------------------------------------------------------------

def test_planted_abstractness_effect_is_detected():
    data = simulate_disruption(np.random.default_rng(1), n_subjects=5, n_prompts=60, abstract_shift=0.5 * TOTAL_SD)
    out = compare_abstractness(data, "alignment_drop", mixed_model=False)
    abstract_vs_concrete = next(r for r in out["pairwise"] if (r["class_a"], r["class_b"]) == ("abstract", "concrete"))
    print(f"\nplanted abstractness: kruskal p={out['kruskal']['p']:.2e} eps2={out['kruskal']['effect_size']:.3f}; "
          f"MWU abstract>concrete p={abstract_vs_concrete['p']:.2e} r={abstract_vs_concrete['effect_size']:.3f}")
    assert out["kruskal"]["p"] < 0.01
    assert abstract_vs_concrete["p"] < 0.01 and abstract_vs_concrete["effect_size"] > 0


def test_planted_method_effect_is_detected():
    data = simulate_disruption(np.random.default_rng(2), n_subjects=5, n_prompts=60, method_shift=0.3)
    out = compare_methods(data, "alignment_drop", n_boot=0)
    print(f"\nplanted method: friedman p={out['friedman']['p']:.2e} W={out['friedman']['effect_size']:.3f}")
    assert out["friedman"]["p"] < 0.01
    largest = max(out["pairwise"], key=lambda r: abs(r["mean_difference"]))
    assert {largest["method_a"], largest["method_b"]} == {"lora", "dreambooth"}  # shifts 0 and 2 x 0.3
    assert largest["p_holm"] < 0.01


def test_planted_in_domain_effect_is_detected():
    data = simulate_disruption(np.random.default_rng(3), n_subjects=5, n_prompts=60, in_domain_shift=0.5)
    out = semantic_proximity(data, "alignment_drop", n_perm=999, seed=0)
    print(f"\nplanted in-domain: combined p={out['combined']['p']:.4f} mean diff={out['combined']['effect_size']:.3f}")
    assert out["combined"]["p"] < 0.01
    assert out["combined"]["effect_size"] > 0


def test_planted_layer_link_is_found_by_correlation_and_ridge():
    rng = np.random.default_rng(4)
    data = simulate_disruption(rng, n_subjects=3, n_prompts=40)
    shift = simulate_shift(rng, data, linked_layer=LAYERS[2])
    out = link_layers(shift, data, "alignment_drop", seed=0)
    q = {row["layer"]: row["q_bh"] for row in out["layers"]}
    print(f"\nplanted layer link: q={q}; q_perm={[row['q_bh_perm'] for row in out['layers']]}; ridge R2={out['ridge']['full']['statistic']:.3f}; "
          f"ablation={[(r['block'], round(r['delta_r2'], 3)) for r in out['ridge']['ablation']]}")
    assert min(q, key=q.get) == LAYERS[2] and q[LAYERS[2]] < 0.01
    q_perm = {row["layer"]: row["q_bh_perm"] for row in out["layers"]}
    assert min(q_perm, key=q_perm.get) == LAYERS[2] and q_perm[LAYERS[2]] < 0.01
    assert out["ridge"]["full"]["statistic"] > 0
    ablation = {r["block"]: r["delta_r2"] for r in out["ridge"]["ablation"]}
    assert ablation["up"] < -0.1 < ablation["down"]  # the linked layer is in the up block


def test_mixed_model_recovers_planted_abstractness_effect():
    data = simulate_disruption(np.random.default_rng(5), n_subjects=5, n_prompts=60, abstract_shift=0.5 * TOTAL_SD)
    mixed = compare_abstractness(data, "alignment_drop")["mixed_model"]
    coefficients = {c["term"]: c for c in mixed["coefficients"]}
    print(f"\nmixed model: {coefficients}; LRT p={mixed['lrt']['p']:.2e}")
    assert mixed["lrt"]["extra"]["converged_full"] and mixed["lrt"]["p"] < 0.01
    truth = 0.5 * TOTAL_SD
    for term in ("abstract", "compositional"):
        assert coefficients[term]["p"] < 0.01
        # the model has no prompt random effect, so its SE (~0.09) understates the sampling SD of a class
        # contrast over 20 + 20 prompts (~0.5 * sqrt(2 / 20) = 0.16); compare with ~2.2 of the latter
        assert abs(coefficients[term]["estimate"] - truth) < 0.35


# ---- false-positive rates on null data ------------------------------------------------------------------------

def _simulated_p_values(test, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [p for _ in range(N_SIMULATIONS) for p in test(rng)]


def test_friedman_false_positive_rate():
    def one(rng):
        data = simulate_disruption(rng, n_subjects=3, n_prompts=12)
        return [compare_methods(data, "alignment_drop", n_boot=0)["friedman"]["p"]]
    rate = false_positive_rate(_simulated_p_values(one, seed=10))
    print(f"\nFPR friedman: {rate:.4f} over {N_SIMULATIONS}")
    assert FPR_RANGE[0] <= rate <= FPR_RANGE[1]


def test_kruskal_and_mann_whitney_false_positive_rates():
    kruskal, mwu, pair_level = [], [], []
    rng = np.random.default_rng(11)
    for _ in range(N_SIMULATIONS):
        data = simulate_disruption(rng, n_subjects=2, n_prompts=30, methods=METHODS[:2])
        out = compare_abstractness(data, "alignment_drop", mixed_model=False)
        kruskal.append(out["kruskal"]["p"])
        mwu.append(next(r["p"] for r in out["pairwise"] if (r["class_a"], r["class_b"]) == ("abstract", "concrete")))
        pairs = abstractness_units(data, "alignment_drop", unit="pair")
        pair_level.append(kruskal_test(pairs, "alignment_drop", unit="pair").p)
    rates = {name: false_positive_rate(p) for name, p in
             (("kruskal", kruskal), ("mwu", mwu), ("kruskal_pair_level", pair_level))}
    print(f"\nFPR kruskal={rates['kruskal']:.4f} mwu={rates['mwu']:.4f} "
          f"(pair-level kruskal, pseudo-replicated: {rates['kruskal_pair_level']:.4f}) over {N_SIMULATIONS}")
    assert FPR_RANGE[0] <= rates["kruskal"] <= FPR_RANGE[1]
    assert FPR_RANGE[0] <= rates["mwu"] <= FPR_RANGE[1]
    # why unit="prompt" is the default: with shared prompt effects, pair-level tests over-reject
    assert rates["kruskal_pair_level"] > FPR_RANGE[1] and rates["kruskal_pair_level"] > 2 * rates["kruskal"]


def test_proximity_permutation_false_positive_rate():
    def one(rng):
        data = simulate_disruption(rng, n_subjects=3, n_prompts=24, methods=METHODS[:1])
        return [semantic_proximity(data, "alignment_drop", n_perm=199, seed=int(rng.integers(2**31)))
                ["combined"]["p"]]
    rate = false_positive_rate(_simulated_p_values(one, seed=12))
    print(f"\nFPR combined proximity: {rate:.4f} over {N_SIMULATIONS}")
    assert FPR_RANGE[0] <= rate <= FPR_RANGE[1]


def test_layer_spearman_false_positive_rate():
    def one(rng):
        data = simulate_disruption(rng, n_subjects=2, n_prompts=15, methods=METHODS[:1])
        shift = simulate_shift(rng, data, linked_layer=None)
        layers = link_layers(shift, data, "alignment_drop", ridge=False, n_perm=199,
                             seed=int(rng.integers(2**31)))["layers"]
        return [(row["p"], row["p_perm"]) for row in layers]
    p_values = np.array(_simulated_p_values(one, seed=13))
    rate, rate_perm = false_positive_rate(p_values[:, 0]), false_positive_rate(p_values[:, 1])
    print(f"\nFPR layer spearman: asymptotic {rate:.4f}, prompt permutation {rate_perm:.4f} over "
          f"{len(p_values)} layer tests ({N_SIMULATIONS} simulations)")
    assert FPR_RANGE[0] <= rate <= FPR_RANGE[1]
    assert FPR_RANGE[0] <= rate_perm <= FPR_RANGE[1]


def test_similarity_permutation_false_positive_rate():
    def one(rng):
        data = simulate_disruption(rng, n_subjects=2, n_prompts=20)
        # similarity depends on (subject, prompt) only, so the methods of a subject share it; no link to disruption
        per_subject = rng.normal(size=(2, 20)) + np.array([[0.0], [1.0]])
        subject = data["subject_id"].str[1:].astype(int).to_numpy()
        prompt = data["prompt_id"].str[1:].astype(int).to_numpy()
        similarity = data[["model_id", "prompt_id"]].assign(similarity=per_subject[subject, prompt])
        return [semantic_proximity(data, "alignment_drop", n_perm=199, seed=int(rng.integers(2**31)),
                                   similarity=similarity)["similarity"]["p"]]
    rate = false_positive_rate(_simulated_p_values(one, seed=14))
    print(f"\nFPR similarity spearman (prompt permutation): {rate:.4f} over {N_SIMULATIONS}")
    assert FPR_RANGE[0] <= rate <= FPR_RANGE[1]
