"""Family 1: do personalization methods differ in how much they disrupt?

A method is a property of a model, and every model has its own level of
disruption (its subject, its training run), shared by all its prompts. The
(model, prompt) pairs of one model are therefore not replicates of its method:
with 3 subjects x 3 methods, 24 prompts, model effects of SD 0.5 and noise of
SD 0.3, a Friedman test over (subject, prompt) blocks rejects a true null in
85% of simulations. The replicates of a method are its subjects. Each model is
reduced to its mean over the prompts that every model has (a prompt effect
shared by all models then cancels), and methods are compared within subjects:
Hotelling's T^2 on the method contrasts across subjects, and paired t-tests
across subjects for each pair, Holm-corrected. Both are exact under normal
model effects whatever each method's variance; their null rates and power are
measured in ``benchmarks/stats_validity.py``. With few subjects the test has
little power: that is the honest size of the evidence.

Records whose image and attention maps are bit-identical to the base twin
(``structural_zero``, e.g. Textual Inversion on prompts without its token)
have disruption 0 by construction; they are counted per method, and a model
whose pairs are all structural zeros is left out of the tests (with them,
"methods differ" would be true by construction).

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"{m}-{s}", method=m, subject_id=s, prompt_id=p,
    ...              alignment_drop=p % 3 + (m == "lora") + 0.1 * (s + m in ("bdb", "cti", "dlora")))
    ...         for m in ("lora", "ti", "db") for s in "abcd" for p in range(6)]
    >>> out = compare_methods(pd.DataFrame(rows), "alignment_drop", n_boot=0)
    >>> out["subject_test"]["n"], out["subject_test"]["p"] < 0.05
    (4, True)
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    STRUCTURAL_ZERO,
    StatsInputError,
    TestResult,
    check_positive_int,
    holm,
    require_columns,
    require_numeric,
    to_jsonable,
    without_structural_zeros,
)


def subject_method_means(disruption: pd.DataFrame, value: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """[n_subjects x n_methods] mean of ``value`` per model over the prompts every model has.

    The method comparison's unit is the model: a method is a property of a
    model, and each model has its own level of disruption, so a model's many
    prompts are not replicates of its method. Only prompts seen by every model
    enter, so a prompt effect shared by all models adds the same amount to
    every cell and cancels in the comparison. Several models of one (subject,
    method) are averaged; subjects lacking a method are dropped.

    Returns:
        (table [n_subjects x n_methods], counts) with counts ``subjects_total``,
        ``subjects_dropped_incomplete``, ``prompts_used``.
    """
    require_columns(disruption, ["model_id", "method", "subject_id", "prompt_id", value], "disruption")
    require_numeric(disruption, value, "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected rows per (model_id, prompt_id)")
    grid = disruption.pivot_table(index="model_id", columns="prompt_id", values=value, aggfunc="mean")
    prompts = grid.columns[grid.notna().all(axis=0)]
    if len(prompts) == 0:
        raise StatsInputError("disruption: no prompt_id is present for every model; expected a models x prompts grid")
    model_mean = grid[prompts].mean(axis=1).rename("__mean__")
    labels = disruption.drop_duplicates("model_id").set_index("model_id")[["subject_id", "method"]]
    cells = labels.join(model_mean).pivot_table(
        index="subject_id", columns="method", values="__mean__", aggfunc="mean", sort=True
    )
    complete = cells.dropna(axis=0, how="any")
    complete.columns = [str(c) for c in complete.columns]
    counts = {
        "subjects_total": int(len(cells)),
        "subjects_dropped_incomplete": int(len(cells) - len(complete)),
        "prompts_used": int(len(prompts)),
    }
    return complete, counts


def subject_hotelling(means: pd.DataFrame) -> TestResult:
    """Hotelling's T^2 across subjects on the k - 1 method contrasts of model means (one-sample, mean 0).

    Each subject gives the vector (method_j - method_0 for j >= 1) of its model means; the test
    asks whether that vector's mean is 0 (statsmodels ``test_mvmean``: F = T^2 (s - k + 1) /
    ((s - 1)(k - 1)) with (k - 1, s - k + 1) df). Exact for multivariate-normal model effects with
    ANY covariance, so methods may differ in variance (the blocked ANOVA it replaces assumed
    sphericity and rejected a true null at 0.09 when they did; issue 21). With two methods it is
    the paired t-test (F = t^2). Needs s >= k subjects with every method.
    Effect size: Mahalanobis D^2 = T^2 / s of the mean contrast vector.

    Args:
        means: [n_subjects x k_methods] from :func:`subject_method_means`.
    """
    from statsmodels.stats.multivariate import test_mvmean

    s, k = means.shape
    text = (
        "Hotelling's T^2 (statsmodels.stats.multivariate.test_mvmean) across subjects on the k - 1 contrasts "
        "(method - first method) of per-model means over shared prompts; F with (k - 1, s - k + 1) df; exact "
        "under any method-dependent variance; models whose pairs are all structural zeros are excluded; "
        "D^2 = T^2 / s; null rate measured in benchmarks/stats_validity.py"
    )
    x = means.to_numpy(dtype=np.float64)
    contrasts = x[:, 1:] - x[:, :1]  # [s, k - 1]
    singular = k >= 2 and s >= k and np.linalg.matrix_rank(contrasts - contrasts.mean(axis=0)) < k - 1
    if k < 2 or s < k or singular:
        reason = (
            f"needs >= 2 methods and at least as many subjects with every method as methods; has {k} methods "
            f"and {s} subjects"
            if not singular
            else "the method contrasts have no variation across subjects to test against"
        )
        return TestResult(
            test="subject_hotelling",
            statistic=None,
            p=None,
            effect_size=None,
            effect_size_name="mahalanobis_d2",
            n=int(s),
            method=text,
            extra={"computable": False, "reason": reason, "methods": list(means.columns)},
        )
    if k == 2:  # statsmodels needs a 2-D covariance; one contrast is the one-sample (paired) t-test, F = t^2
        t = stats.ttest_1samp(contrasts[:, 0], 0.0)
        f_value, p_value, t2, df = float(t.statistic) ** 2, float(t.pvalue), float(t.statistic) ** 2, (1, s - 1)
    else:
        result = test_mvmean(contrasts, 0.0, return_results=True)
        f_value, p_value, t2, df = float(result.statistic), float(result.pvalue), float(result.t2), result.df
    return TestResult(
        test="subject_hotelling",
        statistic=f_value,
        p=p_value,
        effect_size=t2 / s,
        effect_size_name="mahalanobis_d2",
        n=int(s),
        method=text,
        extra={
            "computable": True,
            NULL_RATE_VALIDATED: True,
            "k_methods": int(k),
            "n_subjects": int(s),
            "t2": t2,
            "df": [int(d) for d in df],
            "methods": list(means.columns),
        },
    )


def pairwise_paired_t(means: pd.DataFrame) -> pd.DataFrame:
    """Two-sided paired t-test across subjects for every pair of methods, on model means; Holm-corrected.

    Effect size: Cohen's d_z = mean(a - b) / sd(a - b) over subjects; positive means a > b. The
    paired t is exact whatever the two methods' variances (it sees only their differences).

    Returns:
        One row per pair: method_a, method_b, statistic, p, p_holm, effect_size,
        effect_size_name, n (subjects), mean_difference, ci_low, ci_high (95% t-interval of the
        mean difference).
    """
    rows: list[dict[str, Any]] = []
    for a, b in combinations(means.columns, 2):
        diff = means[a].to_numpy() - means[b].to_numpy()
        sd = float(np.std(diff, ddof=1)) if diff.size > 1 else float("nan")
        statistic = p = effect = low = high = float("nan")
        if diff.size > 1 and sd > 0:
            standard_error = sd / np.sqrt(diff.size)
            statistic = float(diff.mean() / standard_error)
            p = float(2.0 * stats.t.sf(abs(statistic), diff.size - 1))
            effect = float(diff.mean() / sd)
            half = float(stats.t.ppf(0.975, diff.size - 1) * standard_error)
            low, high = float(diff.mean() - half), float(diff.mean() + half)
        rows.append(
            dict(
                method_a=a,
                method_b=b,
                statistic=statistic,
                p=p,
                effect_size=effect,
                effect_size_name="cohen_dz",
                n=int(diff.size),
                mean_difference=float(diff.mean()),
                ci_low=low,
                ci_high=high,
            )
        )
    columns = ["method_a", "method_b", "statistic", "p", "effect_size", "effect_size_name", "n", "mean_difference"]
    table = pd.DataFrame(rows, columns=[*columns, "ci_low", "ci_high"])
    table.insert(4, "p_holm", holm(table["p"].to_numpy()) if len(table) else [])
    return table


def method_means(disruption: pd.DataFrame, value: str, n_boot: int, seed: int) -> pd.DataFrame:
    """Per-method mean of ``value`` with a BCa bootstrap 95% CI that resamples prompts.

    Each method's rows are first averaged over its models per prompt; the mean
    and the CI are over those prompt means. Resampling prompts, not (model,
    prompt) rows, keeps a prompt's correlated values under several models
    together (see ``stats_abstractness``); with the reference's few subjects per
    method, subjects are not resampled, so the CI is conditional on them.
    ``n_boot=0`` skips the intervals (ci_low/ci_high NaN).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for method, group in disruption.groupby("method", sort=True):
        values = group.groupby("prompt_id", sort=True)[value].mean().to_numpy(dtype=np.float64)
        low = high = float("nan")
        if n_boot > 0 and np.ptp(values) == 0:
            low = high = float(values[0])  # BCa is undefined for constant data; the CI is that constant
        elif n_boot > 0 and values.size >= 2:
            ci = stats.bootstrap(
                (values,), np.mean, n_resamples=n_boot, confidence_level=0.95, method="BCa", rng=rng, vectorized=True
            ).confidence_interval
            low, high = float(ci.low), float(ci.high)
        rows.append(
            dict(
                method=str(method),
                mean=float(values.mean()),
                ci_low=low,
                ci_high=high,
                n_prompts=int(values.size),
                n_models=int(group["model_id"].nunique()),
            )
        )
    return pd.DataFrame(rows, columns=["method", "mean", "ci_low", "ci_high", "n_prompts", "n_models"])


