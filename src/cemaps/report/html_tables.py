"""HTML for the summary's test results and tables, rendered generically.

Any dict with ``test`` and ``p`` is a test row; any list of dicts is a table;
other values are listed as details. So new statistics appear in the report
without report code.

Example:
    >>> html = summary_html({"kruskal": {"test": "kruskal", "statistic": 4.0, "p": 0.01, "effect_size": 0.2,
    ...                                  "effect_size_name": "epsilon_squared", "n": 12, "method": "scipy",
    ...                                  "extra": {}}})
    >>> "kruskal" in html and "<table" in html
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from cemaps.analysis.stats.common import NULL_RATE_VALIDATED, P_HOLM_QUESTION

MAX_TABLE_ROWS = 60
TEST_COLUMNS = ("where", "test", "statistic", "p", "effect size", "n", "method")


def format_number(value: Any) -> str:
    """Numbers to 4 significant digits, tiny p-values in scientific notation, None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def is_test(value: Any) -> bool:
    return isinstance(value, Mapping) and "test" in value and "p" in value


def is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, Mapping) for r in value)


def _cell(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return f"<code>{escape(json.dumps(value, default=str)[:200])}</code>"
    return escape(format_number(value))


def test_rows_html(tests: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One table of test results: where (path in the summary), test, statistic, p, effect size, n, method.

    A p is bold only when the test's null rate is validated (``extra.null_rate_validated``, see
    ``cemaps.analysis.stats.common``) and it survives Holm's correction across its question's tests and
    metrics (``extra.p_holm_question`` < 0.05, shown beside it); any other p is never bold, and one
    without a validated null rate is labelled so.
    """
    rows = []
    for where, test in tests:
        effect = f"{test.get('effect_size_name', '')} = {format_number(test.get('effect_size'))}"
        extra = test.get("extra") or {}
        reason = f"<br><small>{escape(str(extra['reason']))}</small>" if extra.get("reason") else ""
        p = test.get("p")
        validated = extra.get(NULL_RATE_VALIDATED) is True
        adjusted = extra.get(P_HOLM_QUESTION)
        significant = validated and isinstance(adjusted, (int, float)) and math.isfinite(adjusted) and adjusted < 0.05
        label = "" if validated or p is None else ' <small class="unvalidated">(null rate not validated)</small>'
        if validated and isinstance(adjusted, (int, float)):
            label = f" <small>(Holm over the question: {escape(format_number(adjusted))})</small>"
        rows.append(
            f"<tr><td>{escape(where)}</td><td>{escape(str(test.get('test')))}</td>"
            f"<td>{_cell(test.get('statistic'))}</td>"
            f'<td class="{"sig" if significant else ""}">{_cell(p)}{label}</td><td>{escape(effect)}</td>'
            f'<td>{_cell(test.get("n"))}</td><td class="method">{escape(str(test.get("method", "")))}{reason}</td></tr>'
        )
    header = "".join(f"<th>{escape(c)}</th>" for c in TEST_COLUMNS)
    return f'<table class="tests"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def frame_records(frame) -> list[dict]:
    """A DataFrame's rows as dicts for :func:`records_html`, NaN and infinities as None (shown blank)."""
    import numpy as np

    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def records_html(records: Sequence[Mapping[str, Any]], caption: str) -> str:
    """A list of dicts as a table (columns in first-seen order), at most MAX_TABLE_ROWS rows shown."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    shown = records[:MAX_TABLE_ROWS]
    more = (
        f" (first {MAX_TABLE_ROWS} of {len(records)} rows; all in summary.json)"
        if len(records) > MAX_TABLE_ROWS
        else ""
    )
    header = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in shown)
    return (
        f'<table class="records"><caption>{escape(caption)}{escape(more)}</caption>'
        f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"
    )


def _collect(value: Any, path: str, tests: list, tables: list, details: list) -> None:
    if is_test(value):
        tests.append((path, value))
    elif is_table(value):
        tables.append((path, value))
    elif isinstance(value, Mapping):
        for key, child in value.items():
            _collect(child, f"{path}.{key}" if path else str(key), tests, tables, details)
    elif isinstance(value, list):
        kind = "numbers" if value and all(isinstance(v, (int, float)) for v in value) else "items"
        text = ", ".join(map(format_number, value)) if len(value) <= 8 else f"{len(value)} {kind}"
        details.append((path, text))
    else:
        details.append((path, format_number(value)))


def summary_html(section: Mapping[str, Any]) -> str:
    """A summary section (nested dicts from ``cemaps.analysis.stats_*``) as test table, tables and details."""
    tests: list[tuple[str, Mapping[str, Any]]] = []
    tables: list[tuple[str, list]] = []
    details: list[tuple[str, str]] = []
    _collect(section, "", tests, tables, details)
    parts = []
    if tests:
        parts.append(test_rows_html(tests))
    parts += [records_html(records, path) for path, records in tables]
    if details:
        items = "".join(f"<dt>{escape(path)}</dt><dd>{escape(text)}</dd>" for path, text in details)
        parts.append(f"<details><summary>Details ({len(details)})</summary><dl>{items}</dl></details>")
    return "\n".join(parts) or '<p class="note">No results in this section.</p>'
