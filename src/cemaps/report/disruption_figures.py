"""Figures about how much each model disrupts each prompt: the CEM heat map, methods,
abstractness classes, and semantic similarity.

Every function takes DataFrames (as read from a results folder) and returns a
:class:`matplotlib.figure.Figure`; nothing is written to disk here.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"method": ["lora", "lora", "ti", "ti"], "alignment_drop": [1.0, 2.0, 0.1, 0.3]})
    >>> fig = method_disruption(table, "alignment_drop")
    >>> fig.axes[0].get_ylabel()
    'alignment_drop'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from cemaps.analysis.stats.common import P_HOLM_QUESTION
from cemaps.errors import ConfigError
from cemaps.report import style
from cemaps.report.results import require_table

ALPHA = 0.05  # what the report calls significant, after Holm over the question
PROMPT_LABEL_CHARS = 28  # issue 25: a prompt's text, cut with an ellipsis, where one label per prompt fits
PROMPT_LABEL_PT = 10.0  # axis points per column that one rotated label at the tick size needs
PROMPT_LABEL_IN = 1.7  # extra figure height for the rotated text labels (28 characters at 8 pt)
CEM_MARGIN_IN = 2.6  # figure width the model labels and the colour bar take
CEM_ROW_LEVELS = ("method", "subject_id", "model_id")
CEM_COLUMN_LEVELS = ("abstractness", "domain", "prompt_id")


def group_spans(labels: Sequence[Any]) -> list[tuple[Any, int, int]]:
    """Runs of equal consecutive labels as (label, start, stop)."""
    spans: list[tuple[Any, int, int]] = []
    for i, label in enumerate(labels):
        if spans and spans[-1][0] == label:
            spans[-1] = (label, spans[-1][1], i + 1)
        else:
            spans.append((label, i, i + 1))
    return spans


def format_p(p: float | None) -> str:
    """p-values as a reader expects them: 3 significant digits, '< 0.001' below that."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


# The colour bar's label: what the number is and its unit (cemaps.analysis.disruption's definitions).
METRIC_UNITS = {
    "alignment_drop": "alignment drop (CLIPScore points, base - personalized)",
    "image_drift": "image drift (1 - cosine of CLIP image embeddings)",
}


