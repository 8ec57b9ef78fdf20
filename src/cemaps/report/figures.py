"""All figures of a results folder, written as PNG and SVG; absent inputs skip a figure with a note.

Example:
    >>> paths = make_figures("results/", "report/figures/")      # doctest: +SKIP
    >>> sorted(paths)[:2]                                          # doctest: +SKIP
    ['abstractness_alignment_drop', 'attention_overlay']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
from matplotlib.figure import Figure

from cemaps.errors import CemapsError
from cemaps.report import style
from cemaps.report.dendrograms import cluster_dendrograms
from cemaps.report.disruption_figures import abstractness_disruption, cem_heatmap, method_disruption, similarity_scatter
from cemaps.report.layer_figures import attention_shift_per_layer, layer_correlation, weight_delta_per_layer
from cemaps.report.overlays import attention_overlay, choose_overlay
from cemaps.report.results import (
    Results,
    find_records,
    find_test,
    load_results,
    per_pair_disruption,
    prompt_texts,
)
from cemaps.report.safe_html import slug

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RenderedFigure:
    """One figure of the report: where it belongs, what it shows, and its files (or why it is absent).

    Attributes:
        name: file stem, e.g. ``methods_alignment_drop``.
        question: the report section (``methods``, ``abstractness``, ``semantic_proximity``,
            ``layer_linking``, ``clustering``).
        caption: one sentence saying what is plotted.
        files: format -> path; empty when skipped.
        note: why it was skipped, or None.
    """

    name: str
    question: str
    caption: str
    files: dict[str, Path]
    note: str | None = None


class MissingInput(CemapsError):
    """A figure's input file or summary entry is absent; the figure is skipped."""


def _need(value: T | None, what: str) -> T:
    """``value``, or MissingInput naming ``what`` when it is None."""
    if value is None:
        raise MissingInput(f"{what} is absent")
    return value


def _figure_plan(results: Results) -> list[tuple[str, str, str, Callable[[], Figure | dict[str, Figure]]]]:
    """(name, question, caption, build) for every figure the report wants, in report order."""
    tables = results.tables
    plan = []
    for metric in results.metrics:
        pairs = per_pair_disruption(results, metric)
        methods = results.section("methods", metric)
        abstractness = results.section("abstractness", metric)
        layer_linking = results.section("layer_linking", metric)
        clustering = results.section("clustering", metric)
        plan += [
            (
                f"cem_{metric}",
                "methods",
                f"Concept Entanglement Map of {metric}: models grouped by method and subject, prompts grouped by "
                "abstractness and domain, each prompt labelled by its text (first 28 characters) where the labels fit.",
                lambda m=metric: cem_heatmap(_need(results.cems.get(m), f"cem_{m}.csv"), m, prompt_texts(results)),
            ),
            (
                f"methods_{metric}",
                "methods",
                f"{metric} per method: dots are (model, prompt) pairs, bars the mean with its 95% CI.",
                lambda m=metric, p=pairs, s=methods: method_disruption(
                    _need(p, "disruption.csv / disruption_by_prompt.csv"),
                    m,
                    means=find_records(s, ["method", "mean", "ci_low", "ci_high"]),
                ),
            ),
            (
                f"abstractness_{metric}",
                "abstractness",
                f"{metric} per abstractness class (one point per prompt), with the Kruskal-Wallis test and the "
                "permutation ANOVA: each p beside its Holm adjustment over the question's tests and metrics, the p "
                "the table bolds by. Brackets: pairwise Mann-Whitney p Holm-adjusted over class pairs only "
                "(follow-ups; no finding rests on them).",
                lambda m=metric, p=pairs, s=abstractness: abstractness_disruption(
                    _need(p, "disruption.csv / disruption_by_prompt.csv"),
                    m,
                    kruskal=find_test(s, "kruskal"),
                    pairwise_tests=find_records(s, ["class_a", "class_b", "p_holm"]),
                    anova=find_test(s, "prompt_permutation_anova"),
                ),
            ),
            (
                f"similarity_{metric}",
                "semantic_proximity",
                f"Text similarity of prompt and subject against {metric}, per method. Each panel's Spearman rho is "
                "on raw values and describes the panel only; the test (table above) uses prompt-centred values.",
                lambda m=metric, p=pairs: similarity_scatter(
                    _need(tables.get("similarity"), "similarity.csv"), _need(p, "disruption.csv"), m
                ),
            ),
            (
                f"layer_rho_{metric}",
                "layer_linking",
                f"Per-layer Spearman rho between attention shift and {metric} (structural-zero pairs left out); "
                "* marks a layer whose prompt-permutation p survives Holm's correction over every layer and metric "
                "of this question (p_holm_question < 0.05), the rule of the table and the findings.",
                lambda m=metric, s=layer_linking: layer_correlation(
                    _need(find_records(s, ["layer", "rho", "p_perm"]), "summary layer_linking layers table"),
                    tables.get("layers"),
                    m,
                ),
            ),
            (
                f"dendrograms_{metric}",
                "clustering",
                f"Hierarchical clustering of prompts and models by their {metric} profiles.",
                lambda m=metric, s=clustering: cluster_dendrograms(_need(results.cems.get(m), f"cem_{m}.csv"), s),
            ),
        ]
    plan += [
        (
            "attention_shift_layers",
            "layer_linking",
            "Attention shift (Jensen-Shannon divergence of base vs "
            "personalized maps) per layer in UNet order, per method.",
            lambda: attention_shift_per_layer(
                _need(tables.get("attention_shift"), "attention_shift.csv"), tables.get("layers")
            ),
        ),
        (
            "weight_delta_layers",
            "layer_linking",
            "Norm of the personalization's weight change per layer, per method.",
            lambda: weight_delta_per_layer(_need(tables.get("weight_deltas"), "weight_deltas.csv")),
        ),
        (
            "attention_overlay",
            "layer_linking",
            "Cross-attention of one token, base vs personalized, over the "
            "generated images at each captured denoising step.",
            lambda: _overlay(results),
        ),
    ]
    return plan