def structural_zero_counts(disruption: pd.DataFrame) -> pd.DataFrame:
    """Per method: (model, prompt) pairs and how many are structural zeros (``structural_zero`` true).

    A structural zero is a pair whose image and attention maps are bit-identical
    to the base twin for every seed: its disruption is 0 by construction (the
    personalization cannot act on that prompt), not a measured absence of effect.
    Without a ``structural_zero`` column every count is 0.
    """
    zero = (
        disruption[STRUCTURAL_ZERO].fillna(False).astype(bool)
        if STRUCTURAL_ZERO in disruption
        else pd.Series(False, index=disruption.index)
    )
    counted = disruption.assign(__zero__=zero.to_numpy())
    rows = [
        dict(
            method=str(method),
            n_pairs=int(len(group)),
            pairs_structural_zero=int(group["__zero__"].sum()),
            models_all_structural_zero=int(group.groupby("model_id")["__zero__"].all().sum()),
            n_models=int(group["model_id"].nunique()),
        )
        for method, group in counted.groupby("method", sort=True)
    ]
    return pd.DataFrame(
        rows, columns=["method", "n_pairs", "pairs_structural_zero", "models_all_structural_zero", "n_models"]
    )


def structural_zero_statement(counts: pd.DataFrame) -> str:
    """One plain sentence per method with structural zeros, or a sentence saying there are none."""
    parts = []
    for row in counts.itertuples():
        if row.pairs_structural_zero:
            parts.append(
                f"{row.method}: {row.pairs_structural_zero} of {row.n_pairs} (model, prompt) pairs are "
                f"structural zeros ({row.models_all_structural_zero} of {row.n_models} models on every "
                "prompt): image and attention maps bit-identical to the base twin for every seed, so their "
                "disruption is 0 by construction, not by measurement."
            )
    return " ".join(parts) or "No (model, prompt) pair is bit-identical to its base twin: every zero is measured."