def prompt_label(text: str, limit: int = PROMPT_LABEL_CHARS) -> str:
    """A prompt's text as an axis label: whitespace collapsed, cut to ``limit`` characters with an ellipsis.

    Example: ``prompt_label("a watercolor painting of a lighthouse at dawn")`` is
    ``'a watercolor painting of a…'`` (27 characters and the ellipsis). The text is not escaped here:
    SVG callers escape it, matplotlib callers pass it through :func:`mathtext_safe`.
    """
    words = " ".join(str(text).split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "\u2026"


def mathtext_safe(text: str) -> str:
    """``text`` for a matplotlib label: '$' escaped, so a prompt like 'a $5 bill' is not parsed as math."""
    return text.replace("$", r"\$")


def cem_heatmap(cem: pd.DataFrame, metric: str, prompt_texts: Mapping[str, str] | None = None) -> Figure:
    """Concept Entanglement Map: models (grouped by method, subject) x prompts (grouped by abstractness, domain).

    When one label per prompt fits (``PROMPT_LABEL_PT`` points of axis per column), each column is
    labelled by its prompt's text (:func:`prompt_label`: at most 28 characters, else cut with an
    ellipsis; the prompt id where ``prompt_texts`` has none), the abstractness classes are named above
    the map and the domains are marked by thin lines; otherwise (e.g. 200 prompts) the bottom axis
    labels the (abstractness / domain) groups only.

    Args:
        cem: [n_models x n_prompts] with a 3-level index (method, subject_id, model_id) and
            3-level columns (abstractness, domain, prompt_id), as in ``cem_<metric>.csv``.
        metric: the metric name, for the colour bar.
        prompt_texts: prompt_id -> text (``prompts.csv``); None labels groups only.

    Raises:
        ConfigError: ``cem`` does not have 3-level rows and columns, or is empty.
    """
    if cem.index.nlevels != 3 or cem.columns.nlevels != 3:
        raise ConfigError(
            f"cem for {metric!r}: expected 3-level rows {CEM_ROW_LEVELS} and columns "
            f"{CEM_COLUMN_LEVELS}, got {cem.index.nlevels} and {cem.columns.nlevels} levels"
        )
    if cem.empty:
        raise ConfigError(f"cem for {metric!r}: no models or no prompts")
    cem = cem.sort_index(axis=0).sort_index(axis=1)
    n_models, n_prompts = cem.shape
    width = min(16.0, 6.0 + 0.06 * n_prompts)
    # the heat map gets about the figure's width less the model labels and the colour bar
    by_text = prompt_texts is not None and (width - CEM_MARGIN_IN) * 72.0 / n_prompts >= PROMPT_LABEL_PT
    fig = style.new_figure(width, min(12.0, 2.5 + 0.22 * n_models) + (PROMPT_LABEL_IN if by_text else 0.0))
    ax = fig.add_subplot()
    values = cem.to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    signed = finite.size > 0 and finite.min() < 0
    # A signed metric (alignment drop: the personalized image can score higher than the base's) gets a
    # diverging scale centred at 0, so "no change" is the neutral colour and both signs read alike.
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(
        np.ma.masked_invalid(values),
        aspect="auto",
        cmap=style.DIVERGING_CMAP if signed else style.SEQUENTIAL_CMAP,
        vmin=-(limit or 1.0) if signed else None,
        vmax=(limit or 1.0) if signed else None,
        interpolation="nearest",
    )
    colourbar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.01)
    colourbar.set_label(METRIC_UNITS.get(metric, metric), fontsize=style.TEXT_SIZE)
    x_title = (
        "prompts (text), by abstractness (above) and domain (thin lines)"
        if by_text
        else "prompts (abstractness / domain)"
    )
    style.style_axes(ax, f"CEM: {metric}", x_title, "models (method / subject)")
    ax.grid(False)
    row_groups = list(zip(cem.index.get_level_values(0), cem.index.get_level_values(1), strict=True))
    col_groups = list(zip(cem.columns.get_level_values(0), cem.columns.get_level_values(1), strict=True))
    # Fine lines between subjects / domains, heavy lines between methods / abstractness classes.
    for (label, _, _), (next_label, start, _) in pairwise(group_spans(row_groups)):
        heavy = label[0] != next_label[0]
        ax.axhline(start - 0.5, color="white", linewidth=2.0 if heavy else 0.6)
    for (label, _, _), (next_label, start, _) in pairwise(group_spans(col_groups)):
        heavy = label[0] != next_label[0]
        ax.axvline(start - 0.5, color="white", linewidth=2.0 if heavy else 0.6)
    rows = group_spans(row_groups)
    ax.set_yticks(
        [(a + b - 1) / 2 for _, a, b in rows], [f"{m} / {s}" for (m, s), _, _ in rows], fontsize=style.TEXT_SIZE - 1
    )
    ax.tick_params(length=0)
    if not by_text:
        cols = group_spans(col_groups)
        ax.set_xticks(
            [(a + b - 1) / 2 for _, a, b in cols],
            [mathtext_safe(f"{a} / {d}") for (a, d), _, _ in cols],
            rotation=45,
            ha="right",
            fontsize=style.TEXT_SIZE - 1,
        )
        return fig
    texts = {str(k): str(v) for k, v in (prompt_texts or {}).items()}
    labels = [prompt_label(texts.get(str(p)) or str(p)) for p in cem.columns.get_level_values(2)]
    ax.set_xticks(range(n_prompts), [mathtext_safe(t) for t in labels], rotation=90, fontsize=style.TEXT_SIZE - 1)
    # above the map the abstractness classes (heavy lines); a domain group is often one or two prompts wide,
    # too narrow for its name: the thin lines mark the domains and the HTML map's tooltip names them
    classes = group_spans(list(cem.columns.get_level_values(0)))
    top = ax.secondary_xaxis("top")
    top.set_xticks(
        [(a + b - 1) / 2 for _, a, b in classes],
        [mathtext_safe(str(c)) for c, _, _ in classes],
        fontsize=style.TEXT_SIZE - 1,
    )
    top.tick_params(length=0)
    return fig


def _bootstrap_mean_ci(values: np.ndarray, seed: int) -> tuple[float, float]:
    if values.size < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    ci = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=999,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    ).confidence_interval
    return float(ci.low), float(ci.high)


