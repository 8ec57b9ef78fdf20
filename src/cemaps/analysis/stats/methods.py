"""Family 1: do personalization methods differ in how much they disrupt?

A method is a property of a model, and every model has its own level of
disruption (its subject, its training run), shared by all its prompts. The
(model, prompt) pairs of one model are therefore not replicates of its method:
with 3 subjects x 3 methods, 24 prompts, model effects of SD 0.5 and noise of
SD 0.3, a Friedman test over (subject, prompt) blocks rejects a true null in
85% of simulations. The replicates of a method are its subjects. Each model is
reduced to its mean over the prompts that every model has (a prompt effect
shared by all models then cancels), and methods are compared within subjects:
a two-way ANOVA without replication (subjects as blocks) across all methods,
and paired t-tests across subjects for each pair, Holm-corrected. Both are
exact under normal model effects; their null rates and power are measured in
``tests/analysis/stats/test_stats_validity.py``. With few subjects the test has
little power: that is the honest size of the evidence.

Records whose image and attention maps are bit-identical to the base twin
(``structural_zero``, e.g. Textual Inversion on prompts without its token)
have disruption 0 by construction; they are counted per method.

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"{m}-{s}", method=m, subject_id=s, prompt_id=p,
    ...              alignment_drop=float(p % 3) + (m == "lora") + 0.1 * (s == "b") * (m == "db"))
    ...         for m in ("lora", "ti", "db") for s in "abc" for p in range(6)]
    >>> out = compare_methods(pd.DataFrame(rows), "alignment_drop", n_boot=0)
    >>> out["subject_anova"]["n"], out["subject_anova"]["p"] < 0.05
    (3, True)
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
    check_positive_int,
    holm,
    require_columns,
    require_numeric,
    to_jsonable,
)

STRUCTURAL_ZERO = "structural_zero"


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


def subject_blocked_anova(means: pd.DataFrame) -> TestResult:
    """Two-way ANOVA without replication on model means: methods within subjects (subjects as blocks).

    F = MS_method / MS_residual with (k - 1, (s - 1)(k - 1)) df, the randomized
    complete block design of Fisher (1935) / repeated-measures ANOVA; exact when
    model effects are normal and exchangeable across methods within a subject.
    Effect size: partial eta^2 = SS_method / (SS_method + SS_residual).

    Args:
        means: [n_subjects x k_methods] from :func:`subject_method_means`.
    """
    s, k = means.shape
    text = (
        "two-way ANOVA without replication on per-model means over shared prompts: F = MS_method / "
        "MS_residual(subject x method), df (k - 1, (s - 1)(k - 1)), subjects as blocks (scipy.stats.f); "
        "partial eta^2 = SS_method / (SS_method + SS_residual); null rate measured in "
        "tests/analysis/stats/test_stats_validity.py"
    )
    x = means.to_numpy(dtype=np.float64)
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    ss_method = float(s * np.sum((x.mean(axis=0) - x.mean()) ** 2))
    ss_residual = float(np.sum(residual**2))
    if k < 2 or s < 2 or ss_residual <= 1e-12 * max(1.0, ss_method):
        reason = (
            f"needs >= 2 methods and >= 2 subjects with every method; has {k} and {s}"
            if k < 2 or s < 2
            else "model means have no residual variation (subject x method) to test against"
        )
        return TestResult(
            test="subject_blocked_anova",
            statistic=None,
            p=None,
            effect_size=None,
            effect_size_name="partial_eta_squared",
            n=int(s),
            method=text,
            extra={"computable": False, "reason": reason, "methods": list(means.columns)},
        )
    df_method, df_residual = k - 1, (s - 1) * (k - 1)
    f_value = (ss_method / df_method) / (ss_residual / df_residual)
    return TestResult(
        test="subject_blocked_anova",
        statistic=float(f_value),
        p=float(stats.f.sf(f_value, df_method, df_residual)),
        effect_size=float(ss_method / (ss_method + ss_residual)),
        effect_size_name="partial_eta_squared",
        n=int(s),
        method=text,
        extra={
            "computable": True,
            NULL_RATE_VALIDATED: True,
            "k_methods": int(k),
            "n_subjects": int(s),
            "df": [df_method, df_residual],
            "methods": list(means.columns),
        },
    )


def pairwise_paired_t(means: pd.DataFrame) -> pd.DataFrame:
    """Two-sided paired t-test across subjects for every pair of methods, on model means; Holm-corrected.

    Effect size: Cohen's d_z = mean(a - b) / sd(a - b) over subjects; positive means a > b.

    Returns:
        One row per pair: method_a, method_b, statistic, p, p_holm, effect_size,
        effect_size_name, n (subjects), mean_difference.
    """
    rows: list[dict[str, Any]] = []
    for a, b in combinations(means.columns, 2):
        diff = means[a].to_numpy() - means[b].to_numpy()
        sd = float(np.std(diff, ddof=1)) if diff.size > 1 else float("nan")
        statistic = p = effect = float("nan")
        if diff.size > 1 and sd > 0:
            statistic = float(diff.mean() / (sd / np.sqrt(diff.size)))
            p = float(2.0 * stats.t.sf(abs(statistic), diff.size - 1))
            effect = float(diff.mean() / sd)
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
            )
        )
    table = pd.DataFrame(
        rows,
        columns=["method_a", "method_b", "statistic", "p", "effect_size", "effect_size_name", "n", "mean_difference"],
    )
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
    """Family 1: per-method means, subject-blocked ANOVA across methods, pairwise paired t-tests.

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            method, subject_id, prompt_id and ``value``; an optional boolean
            ``structural_zero`` marks pairs bit-identical to the base twin.
        value: metric column, e.g. ``"alignment_drop"``.
        n_boot: bootstrap resamples for the mean CIs (0 skips them).
        seed: seeds the bootstrap (numpy Generator).

    Returns:
        JSON-able dict: ``means`` (records, with structural-zero counts), ``subject_anova``
        (TestResult dict), ``pairwise`` (records), ``model_means`` (records: subject_id and one
        column per method), ``structural_zeros`` (one sentence), ``subjects`` (counts).

    Raises:
        StatsInputError: missing columns, non-numeric or empty input, or fewer than 2 methods.
    """
    check_positive_int(n_boot, "n_boot", minimum=0)
    model_means, counts = subject_method_means(disruption, value)
    methods_present = sorted(map(str, disruption["method"].unique()))
    if len(methods_present) < 2:
        raise StatsInputError(f"disruption.method: expected >= 2 methods, got {methods_present}")
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
            "subject_anova": subject_blocked_anova(model_means),
            "pairwise": pairwise_paired_t(model_means),
            "pairwise_method": (
                "paired t-test (two-sided) across subjects on per-model means over shared prompts; "
                "p_holm = Holm over all method pairs (Holm 1979); effect_size = "
                "Cohen's d_z of (method_a - method_b); null rate measured in "
                "tests/analysis/stats/test_stats_validity.py"
            ),
            "model_means": model_means.reset_index(),
            "subjects": {**counts, "subjects_used": int(len(model_means))},
        }
    )