def compare_methods(disruption: pd.DataFrame, value: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Family 1: per-method means, Hotelling's T^2 across methods within subjects, pairwise paired t-tests.

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            method, subject_id, prompt_id and ``value``; an optional boolean
            ``structural_zero`` marks pairs bit-identical to the base twin.
        value: metric column, e.g. ``"alignment_drop"``.
        n_boot: bootstrap resamples for the mean CIs (0 skips them).
        seed: seeds the bootstrap (numpy Generator).

    Models whose pairs are all structural zeros enter the means but not the tests (listed in
    ``excluded_structural_zero_models``, said in ``excluded_note``).

    Returns:
        JSON-able dict: ``means`` (records, with structural-zero counts), ``subject_test``
        (Hotelling TestResult dict), ``pairwise`` (records), ``model_means`` (records: subject_id and one
        column per method), ``structural_zeros`` (one sentence), ``subjects`` (counts).

    Raises:
        StatsInputError: missing columns, non-numeric or empty input, or fewer than 2 methods.
    """
    check_positive_int(n_boot, "n_boot", minimum=0)
    require_columns(disruption, ["model_id", "method", "subject_id", "prompt_id", value], "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected rows per (model_id, prompt_id)")
    methods_present = sorted(map(str, disruption["method"].unique()))
    if len(methods_present) < 2:
        raise StatsInputError(f"disruption.method: expected >= 2 methods, got {methods_present}")
    tested, excluded = without_structural_zeros(disruption)
    if tested.empty:
        raise StatsInputError("disruption: every model's pairs are all structural zeros; nothing to compare")
    model_means, counts = subject_method_means(tested, value)
    zeros = structural_zero_counts(disruption)
    means = method_means(disruption, value, n_boot, seed).merge(zeros.drop(columns="n_models"), on="method", how="left")
    return to_jsonable(
        {
            "value": value,
            "means": means,
            "means_method": (
                "mean over prompts of each method's per-prompt mean over its models; 95% CI = "
                f"scipy.stats.bootstrap BCa, {n_boot} resamples of prompts, seed {seed} (conditional on "
                "the models: describes these models, not the method); pairs_structural_zero = pairs "
                "bit-identical to the base twin"
            ),
            "structural_zeros": structural_zero_statement(zeros),
            "excluded_structural_zero_models": excluded,
            "excluded_note": (
                f"{len(excluded)} model(s) whose pairs are all structural zeros are left out of the tests "
                f"({', '.join(excluded)}): their disruption is 0 by construction, so a method test that "
                "counted them would find the difference the design put there"
                if excluded
                else "no model is all structural zeros; every model is tested"
            ),
            "subject_test": subject_hotelling(model_means),
            "pairwise": pairwise_paired_t(model_means),
            "pairwise_method": (
                "paired t-test (two-sided) across subjects on per-model means over shared prompts, "
                "all-structural-zero models excluded; ci = 95% t-interval of the mean difference; "
                "p_holm = Holm over all method pairs (Holm 1979); effect_size = "
                "Cohen's d_z of (method_a - method_b); null rate measured in "
                "benchmarks/stats_validity.py"
            ),
            "model_means": model_means.reset_index(),
            "subjects": {**counts, "subjects_used": int(len(model_means))},
        }
    )
