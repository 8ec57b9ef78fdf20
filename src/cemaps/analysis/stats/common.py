"""Shared pieces of the statistics families: the result type, input checks,
multiple-comparison corrections, effect sizes and JSON conversion.

Every family (``stats_methods``, ``stats_abstractness``, ``stats_semantic``,
``stats_layers``, ``stats_clustering``) returns a plain dict that ``json.dumps``
accepts, built from :class:`TestResult` records and tables.

Example:
    >>> r = TestResult(test="kruskal", statistic=3.2, p=0.2, effect_size=0.01,
    ...                effect_size_name="epsilon_squared", n=60, method="scipy.stats.kruskal")
    >>> r.to_dict()["p"]
    0.2
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.errors import ConfigError

NULL_RATE_VALIDATED = "null_rate_validated"
"""Key of ``TestResult.extra``: True when the test's rejection rate at alpha 0.05 is measured in [0.03, 0.07]
under the realistic nulls of ``benchmarks/stats_validity.py`` (table in docs/statistics.md). The report bolds a
p-value only for such tests, and only when it survives Holm's correction across its question (``P_HOLM_QUESTION``)."""

P_HOLM_QUESTION = "p_holm_question"
"""Key of ``TestResult.extra`` set by ``run_statistics``: the p-value Holm-adjusted over every validated test of
its question, across metrics."""


STRUCTURAL_ZERO = "structural_zero"
"""Column of a disruption table: True where the pair's image and attention maps are bit-identical to the base
twin for every seed (its disruption is 0 by construction; ``cemaps.analysis.disruption``)."""


class StatsInputError(ConfigError, ValueError):
    """A table handed to a statistics function lacks columns, rows or structure it needs (a ConfigError)."""