def method_disruption(
    disruption: pd.DataFrame, metric: str, means: pd.DataFrame | None = None, seed: int = 0
) -> Figure:
    """Per-method disruption: every (model, prompt) value as a dot, the mean with its 95% CI as a bar.

    Args:
        disruption: rows with ``method`` and ``metric`` (e.g. ``disruption_by_prompt.csv``).
        metric: column to plot.
        means: optional per-method (method, mean, ci_low, ci_high) from the summary;
            without it the CI is a percentile bootstrap of the rows here.
        seed: seeds the jitter and the fallback bootstrap.
    """
    require_table(disruption, ["method", metric], "disruption")
    rng = np.random.default_rng(seed)
    methods = sorted(disruption["method"].astype(str).unique())
    colours = style.method_colours(methods)
    fig = style.new_figure(1.6 + 1.1 * len(methods), 3.6)
    ax = fig.add_subplot()
    given = None
    if means is not None and len(means):
        # JSON has no NaN: a summary without intervals holds None there
        given = means.assign(**{c: pd.to_numeric(means[c], errors="coerce") for c in ("mean", "ci_low", "ci_high")})
        given = given.set_index(given["method"].astype(str))
    for x, method in enumerate(methods):
        values = disruption.loc[disruption["method"].astype(str) == method, metric].dropna().to_numpy(np.float64)
        ax.scatter(
            x + rng.uniform(-0.18, 0.18, values.size), values, s=6, alpha=0.35, color=colours[method], linewidths=0
        )
        if given is not None and method in given.index and np.isfinite(given.loc[method, "ci_low"]):
            mean, low, high = (float(given.loc[method, k]) for k in ("mean", "ci_low", "ci_high"))
        elif values.size:
            mean, (low, high) = float(values.mean()), _bootstrap_mean_ci(values, seed)
        else:
            continue
        ax.errorbar(
            [x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color="black", capsize=4, markersize=5, zorder=3
        )
    ax.axhline(0.0, color="#888888", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(methods)), methods)
    style.style_axes(ax, "Disruption per method (mean, 95% CI)", "method", metric)
    return fig


def holm_p(test: Mapping[str, Any] | None) -> float | None:
    """The test's p Holm-adjusted over its question (``extra.p_holm_question``, set by ``run_statistics``), or None.

    It is the p the report's tables and findings judge by (``cemaps.analysis.stats.common.P_HOLM_QUESTION``).
    """
    adjusted = ((test or {}).get("extra") or {}).get(P_HOLM_QUESTION)
    return float(adjusted) if isinstance(adjusted, (int, float)) and not isinstance(adjusted, bool) else None


def _test_lines(name: str, symbol: str, test: Mapping[str, Any] | None, detail: str = "") -> list[str]:
    """Two lines: the statistic (and ``detail``), then p beside its Holm adjustment over the question."""
    if not test or test.get("p") is None:
        reason = ((test or {}).get("extra") or {}).get("reason", "no test result")
        return [f"{name}: not computed", f"({reason})"]
    adjusted = holm_p(test)
    survives = adjusted is not None and adjusted < ALPHA
    return [
        f"{name} {symbol} = {test['statistic']:.3g}{detail}",
        f"    p = {format_p(test['p'])}, Holm over the question {format_p(adjusted)}"
        f"{': significant' if survives else ''}",
    ]


def _annotation(kruskal: Mapping[str, Any] | None, anova: Mapping[str, Any] | None = None) -> str:
    detail = ""
    if kruskal and kruskal.get("p") is not None:
        detail = (
            f", {kruskal.get('effect_size_name', 'effect')} = {kruskal.get('effect_size', float('nan')):.3g}, "
            f"n = {kruskal.get('n')} prompts"
        )
    lines = _test_lines("Kruskal-Wallis", "H", kruskal, detail)
    if anova is not None:
        size = anova.get("effect_size")
        effect = f", {anova.get('effect_size_name', 'effect')} = {size:.3g}" if isinstance(size, (int, float)) else ""
        lines += _test_lines("permutation ANOVA", "F", anova, effect)
    return "\n".join(lines)


