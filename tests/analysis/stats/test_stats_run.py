"""run_statistics on a table from anywhere: Holm per question, findings as sentences, power, bad input; the report
bolds only what survives."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cemaps.analysis import run_statistics
from cemaps.analysis.stats.common import StatsInputError, holm
from cemaps.report.html_tables import test_rows_html as rows_html

DOMAINS = ("faces", "objects", "styles")


def table(seed: int = 0, abstract_effect: float = 0.0, zero_method: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    prompt = rng.normal(size=18)
    rows = []
    for method in ("lora", "dreambooth", "textual_inversion"):
        for s in range(6):
            level = rng.normal(0, 0.5)
            for p in range(18):
                zero = zero_method and method == "textual_inversion"
                value = 0.0 if zero else level + prompt[p] + rng.normal(0, 0.3) + abstract_effect * (p % 2)
                rows.append(
                    dict(
                        model_id=f"{method}-{s}",
                        method=method,
                        subject_id=f"s{s}",
                        subject_domain=DOMAINS[s % 3],
                        prompt_id=f"p{p:02d}",
                        abstractness=("concrete", "abstract")[p % 2],
                        domain=DOMAINS[p % 3],
                        alignment_drop=value,
                        image_drift=value * 0.5 + rng.normal(0, 0.1) * (not zero),
                        structural_zero=zero,
                    )
                )
    return pd.DataFrame(rows)


def test_holm_runs_across_each_questions_tests_and_metrics():
    summary = run_statistics(table(abstract_effect=1.0), n_perm=199, power_sims=100)
    tests = [
        summary["abstractness"][metric][key]
        for metric in ("alignment_drop", "image_drift")
        for key in ("kruskal", "prompt_anova")
    ]
    tests = [t if "p" in t else t["test"] for t in tests]
    expected = holm([t["p"] for t in tests])
    assert [t["extra"]["p_holm_question"] for t in tests] == pytest.approx(list(expected))
    finding = summary["abstractness"]["findings"][0]
    assert finding.startswith("alignment_drop: abstractness classes differ") and "95% CI" in finding
    assert summary["abstractness"]["findings"][1].startswith("This design detects, with 80% power at alpha 0.0125")
    json.dumps(summary, allow_nan=False)


def test_structural_zero_models_are_left_out_and_said():
    summary = run_statistics(table(), n_perm=99, power_sims=100)
    methods = summary["methods"]["alignment_drop"]
    assert methods["excluded_structural_zero_models"] == [f"textual_inversion-{s}" for s in range(6)]
    assert "6 all-structural-zero model(s) left out" in summary["methods"]["findings"][0]
    assert "the data do not show that methods differ" in summary["methods"]["findings"][0]
    apart = summary["clustering"]["alignment_drop"]["models"]["set_apart"]
    assert len(apart) == 6 and summary["clustering"]["alignment_drop"]["prompts"]["agreement"]
    assert summary["power"]["alignment_drop"]["components"]["source"].startswith("estimated from this study")


def test_unlabelled_prompts_skip_the_questions_that_need_labels():
    summary = run_statistics(table().drop(columns=["abstractness", "domain"]), n_perm=99, power_sims=100)
    assert "no 'abstractness' labels" in summary["abstractness"]["alignment_drop"]["not_computed"]
    assert "no 'domain' labels" in summary["semantic_proximity"]["image_drift"]["not_computed"]
    assert summary["methods"]["alignment_drop"]["subject_test"]["p"] is not None


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (table().drop(columns="method"), {}, r"missing column\(s\) \['method'\]"),
        (table().iloc[:0], {}, "table is empty"),
        (table().drop(columns=["alignment_drop", "image_drift"]), {}, "no metric column"),
        (table(), {"metrics": ["clip"]}, r"missing column\(s\) \['clip'\]"),
        (pd.concat([table(), table().iloc[:1]]), {}, "must be unique"),
        (table(), {"n_perm": 0}, "n_perm=0"),
    ],
)
def test_bad_input_raises_one_line_error(data, kwargs, message):
    with pytest.raises(StatsInputError, match=message) as info:
        run_statistics(data, **kwargs)
    assert "\n" not in str(info.value)


def test_report_bolds_only_tests_that_survive_holm_over_the_question():
    base = {"test": "t", "statistic": 1.0, "effect_size": 0.1, "effect_size_name": "d", "n": 5, "method": "m"}
    survives = {**base, "p": 0.01, "extra": {"null_rate_validated": True, "p_holm_question": 0.03}}
    falls = {**base, "p": 0.01, "extra": {"null_rate_validated": True, "p_holm_question": 0.2}}
    unvalidated = {**base, "p": 0.001, "extra": {}}
    html = rows_html([("a", survives), ("b", falls), ("c", unvalidated)])
    cells = html.split("<tr>")[1:]
    assert 'class="sig"' in cells[1] and 'class="sig"' not in cells[2] and 'class="sig"' not in cells[3]
    assert "Holm over the question: 0.2" in cells[2] and "null rate not validated" in cells[3]