@dataclass(frozen=True)
class TestResult:
    """One statistical test, with everything a reader needs to judge it.

    Attributes:
        test: short name of the test, e.g. ``"kruskal"``.
        statistic: the test statistic (None when not computable).
        p: p-value as computed (uncorrected unless ``method`` says otherwise).
        effect_size: the effect size named by ``effect_size_name``.
        effect_size_name: e.g. ``"kendall_w"``, ``"rank_biserial"``.
        n: number of independent units the test used (blocks, prompts, pairs...).
        method: exactly what was computed, in words a reviewer can check.
        extra: further numbers (JSON-able after :func:`to_jsonable`).
    """

    __test__ = False  # not a pytest test class despite its name

    test: str
    statistic: float | None
    p: float | None
    effect_size: float | None
    effect_size_name: str
    n: int
    method: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: Python scalars only, NaN and inf -> None."""
        return {
            "test": self.test,
            "statistic": to_jsonable(self.statistic),
            "p": to_jsonable(self.p),
            "effect_size": to_jsonable(self.effect_size),
            "effect_size_name": self.effect_size_name,
            "n": int(self.n),
            "method": self.method,
            "extra": to_jsonable(dict(self.extra)),
        }


def to_jsonable(obj: Any) -> Any:
    """Converts results, tables and numpy values into what ``json.dumps`` accepts.

    DataFrames become lists of records, arrays nested lists, numpy scalars Python
    scalars, and non-finite floats None (JSON has no NaN).
    """
    if isinstance(obj, TestResult):
        return obj.to_dict()
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(rec) for rec in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)


def require_columns(table: pd.DataFrame, columns: Iterable[str], table_name: str) -> None:
    """Raises StatsInputError naming the missing columns of ``table_name``."""
    if not isinstance(table, pd.DataFrame):
        raise StatsInputError(f"{table_name}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise StatsInputError(f"{table_name}: missing column(s) {missing}; has {list(map(str, table.columns))}")


def require_numeric(table: pd.DataFrame, column: str, table_name: str) -> np.ndarray:
    """Returns ``table[column]`` as float64, raising if it is not numeric or holds NaN/inf."""
    series = table[column]
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise StatsInputError(f"{table_name}.{column}: expected numeric values, got dtype {series.dtype}")
    values = series.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad = int(np.sum(~np.isfinite(values)))
        raise StatsInputError(f"{table_name}.{column}: {bad} value(s) are NaN or infinite; expected finite numbers")
    return values


def require_constant_within(table: pd.DataFrame, key: str, column: str, table_name: str) -> pd.Series:
    """Returns the one ``column`` value of each ``key``; raises if a key has several."""
    counts = table.groupby(key, sort=True)[column].nunique(dropna=False)
    bad = counts[counts > 1]
    if len(bad):
        raise StatsInputError(
            f"{table_name}: {column} must be constant within each {key}; "
            f"{key}={bad.index[0]!r} has {int(bad.iloc[0])} different values"
        )
    return table.groupby(key, sort=True)[column].first()


def structural_zero_models(disruption: pd.DataFrame) -> list[str]:
    """Models whose every (model, prompt) pair is a structural zero, sorted; [] without the column.

    Such a model (Textual Inversion on prompts without its token) computes exactly what the base
    model computes: its disruption is 0 by construction, so a test that counts it compares a
    constant with measurements and finds "a difference" that the design put there.
    """
    if STRUCTURAL_ZERO not in disruption.columns or disruption.empty:
        return []
    zero = disruption[STRUCTURAL_ZERO].fillna(False).astype(bool)
    every = zero.groupby(disruption["model_id"].astype(str)).all()
    return sorted(every.index[every.to_numpy()])


def without_structural_zeros(disruption: pd.DataFrame, pairs: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """``disruption`` without its all-structural-zero models (and, with ``pairs``, without any structural-zero pair).

    Returns:
        (the remaining rows, the excluded model ids).
    """
    excluded = structural_zero_models(disruption)
    keep = ~disruption["model_id"].astype(str).isin(excluded)
    if pairs and STRUCTURAL_ZERO in disruption.columns:
        keep &= ~disruption[STRUCTURAL_ZERO].fillna(False).astype(bool)
    return disruption[keep.to_numpy()], excluded


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, NaN entries left NaN.

    adj p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the m finite p-values sorted
    ascending; equals statsmodels ``multipletests(method="holm")`` (checked in the tests), which
    is not called here because it runs ``gc.collect()`` on every call (0.1-0.2 s in a big process).
    """
    return _adjust(p_values, "holm")


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg (1995) q-values, NaN entries left NaN.

    q_(i) = min_{j >= i} min(1, m p_(j) / j); equals ``scipy.stats.false_discovery_control``.
    """
    return _adjust(p_values, "fdr_bh")


def _adjust(p_values: Sequence[float], how: str) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    sorted_p = p[order]
    if how == "holm":
        values = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * sorted_p))
    else:
        values = np.minimum.accumulate((m * sorted_p / np.arange(1, m + 1))[::-1])[::-1]
        values = np.minimum(values, 1.0)
    adjusted[order] = values
    return adjusted


def rank_biserial_paired(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014) of paired differences.

    Zero differences are dropped, as in ``scipy.stats.wilcoxon(zero_method="wilcox")``;
    r = (R+ - R-) / (R+ + R-) over the ranks of |d|. +1: every pair favours x.

    Args:
        differences: [n_pairs] x - y.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def rank_biserial_independent(u_statistic: float, n_x: int, n_y: int) -> float:
    """Rank-biserial correlation from the Mann-Whitney U of x: 2U/(n_x n_y) - 1.

    Equals P(X > Y) - P(X < Y); +1 when every x exceeds every y.
    """
    return float(2.0 * u_statistic / (n_x * n_y) - 1.0)


def permutation_p_greater(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided Monte-Carlo permutation p-value, (1 + #{null >= observed}) / (1 + B).

    The +1 counts the observed arrangement, which keeps the test exact
    (Phipson & Smyth 2010). A relative tolerance treats floating-point ties as ties,
    as ``scipy.stats.permutation_test`` does.

    Args:
        observed: [...] observed statistics.
        null: [B, ...] statistics under B random permutations.
    """
    observed = np.asarray(observed, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    tolerance = 1e-12 * np.maximum(1.0, np.abs(observed))
    hits = (null >= observed - tolerance).sum(axis=0)
    return (1.0 + hits) / (1.0 + null.shape[0])


def permutation_p_two_sided(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Two-sided Monte-Carlo permutation p-value on |statistic| (null centred at 0)."""
    return permutation_p_greater(np.abs(observed), np.abs(null))


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    """Raises StatsInputError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise StatsInputError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """Raises StatsInputError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise StatsInputError(f"{name}={value!r}: expected one of {list(choices)}")
    return value


def inverted_interval(
    observed: float, null: np.ndarray, signal: float, signal_null: np.ndarray, exact: bool, level: float = 0.95
) -> tuple[float, float]:
    """Interval for the planted own-domain effect delta by inverting the arrangement test (Lehmann 1986, 3.5).

    Under an effect delta, every arrangement's statistic is T_b - delta g_b (g_b: what a unit effect adds
    to arrangement b's statistic, g the observed one's). The interval holds every delta at which
    neither one-sided test rejects at (1 - level) / 2, so it agrees with the test by construction:
    with few arrangements it is unbounded (the design cannot bound the effect).

    Args:
        observed, null: T and [B] T_b. signal, signal_null: g and [B] g_b.
    """
    gap, excess = signal - signal_null, observed - null  # T_b(delta) >= T(delta)  <=>  delta * gap >= excess
    flat = np.isclose(gap, 0.0, atol=1e-12 * max(1.0, abs(signal)))
    cuts = np.where(flat, np.nan, excess / np.where(flat, 1.0, gap))
    candidates = np.unique(cuts[np.isfinite(cuts)])
    if candidates.size == 0:
        return float("-inf"), float("inf")
    spread = max(1.0, float(np.ptp(candidates)))
    points = np.concatenate([[candidates[0] - spread], candidates, [candidates[-1] + spread]])
    rising, falling = cuts[~flat & (gap > 0)], cuts[~flat & (gap < 0)]
    rising.sort()
    falling.sort()
    # count of T_b(delta) >= T(delta), and of T_b(delta) <= T(delta), at every point
    at_least = (
        np.sum(flat & (excess <= 0))
        + np.searchsorted(rising, points, side="right")
        + (falling.size - np.searchsorted(falling, points, side="left"))
    )
    at_most = (
        np.sum(flat & (excess >= 0))
        + (rising.size - np.searchsorted(rising, points, side="left"))
        + np.searchsorted(falling, points, side="right")
    )
    size = null.size
    to_p = (lambda c: c / size) if exact else (lambda c: (1 + c) / (1 + size))
    tail = (1 - level) / 2
    kept = points[(to_p(at_least) > tail) & (to_p(at_most) > tail)]
    if kept.size == 0:
        return float("nan"), float("nan")
    low = float("-inf") if kept[0] == points[0] else float(kept[0])
    high = float("inf") if kept[-1] == points[-1] else float(kept[-1])
    return low, high
