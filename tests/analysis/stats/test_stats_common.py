"""TestResult serialisation, JSON conversion, corrections, effect sizes, input checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cemaps.analysis.stats.common import (
    StatsInputError,
    TestResult,
    benjamini_hochberg,
    check_choice,
    check_positive_int,
    holm,
    permutation_p_greater,
    rank_biserial_independent,
    rank_biserial_paired,
    require_columns,
    require_constant_within,
    require_numeric,
    to_jsonable,
)
from cemaps.errors import CemapsError


def test_test_result_to_dict_is_json_with_numpy_and_nan_converted():
    result = TestResult(
        test="t",
        statistic=np.float32(1.5),
        p=float("nan"),
        effect_size=np.float64(np.inf),
        effect_size_name="r",
        n=np.int64(7),
        method="m",
        extra={"a": np.arange(3), "b": pd.DataFrame({"x": [1.0, np.nan]}), "c": np.bool_(True)},
    )
    as_dict = result.to_dict()
    assert as_dict["statistic"] == 1.5 and as_dict["p"] is None and as_dict["effect_size"] is None
    assert as_dict["n"] == 7 and type(as_dict["n"]) is int
    assert as_dict["extra"] == {"a": [0, 1, 2], "b": [{"x": 1.0}, {"x": None}], "c": True}
    json.dumps(as_dict, allow_nan=False)


def test_test_result_is_frozen():
    result = TestResult("t", 1.0, 0.5, 0.1, "r", 3, "m")
    with pytest.raises(AttributeError):
        result.p = 0.1  # type: ignore[misc]


def test_to_jsonable_handles_nested_results_and_tables():
    nested = {
        "r": TestResult("t", 1.0, 0.5, None, "none", 3, "m"),
        "t": pd.DataFrame({"k": ["a"], "v": [np.int32(2)]}),
        "tuple": (np.float64(1.0), None),
    }
    out = to_jsonable(nested)
    assert out["r"]["p"] == 0.5 and out["t"] == [{"k": "a", "v": 2}] and out["tuple"] == [1.0, None]
    json.dumps(out, allow_nan=False)


def test_holm_and_bh_match_statsmodels_and_keep_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03])
    finite = p[np.isfinite(p)]
    np.testing.assert_allclose(holm(p)[[0, 1, 3]], multipletests(finite, method="holm")[1])
    np.testing.assert_allclose(benjamini_hochberg(p)[[0, 1, 3]], stats.false_discovery_control(finite))
    ties = np.array([0.01, 0.04, 0.04, 0.2, 0.01, 0.9])
    np.testing.assert_allclose(holm(ties), multipletests(ties, method="holm")[1])
    np.testing.assert_allclose(benjamini_hochberg(ties), stats.false_discovery_control(ties))
    assert math.isnan(holm(p)[2]) and math.isnan(benjamini_hochberg(p)[2])
    assert np.all(np.isnan(holm([np.nan])))


def test_rank_biserial_paired_signs_and_zero_handling():
    assert rank_biserial_paired(np.array([1.0, 2.0, 3.0])) == 1.0
    assert rank_biserial_paired(np.array([-1.0, -2.0, 0.0])) == -1.0
    # ranks of |d| = 1, 2, 3 -> (3 + 1 - 2) / 6
    assert rank_biserial_paired(np.array([1.0, -2.0, 3.0])) == pytest.approx(2 / 6)
    assert math.isnan(rank_biserial_paired(np.zeros(4)))


def test_rank_biserial_independent_from_scipy_u():
    x, y = np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 3.5])
    u = stats.mannwhitneyu(x, y).statistic  # pairs x > y: 8 of 9
    assert rank_biserial_independent(u, 3, 3) == pytest.approx(2 * 8 / 9 - 1)


def test_permutation_p_counts_observed_and_ties():
    null = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert permutation_p_greater(np.array([2.0]), null)[0] == pytest.approx(3 / 5)
    assert permutation_p_greater(np.array([9.0]), null)[0] == pytest.approx(1 / 5)


def test_require_columns_names_missing_columns_and_table():
    with pytest.raises(StatsInputError, match=r"disruption: missing column\(s\) \['value'\]"):
        require_columns(pd.DataFrame({"a": [1]}), ["a", "value"], "disruption")
    with pytest.raises(StatsInputError, match="expected a pandas DataFrame"):
        require_columns({"a": [1]}, ["a"], "disruption")  # type: ignore[arg-type]


def test_require_numeric_rejects_text_bool_and_nan():
    with pytest.raises(StatsInputError, match=r"d\.v: expected numeric"):
        require_numeric(pd.DataFrame({"v": ["x"]}), "v", "d")
    with pytest.raises(StatsInputError, match="expected numeric"):
        require_numeric(pd.DataFrame({"v": [True]}), "v", "d")
    with pytest.raises(StatsInputError, match="1 value\\(s\\) are NaN"):
        require_numeric(pd.DataFrame({"v": [1.0, np.nan]}), "v", "d")


def test_require_constant_within_names_offending_key():
    table = pd.DataFrame({"prompt_id": ["a", "a", "b"], "domain": ["x", "y", "z"]})
    with pytest.raises(StatsInputError, match="prompt_id='a' has 2 different values"):
        require_constant_within(table, "prompt_id", "domain", "d")


def test_argument_checks_and_error_hierarchy():
    with pytest.raises(StatsInputError, match="n_perm=0: expected an integer >= 1"):
        check_positive_int(0, "n_perm")
    with pytest.raises(StatsInputError):
        check_positive_int(True, "n_perm")
    with pytest.raises(StatsInputError, match="unit='model': expected one of"):
        check_choice("model", "unit", ("prompt", "pair"))
    assert issubclass(StatsInputError, CemapsError)