def _overlay(results: Results) -> Figure:
    from cemaps.store import open_store  # noqa: PLC0415 - only this figure needs the store

    path = _need(results.store_path, "manifest store path")
    if not path.is_file():
        raise MissingInput(f"capture store {path} is absent")
    metric = results.metrics[0] if results.metrics else None
    with open_store(path) as store:
        choice = choose_overlay(
            store,
            per_pair_disruption(results, metric) if metric else None,
            results.tables.get("attention_shift"),
            metric,
        )
        return attention_overlay(store, choice.prompt_id, choice.token, choice.layer, choice.model_id, seed=choice.seed)


def render_figures(results: Results, out_dir: str | os.PathLike) -> list[RenderedFigure]:
    """Builds and saves every figure of ``results`` under ``out_dir``; skipped ones carry a note."""
    rendered = []
    for name, question, caption, build in _figure_plan(results):
        try:
            built = build()
        except CemapsError as err:
            note = f"skipped: {err}"
            log.info("figure %s %s", name, note)
            rendered.append(RenderedFigure(name, question, caption, {}, note))
            continue
        figures = built if isinstance(built, dict) else {name: built}
        for sub_name, fig in figures.items():
            # several figures from one build (the two dendrograms) keep the build's metric suffix
            full_name = sub_name if sub_name == name else f"{sub_name}{name.removeprefix('dendrograms')}"
            files = style.save_figure(fig, out_dir, slug(full_name))  # names from a results folder: never a path
            rendered.append(RenderedFigure(full_name, question, caption, files))
    return rendered


def make_figures(results_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes every figure of a results folder as PNG + SVG into ``out_dir``.

    Figures whose inputs are absent (e.g. no ``weight_deltas.csv``) are skipped and
    logged, never an error.

    Returns:
        figure name -> PNG path, for the figures written.
    """
    rendered = render_figures(load_results(results_dir), out_dir)
    return {figure.name: figure.files["png"] for figure in rendered if figure.files}


def skipped_figures(rendered: list[RenderedFigure]) -> pd.DataFrame:
    """Name, section and reason of each skipped figure."""
    return pd.DataFrame(
        [(f.name, f.question, f.note) for f in rendered if f.note], columns=["figure", "question", "note"]
    )
