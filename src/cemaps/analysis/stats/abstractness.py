"""Family 2: are abstract and compositional prompts more fragile than concrete ones?

Unit of analysis. Abstractness is a property of a *prompt*. The rows of
``disruption`` are (model, prompt) pairs, and the same prompt's disruptions
under different models are correlated (a prompt that is hard for one
personalized model tends to be hard for all). Testing the pairs as if they were
independent multiplies the sample size by the number of models without adding
independent prompts (pseudo-replication), and the rank tests then reject a true
null far more often than alpha. The default ``unit="prompt"`` therefore
averages each prompt over models first and tests across prompts, the units that
were sampled. ``unit="pair"`` is offered for comparison with work that tested
pairs; the validity tests measure its inflated false-positive rate.

The reference analysis also fit a mixed model with a random intercept per
subject only; it treated the rows of one prompt as independent and rejected a
true null in 71 of 100 simulations (issue 10). It is replaced by a one-way
ANOVA on model-centred prompt effects with a permutation p over prompts
(:func:`prompt_permutation_anova`). Null rates and power of every test here are
measured in ``benchmarks/stats_validity.py``.

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"m{m}", method="lora", subject_id=f"s{m}", prompt_id=p,
    ...              abstractness=("concrete", "abstract")[p % 2], alignment_drop=float(p % 2 + p / 10))
    ...         for m in range(2) for p in range(10)]
    >>> out = compare_abstractness(pd.DataFrame(rows), "alignment_drop", n_perm=0)
    >>> out["kruskal"]["n"]
    10
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    StatsInputError,
    TestResult,
    check_choice,
    check_positive_int,
    holm,
    permutation_p_greater,
    rank_biserial_independent,
    require_columns,
    require_constant_within,
    require_numeric,
    to_jsonable,
    without_structural_zeros,
)

UNITS = ("prompt", "pair")
REFERENCE_CLASS = "concrete"


def abstractness_units(disruption: pd.DataFrame, value: str, unit: str) -> pd.DataFrame:
    """Rows to test: one per prompt (mean over models) or one per (model, prompt) pair.

    Returns:
        DataFrame with columns abstractness, ``value`` (and prompt_id).
    """
    check_choice(unit, "unit", UNITS)
    require_columns(disruption, ["model_id", "prompt_id", "abstractness", value], "disruption")
    require_numeric(disruption, value, "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected rows per (model_id, prompt_id)")
    if unit == "pair":
        return disruption[["prompt_id", "abstractness", value]].reset_index(drop=True)
    classes = require_constant_within(disruption, "prompt_id", "abstractness", "disruption")
    means = disruption.groupby("prompt_id", sort=True)[value].mean()
    return pd.DataFrame(
        {"prompt_id": means.index, "abstractness": classes.loc[means.index].to_numpy(), value: means.to_numpy()}
    )


def ordered_classes(labels: pd.Series) -> list[str]:
    """Class names with the reference class ``concrete`` first when present, then sorted."""
    names = sorted(map(str, labels.unique()))
    if REFERENCE_CLASS in names:
        names.remove(REFERENCE_CLASS)
        names.insert(0, REFERENCE_CLASS)
    return names


def kruskal_test(units: pd.DataFrame, value: str, unit: str) -> TestResult:
    """Kruskal-Wallis H across abstractness classes; epsilon^2 = H / (n - 1) (Tomczak & Tomczak 2014)."""
    classes = ordered_classes(units["abstractness"])
    groups = [units.loc[units["abstractness"].astype(str) == c, value].to_numpy() for c in classes]
    n = int(sum(g.size for g in groups))
    text = f"scipy.stats.kruskal over abstractness classes, one observation per {unit}; epsilon^2 = H / (n - 1)"
    if len(groups) < 2 or np.ptp(units[value].to_numpy()) == 0:
        return TestResult(
            test="kruskal",
            statistic=None,
            p=None,
            effect_size=None,
            effect_size_name="epsilon_squared",
            n=n,
            method=text,
            extra={"computable": False, "reason": "needs >= 2 classes and non-constant values", "classes": classes},
        )
    h, p = stats.kruskal(*groups)
    return TestResult(
        test="kruskal",
        statistic=float(h),
        p=float(p),
        effect_size=float(h / (n - 1)),
        effect_size_name="epsilon_squared",
        n=n,
        method=text,
        extra={
            "computable": True,
            NULL_RATE_VALIDATED: unit == "prompt",
            "classes": classes,
            "n_per_class": {c: int(g.size) for c, g in zip(classes, groups, strict=False)},
            "median_per_class": {c: float(np.median(g)) for c, g in zip(classes, groups, strict=False)},
        },
    )


def pairwise_mannwhitney(units: pd.DataFrame, value: str) -> pd.DataFrame:
    """Two-sided Mann-Whitney U for every pair of classes, Holm-corrected.

    Effect size: rank-biserial r = 2U/(n_a n_b) - 1 with U of class_a; positive
    means class_a tends to be more disrupted than class_b. Pairs are oriented so
    that the reference class (concrete) is class_b.
    """
    classes = ordered_classes(units["abstractness"])
    labels = units["abstractness"].astype(str)
    rows = []
    for b, a in combinations(classes, 2):  # classes[0] is the reference: it lands in b
        x = units.loc[labels == a, value].to_numpy()
        y = units.loc[labels == b, value].to_numpy()
        result = stats.mannwhitneyu(x, y, alternative="two-sided", method="auto")
        rows.append(
            dict(
                class_a=a,
                class_b=b,
                statistic=float(result.statistic),
                p=float(result.pvalue),
                effect_size=rank_biserial_independent(result.statistic, x.size, y.size),
                effect_size_name="rank_biserial",
                n_a=int(x.size),
                n_b=int(y.size),
                median_difference=float(np.median(x) - np.median(y)),
            )
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "class_a",
            "class_b",
            "statistic",
            "p",
            "effect_size",
            "effect_size_name",
            "n_a",
            "n_b",
            "median_difference",
        ],
    )
    table.insert(4, "p_holm", holm(table["p"].to_numpy()) if len(table) else [])
    return table


PERMUTATION_BATCH = 1000


def model_centred_prompt_effects(disruption: pd.DataFrame, value: str) -> pd.DataFrame:
    """One value per prompt: the mean over models of (value - that model's mean over the shared prompts).

    Uses the prompts seen by every model. Centring each model removes model,
    subject and method levels, which are constant across a model's prompts; in a
    complete design this changes prompt means only by a constant, and with a
    missing model it keeps every prompt comparable.

    Returns:
        Columns prompt_id, abstractness, ``value``; one row per shared prompt.
    """
    grid = disruption.pivot_table(index="model_id", columns="prompt_id", values=value, aggfunc="mean")
    shared = grid.columns[grid.notna().all(axis=0)]
    grid = grid[shared]
    effects = (grid.sub(grid.mean(axis=1), axis=0)).mean(axis=0)
    classes = require_constant_within(disruption, "prompt_id", "abstractness", "disruption")
    return pd.DataFrame(
        {
            "prompt_id": effects.index,
            "abstractness": classes.loc[effects.index].astype(str).to_numpy(),
            value: effects.to_numpy(dtype=np.float64),
        }
    )


def _between_class_ss(values: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Between-class sum of squares for each row of ``codes`` [B, n] (values [n])."""
    one_hot = codes[..., None] == np.arange(n_classes)  # [B, n, k]
    sums = np.einsum("bnk,n->bk", one_hot, values)
    sizes = one_hot.sum(axis=-2)
    return np.sum(sums**2 / sizes, axis=-1) - values.sum() ** 2 / values.size


def class_effect(inside: np.ndarray, reference: np.ndarray, term: str) -> dict[str, Any]:
    """Mean of ``inside`` minus mean of ``reference`` (prompt effects) with a 95% Welch t-interval.

    The interval is ``scipy.stats.ttest_ind(equal_var=False).confidence_interval()``; NaN with
    fewer than 2 prompts on a side or no variation.
    """
    low = high = float("nan")
    if inside.size >= 2 and reference.size >= 2 and (np.ptp(inside) > 0 or np.ptp(reference) > 0):
        interval = stats.ttest_ind(inside, reference, equal_var=False).confidence_interval(0.95)
        low, high = float(interval.low), float(interval.high)
    estimate = float(inside.mean() - reference.mean()) if inside.size and reference.size else float("nan")
    return dict(term=term, estimate=estimate, ci_low=low, ci_high=high, n_prompts=int(inside.size))


def prompt_permutation_anova(disruption: pd.DataFrame, value: str, n_perm: int, seed: int) -> dict[str, Any]:
    """Abstractness test on model-centred prompt effects: one-way ANOVA F with a class-label permutation p.

    This replaces the mixed model with a random intercept per subject, which
    counted the rows of one prompt as independent and rejected a true null in
    71 of 100 simulations (issue 10). Abstractness is a prompt property, so the
    replicates are prompts: each prompt's effect is its model-centred mean (see
    :func:`model_centred_prompt_effects`), and the abstractness labels are
    permuted across prompts. In a complete design this is the test of a
    prompt-level factor in the crossed prompt x model random-effects model
    (the prompt-level ANOVA of a balanced design), with an exact permutation p
    instead of an asymptotic chi-square. Class effects are differences of class
    means from the reference class (concrete), in the metric's units.

    Returns:
        dict: ``test`` (TestResult; statistic F, effect size eta^2), ``class_effects`` (records:
        term, estimate, ci_low, ci_high (95% Welch interval), n_prompts), ``reference_class``.
    """
    effects = model_centred_prompt_effects(disruption, value)
    classes = ordered_classes(effects["abstractness"])
    codes = pd.Categorical(effects["abstractness"], categories=classes).codes.astype(np.int64)
    values = effects[value].to_numpy(dtype=np.float64)
    n, k = values.size, len(classes)
    text = (
        f"one-way ANOVA F of abstractness on model-centred prompt effects (prompts seen by every model); "
        f"p = (1 + #permuted F >= observed) / (1 + {n_perm}), abstractness labels permuted across prompts "
        f"(seed {seed}); eta^2 = SS_between / SS_total; replaces the subject-intercept mixed model; null rate "
        "measured in benchmarks/stats_validity.py"
    )
    class_effects = pd.DataFrame(
        [class_effect(values[codes == i], values[codes == 0], c) for i, c in enumerate(classes) if i > 0],
        columns=["term", "estimate", "ci_low", "ci_high", "n_prompts"],
    )
    total = float(np.sum((values - values.mean()) ** 2))
    if k < 2 or n - k < 1 or total == 0 or n_perm == 0:
        reason = (
            "n_perm = 0"
            if n_perm == 0
            else f"needs >= 2 classes, more prompts than classes and non-constant values; has {k} classes, {n} prompts"
        )
        result = TestResult(
            test="prompt_permutation_anova",
            statistic=None,
            p=None,
            effect_size=None,
            effect_size_name="eta_squared",
            n=int(n),
            method=text,
            extra={"computable": False, "reason": reason, "classes": classes},
        )
        return {"test": result, "class_effects": class_effects, "reference_class": classes[0] if classes else None}
    between = float(_between_class_ss(values, codes[None, :], k)[0])
    f_value = (between / (k - 1)) / max((total - between) / (n - k), 1e-300)
    rng = np.random.default_rng(seed)
    null_between = np.empty(n_perm)
    for start in range(0, n_perm, PERMUTATION_BATCH):
        size = min(PERMUTATION_BATCH, n_perm - start)
        null_between[start : start + size] = _between_class_ss(
            values, rng.permuted(np.broadcast_to(codes, (size, n)), axis=1), k
        )
    # F is increasing in SS_between at fixed SS_total, so permuting labels, SS_between orders F
    p = float(permutation_p_greater(between, null_between))
    result = TestResult(
        test="prompt_permutation_anova",
        statistic=float(f_value),
        p=p,
        effect_size=float(between / total),
        effect_size_name="eta_squared",
        n=int(n),
        method=text,
        extra={
            "computable": True,
            NULL_RATE_VALIDATED: True,
            "n_perm": int(n_perm),
            "classes": classes,
            "df": [k - 1, n - k],
            "n_models": int(disruption["model_id"].nunique()),
        },
    )
    return {"test": result, "class_effects": class_effects, "reference_class": classes[0]}


def compare_abstractness(
    disruption: pd.DataFrame, value: str, unit: str = "prompt", n_perm: int = 9999, seed: int = 0
) -> dict[str, Any]:
    """Family 2: Kruskal-Wallis, pairwise Mann-Whitney and a prompt-permutation ANOVA over abstractness classes.

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            method, subject_id, prompt_id, abstractness and ``value``.
        value: metric column.
        unit: ``"prompt"`` (default; average over models per prompt, then test
            across prompts — see the module docstring) or ``"pair"``.
        n_perm: permutations of the prompt-level ANOVA (0 skips it).
        seed: seeds those permutations.

    Returns:
        JSON-able dict: ``kruskal`` (TestResult dict), ``pairwise`` (records),
        ``prompt_anova`` (dict with ``test``, ``class_effects``) or None, ``unit``, ``n_units``,
        ``excluded_structural_zero_models`` (models whose pairs are all structural zeros: left out).

    Raises:
        StatsInputError: missing columns, non-numeric or empty input, a bad ``unit`` or ``n_perm``.
    """
    check_positive_int(n_perm, "n_perm", minimum=0)
    require_columns(disruption, ["model_id", "prompt_id", "abstractness", value], "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected rows per (model_id, prompt_id)")
    disruption, excluded = without_structural_zeros(disruption)
    if disruption.empty:
        raise StatsInputError("disruption: every model's pairs are all structural zeros; nothing to test")
    units = abstractness_units(disruption, value, unit)
    return to_jsonable(
        {
            "value": value,
            "unit": unit,
            "n_units": int(len(units)),
            "kruskal": kruskal_test(units, value, unit),
            "pairwise": pairwise_mannwhitney(units, value),
            "pairwise_method": (
                f"scipy.stats.mannwhitneyu two-sided, one observation per {unit}; "
                "p_holm = Holm over class pairs (Holm 1979); effect_size = rank-biserial "
                "2U/(n_a n_b) - 1, positive when class_a is more disrupted"
            ),
            "prompt_anova": prompt_permutation_anova(disruption, value, n_perm, seed) if n_perm > 0 else None,
            "excluded_structural_zero_models": excluded,
        }
    )
