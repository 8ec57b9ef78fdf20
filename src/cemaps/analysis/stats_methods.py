"""Family 1: do personalization methods differ in how much they disrupt?

Blocks are (subject_id, prompt_id): each subject is personalized once per
method, and every model sees every prompt, so the methods are repeated measures
within a block. Friedman tests all methods at once; Wilcoxon signed-rank tests
each pair on the same blocks.

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"{m}-{s}", method=m, subject_id=s, prompt_id=p,
    ...              alignment_drop=float(i % 5) + (m == "lora"))
    ...         for i, (m, s, p) in enumerate((m, s, p) for m in ("lora", "ti", "db")
    ...                                       for s in "ab" for p in range(6))]
    >>> out = compare_methods(pd.DataFrame(rows), "alignment_drop", n_boot=0)
    >>> out["friedman"]["n"]
    12
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats_common import (
    StatsInputError,
    TestResult,
    check_positive_int,
    holm,
    rank_biserial_paired,
    require_columns,
    require_numeric,
    to_jsonable,
)

BLOCK = ["subject_id", "prompt_id"]


def method_blocks(disruption: pd.DataFrame, value: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Complete-block table of ``value``: one row per (subject_id, prompt_id), one column per method.

    Several models for the same (subject, method, prompt) are averaged into one
    cell (the reference design has one). Blocks lacking any method are dropped.

    Returns:
        (table [n_blocks x n_methods], counts) with counts ``blocks_total``,
        ``blocks_dropped_incomplete`` and ``cells_averaged_over_models``.
    """
    require_columns(disruption, ["model_id", "method", *BLOCK, value], "disruption")
    require_numeric(disruption, value, "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected rows per (model_id, prompt_id)")
    cell_sizes = disruption.groupby([*BLOCK, "method"], sort=True)[value].size()
    table = disruption.pivot_table(index=BLOCK, columns="method", values=value, aggfunc="mean", sort=True)
    complete = table.dropna(axis=0, how="any")
    counts = {
        "blocks_total": int(len(table)),
        "blocks_dropped_incomplete": int(len(table) - len(complete)),
        "cells_averaged_over_models": int((cell_sizes > 1).sum()),
    }
    complete.columns = [str(c) for c in complete.columns]
    return complete, counts


def friedman_test(blocks: pd.DataFrame) -> TestResult:
    """Friedman chi-square across the method columns of a complete-block table.

    Kendall's W = chi2 / (n (k - 1)) is the effect size (0: no agreement among
    blocks on the method ranking, 1: every block ranks methods the same).

    Args:
        blocks: [n_blocks x k_methods] complete table from :func:`method_blocks`.
    """
    n, k = blocks.shape
    method_text = (
        "scipy.stats.friedmanchisquare over methods, blocks = (subject_id, prompt_id), "
        "models of the same cell averaged; Kendall's W = chi2 / (n_blocks (k - 1))"
    )
    if k < 3 or n < 2:
        return TestResult(
            test="friedman", statistic=None, p=None, effect_size=None, effect_size_name="kendall_w",
            n=int(n), method=method_text,
            extra={"computable": False, "reason": f"needs >= 3 methods and >= 2 complete blocks; has {k} and {n}"},
        )
    chi2, p = stats.friedmanchisquare(*(blocks[c].to_numpy() for c in blocks.columns))
    return TestResult(
        test="friedman", statistic=float(chi2), p=float(p), effect_size=float(chi2 / (n * (k - 1))),
        effect_size_name="kendall_w", n=int(n), method=method_text,
        extra={"k_methods": int(k), "methods": list(blocks.columns), "computable": True},
    )


def pairwise_wilcoxon(blocks: pd.DataFrame) -> pd.DataFrame:
    """Two-sided Wilcoxon signed-rank for every pair of method columns, Holm-corrected.

    Zero differences are dropped (``zero_method="wilcox"``). Effect size: the
    matched-pairs rank-biserial correlation of (a - b); positive means a > b.

    Returns:
        One row per pair: method_a, method_b, statistic, p, p_holm, effect_size,
        effect_size_name, n, mean_difference, median_difference.
    """
    rows: list[dict[str, Any]] = []
    for a, b in combinations(blocks.columns, 2):
        diff = blocks[a].to_numpy() - blocks[b].to_numpy()
        if np.count_nonzero(diff) == 0:
            statistic, p = float("nan"), float("nan")
        else:
            result = stats.wilcoxon(blocks[a].to_numpy(), blocks[b].to_numpy(), zero_method="wilcox",
                                    alternative="two-sided")
            statistic, p = float(result.statistic), float(result.pvalue)
        rows.append(dict(method_a=a, method_b=b, statistic=statistic, p=p,
                         effect_size=rank_biserial_paired(diff), effect_size_name="rank_biserial",
                         n=int(diff.size), mean_difference=float(diff.mean()),
                         median_difference=float(np.median(diff))))
    table = pd.DataFrame(rows, columns=["method_a", "method_b", "statistic", "p", "effect_size",
                                        "effect_size_name", "n", "mean_difference", "median_difference"])
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
            ci = stats.bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=0.95,
                                 method="BCa", rng=rng, vectorized=True).confidence_interval
            low, high = float(ci.low), float(ci.high)
        rows.append(dict(method=str(method), mean=float(values.mean()), ci_low=low, ci_high=high,
                         n_prompts=int(values.size), n_models=int(group["model_id"].nunique())))
    return pd.DataFrame(rows, columns=["method", "mean", "ci_low", "ci_high", "n_prompts", "n_models"])


def compare_methods(disruption: pd.DataFrame, value: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Family 1: per-method means, Friedman across methods, pairwise Wilcoxon.

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            method, subject_id, prompt_id and ``value``.
        value: metric column, e.g. ``"alignment_drop"``.
        n_boot: bootstrap resamples for the mean CIs (0 skips them).
        seed: seeds the bootstrap (numpy Generator).

    Returns:
        JSON-able dict: ``means`` (records), ``friedman`` (TestResult dict),
        ``pairwise`` (records), ``blocks`` (counts of kept/dropped blocks).
    """
    check_positive_int(n_boot, "n_boot", minimum=0)
    blocks, counts = method_blocks(disruption, value)
    if blocks.shape[1] < 2:
        raise StatsInputError(
            f"disruption.method: expected >= 2 methods with complete blocks, got {list(blocks.columns)}"
        )
    means = method_means(disruption, value, n_boot, seed)
    return to_jsonable({
        "value": value,
        "means": means,
        "means_method": ("mean over prompts of each method's per-prompt mean over its models; 95% CI = "
                         f"scipy.stats.bootstrap BCa, {n_boot} resamples of prompts, seed {seed}"),
        "friedman": friedman_test(blocks),
        "pairwise": pairwise_wilcoxon(blocks),
        "pairwise_method": ("scipy.stats.wilcoxon two-sided, zero differences dropped, on the Friedman blocks; "
                            "p_holm = Holm over all method pairs (statsmodels multipletests); "
                            "effect_size = matched-pairs rank-biserial of (method_a - method_b)"),
        "blocks": {**counts, "blocks_used": int(len(blocks))},
    })