def abstractness_disruption(
    disruption: pd.DataFrame,
    metric: str,
    kruskal: Mapping[str, Any] | None = None,
    pairwise_tests: pd.DataFrame | None = None,
    anova: Mapping[str, Any] | None = None,
) -> Figure:
    """Disruption per abstractness class (one value per prompt, averaged over models), with the tests.

    Each test under the title shows its p and its p Holm-adjusted over the question's tests and
    metrics (``extra.p_holm_question``), the one the report's table bolds by and its findings judge
    by; "significant" only where that survives 0.05 (issue 21: one rule everywhere a p is shown).

    Args:
        disruption: rows with prompt_id, abstractness and ``metric``.
        metric: column to plot.
        kruskal: the summary's Kruskal-Wallis result (test dict), shown under the title.
        pairwise_tests: records class_a, class_b, p_holm; drawn as brackets with their p Holm-adjusted over
            class pairs (follow-ups, labelled ``pair Holm p``: no claim rests on them).
        anova: the summary's permutation ANOVA result (test dict), shown under the Kruskal-Wallis line.
    """
    require_table(disruption, ["prompt_id", "abstractness", metric], "disruption")
    per_prompt = disruption.groupby("prompt_id", sort=True).agg(
        abstractness=("abstractness", "first"), value=(metric, "mean")
    )
    classes = sorted(per_prompt["abstractness"].astype(str).unique())
    if "concrete" in classes:  # the reference class first, as in the statistics
        classes.remove("concrete")
        classes.insert(0, "concrete")
    groups = [per_prompt.loc[per_prompt["abstractness"].astype(str) == c, "value"].to_numpy() for c in classes]
    fig = style.new_figure(max(5.4, 1.8 + 1.2 * len(classes)), 5.0)
    ax = fig.add_subplot()
    box = ax.boxplot(
        groups,
        positions=range(len(classes)),
        widths=0.55,
        patch_artist=True,
        showfliers=False,
        medianprops={"color": "black"},
    )
    for patch, colour in zip(box["boxes"], style.OKABE_ITO, strict=False):
        patch.set_facecolor(colour)
        patch.set_alpha(0.45)
    rng = np.random.default_rng(0)
    for x, values in enumerate(groups):
        ax.scatter(x + rng.uniform(-0.15, 0.15, values.size), values, s=8, color="black", alpha=0.5, linewidths=0)
    ax.set_xticks(range(len(classes)), [f"{c}\n(n={g.size})" for c, g in zip(classes, groups, strict=True)])
    style.style_axes(
        ax,
        f"Disruption by abstractness (per prompt)\n{_annotation(kruskal, anova)}",
        "abstractness class",
        f"{metric} (mean over models)",
    )
    if pairwise_tests is not None and len(pairwise_tests):
        top = max((float(np.max(g)) for g in groups if g.size), default=0.0)
        span = max(top - min((float(np.min(g)) for g in groups if g.size), default=0.0), 1e-9)
        position = {c: i for i, c in enumerate(classes)}
        level = 0
        for row in pairwise_tests.itertuples(index=False):
            a, b = position.get(str(row.class_a)), position.get(str(row.class_b))
            if a is None or b is None:
                continue
            y = top + span * (0.08 + 0.09 * level)
            ax.plot(
                [min(a, b), min(a, b), max(a, b), max(a, b)],
                [y - span * 0.02, y, y, y - span * 0.02],
                color="black",
                linewidth=0.8,
            )
            ax.text(
                (a + b) / 2,
                y,
                f"pair Holm p {format_p(row.p_holm)}",
                ha="center",
                va="bottom",
                fontsize=style.TEXT_SIZE - 2,
            )
            level += 1
        ax.set_ylim(top=top + span * (0.15 + 0.09 * level))
    return fig


def similarity_scatter(similarity: pd.DataFrame, disruption: pd.DataFrame, metric: str) -> Figure:
    """Text similarity (subject vs prompt) against disruption, one panel per method, Spearman rho per panel.

    Args:
        similarity: (model_id, prompt_id, similarity).
        disruption: rows with model_id, prompt_id, method and ``metric``; seeds are averaged.
        metric: column to plot.
    """
    require_table(similarity, ["model_id", "prompt_id", "similarity"], "similarity")
    require_table(disruption, ["model_id", "prompt_id", "method", metric], "disruption")
    per_pair = (
        disruption.groupby(["model_id", "prompt_id"], sort=True)
        .agg(method=("method", "first"), value=(metric, "mean"))
        .reset_index()
    )
    joined = per_pair.merge(similarity[["model_id", "prompt_id", "similarity"]], on=["model_id", "prompt_id"])
    if joined.empty:
        raise ConfigError("similarity: no (model_id, prompt_id) pair matches the disruption table")
    methods = sorted(joined["method"].astype(str).unique())
    colours = style.method_colours(methods)
    fig = style.new_figure(0.6 + 2.8 * len(methods), 3.2)
    axes = fig.subplots(1, len(methods), sharey=True, squeeze=False)[0]
    for ax, method in zip(axes, methods, strict=True):
        part = joined[joined["method"].astype(str) == method]
        ax.scatter(part["similarity"], part["value"], s=8, alpha=0.5, color=colours[method], linewidths=0)
        rho_text = "rho n/a"
        if len(part) >= 3 and np.ptp(part["similarity"]) > 0 and np.ptp(part["value"]) > 0:
            result = stats.spearmanr(part["similarity"], part["value"])
            rho_text = f"Spearman rho = {result.statistic:.2f}"
        style.style_axes(ax, f"{method}: {rho_text}", "text similarity to subject", metric if ax is axes[0] else "")
    return fig
