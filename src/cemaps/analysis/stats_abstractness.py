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

The mixed model uses all pairs, with ``method`` as a fixed effect and a random
intercept per subject, as the reference analysis specified.

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"m{m}", method="lora", subject_id=f"s{m}", prompt_id=p,
    ...              abstractness=("concrete", "abstract")[p % 2], alignment_drop=float(p % 2 + p / 10))
    ...         for m in range(2) for p in range(10)]
    >>> out = compare_abstractness(pd.DataFrame(rows), "alignment_drop", mixed_model=False)
    >>> out["kruskal"]["n"]
    10
"""

from __future__ import annotations

import warnings
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

from cemaps.analysis.stats_common import (
    StatsInputError,
    TestResult,
    check_choice,
    holm,
    rank_biserial_independent,
    require_columns,
    require_constant_within,
    require_numeric,
    to_jsonable,
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
    return pd.DataFrame({"prompt_id": means.index, "abstractness": classes.loc[means.index].to_numpy(),
                         value: means.to_numpy()})


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
        return TestResult(test="kruskal", statistic=None, p=None, effect_size=None,
                          effect_size_name="epsilon_squared", n=n, method=text,
                          extra={"computable": False, "reason": "needs >= 2 classes and non-constant values",
                                 "classes": classes})
    h, p = stats.kruskal(*groups)
    return TestResult(test="kruskal", statistic=float(h), p=float(p), effect_size=float(h / (n - 1)),
                      effect_size_name="epsilon_squared", n=n, method=text,
                      extra={"computable": True, "classes": classes,
                             "n_per_class": {c: int(g.size) for c, g in zip(classes, groups)},
                             "median_per_class": {c: float(np.median(g)) for c, g in zip(classes, groups)}})


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
        rows.append(dict(class_a=a, class_b=b, statistic=float(result.statistic), p=float(result.pvalue),
                         effect_size=rank_biserial_independent(result.statistic, x.size, y.size),
                         effect_size_name="rank_biserial", n_a=int(x.size), n_b=int(y.size),
                         median_difference=float(np.median(x) - np.median(y))))
    table = pd.DataFrame(rows, columns=["class_a", "class_b", "statistic", "p", "effect_size",
                                        "effect_size_name", "n_a", "n_b", "median_difference"])
    table.insert(4, "p_holm", holm(table["p"].to_numpy()) if len(table) else [])
    return table


OPTIMIZERS = ("lbfgs", "powell", "nm")


def fit_mixedlm_ml(formula: str, data: pd.DataFrame, group: str) -> tuple[Any, list[str]]:
    """Fits a random-intercept mixedlm by ML with several optimizers; keeps the best converged fit.

    statsmodels' gradient optimizers often stop early or land on a singular
    boundary with an infinite likelihood on small designs, while Powell or
    Nelder-Mead converge; the largest finite log-likelihood among converged fits
    is the ML estimate. Returns (fit, warning messages of the kept fit) and sets
    ``fit.optimizer_name``.
    """
    model = smf.mixedlm(formula, data, groups=data[group])
    fits = []
    for optimizer in OPTIMIZERS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = model.fit(reml=False, method=optimizer)
            except (np.linalg.LinAlgError, ValueError):
                continue  # a failed optimizer is simply not a candidate; another one usually succeeds
        if np.isfinite(fit.llf):
            fit.optimizer_name = optimizer
            fits.append((bool(fit.converged), float(fit.llf), fit, [str(w.message) for w in caught]))
    if not fits:
        raise StatsInputError(f"mixed model {formula!r}: no optimizer produced a finite likelihood")
    _, _, best, messages = max(fits, key=lambda f: (f[0], f[1]))
    return best, messages


def abstractness_mixed_model(disruption: pd.DataFrame, value: str) -> dict[str, Any]:
    """``value ~ C(abstractness) + C(method)`` with a random intercept per subject_id.

    Coefficients (treatment coding, reference ``concrete`` when present) and
    their Wald p-values come from the ML fit; the abstractness term is tested by a
    likelihood-ratio test against ``value ~ C(method)``, both fit by ML (REML
    likelihoods of models with different fixed effects are not comparable).
    """
    require_columns(disruption, ["subject_id", "method", "abstractness", value], "disruption")
    data = disruption[["subject_id", "method", "abstractness", value]].copy()
    data["abstractness"] = data["abstractness"].astype(str)
    data["method"] = data["method"].astype(str)
    data = data.rename(columns={value: "response"})
    classes = ordered_classes(data["abstractness"])
    if len(classes) < 2:
        raise StatsInputError(f"disruption.abstractness: mixed model needs >= 2 classes, got {classes}")
    if data["subject_id"].nunique() < 2:
        raise StatsInputError("disruption.subject_id: mixed model needs >= 2 subjects for a random intercept")
    methods_term = " + C(method)" if data["method"].nunique() > 1 else ""
    full_formula = f"response ~ C(abstractness, Treatment(reference={classes[0]!r})){methods_term}"
    reduced_formula = f"response ~ 1{methods_term}"
    full, full_messages = fit_mixedlm_ml(full_formula, data, "subject_id")
    reduced, reduced_messages = fit_mixedlm_ml(reduced_formula, data, "subject_id")
    lr = float(2.0 * (full.llf - reduced.llf))
    df = len(classes) - 1
    prefix = f"C(abstractness, Treatment(reference={classes[0]!r}))[T."
    coefficients = [
        dict(term=name[len(prefix):-1], estimate=float(full.params[name]), std_error=float(full.bse[name]),
             p=float(full.pvalues[name]))
        for name in full.params.index if name.startswith(prefix)
    ]
    lrt = TestResult(
        test="mixedlm_lrt_abstractness", statistic=lr, p=float(stats.chi2.sf(max(lr, 0.0), df)),
        effect_size=None, effect_size_name="none", n=int(len(data)),
        method=(f"statsmodels mixedlm, ML fits; LR = 2 (llf[{full_formula}] - llf[{reduced_formula}]), "
                f"random intercept per subject_id, chi2 with {df} df"),
        extra={"df": df, "llf_full": float(full.llf), "llf_reduced": float(reduced.llf),
               "converged_full": bool(full.converged), "converged_reduced": bool(reduced.converged),
               "optimizer_full": full.optimizer_name, "optimizer_reduced": reduced.optimizer_name},
    )
    return {
        "formula": full_formula,
        "reference_class": classes[0],
        "coefficients": pd.DataFrame(coefficients, columns=["term", "estimate", "std_error", "p"]),
        "subject_variance": float(full.cov_re.iloc[0, 0]),
        "residual_variance": float(full.scale),
        "n_subjects": int(data["subject_id"].nunique()),
        "lrt": lrt,
        "warnings": sorted(set(full_messages) | set(reduced_messages)),
    }


def compare_abstractness(disruption: pd.DataFrame, value: str, unit: str = "prompt",
                         mixed_model: bool = True) -> dict[str, Any]:
    """Family 2: Kruskal-Wallis, pairwise Mann-Whitney and a mixed model over abstractness classes.

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            method, subject_id, prompt_id, abstractness and ``value``.
        value: metric column.
        unit: ``"prompt"`` (default; average over models per prompt, then test
            across prompts — see the module docstring) or ``"pair"``.
        mixed_model: fit the mixed model (the slow part; seconds at paper scale).

    Returns:
        JSON-able dict: ``kruskal`` (TestResult dict), ``pairwise`` (records),
        ``mixed_model`` (dict or None), ``unit``, ``n_units``.
    """
    units = abstractness_units(disruption, value, unit)
    return to_jsonable({
        "value": value,
        "unit": unit,
        "n_units": int(len(units)),
        "kruskal": kruskal_test(units, value, unit),
        "pairwise": pairwise_mannwhitney(units, value),
        "pairwise_method": (f"scipy.stats.mannwhitneyu two-sided, one observation per {unit}; "
                            "p_holm = Holm over class pairs (statsmodels); effect_size = rank-biserial "
                            "2U/(n_a n_b) - 1, positive when class_a is more disrupted"),
        "mixed_model": abstractness_mixed_model(disruption, value) if mixed_model else None,
    })
