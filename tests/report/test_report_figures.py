"""Figures: each function returns a labelled Figure; make_figures writes files and skips absent inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cemaps.errors import ConfigError
from cemaps.report import load_results, make_figures
from cemaps.report.dendrograms import cluster_dendrograms
from cemaps.report.disruption_figures import (
    abstractness_disruption,
    cem_heatmap,
    format_p,
    mathtext_safe,
    method_disruption,
    prompt_label,
    similarity_scatter,
)
from cemaps.report.layer_figures import (
    attention_shift_per_layer,
    layer_axis,
    layer_correlation,
    weight_delta_per_layer,
    weight_delta_unit,
)
from cemaps.report.results import find_records, find_test, per_pair_disruption, prompt_texts
from cemaps.report.style import method_colours, save_figure

METRIC = "alignment_drop"


@pytest.fixture(scope="module")
def results(results_dir):
    return load_results(results_dir)


def tick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_cem_heatmap_groups_models_and_prompts(results):
    cem = results.cems[METRIC]
    fig = cem_heatmap(cem, METRIC)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "prompts (abstractness / domain)"
    assert ax.get_ylabel() == "models (method / subject)"
    assert "dreambooth / alice" in [t.get_text() for t in ax.get_yticklabels()]
    assert "abstract / animals" in tick_texts(ax)
    assert fig.axes[1].get_ylabel().startswith("alignment drop (CLIPScore points")  # the metric and its unit
    # image spans every model x prompt cell, in the CSV's sorted order
    assert ax.images[0].get_array().shape == cem.shape
    # 8 separators between 9 models (3 heavy ones between methods are among them); 11 between 12 prompt groups
    assert len(ax.lines) == (cem.shape[0] - 1) + (cem.shape[1] - 1)


def test_cem_heatmap_labels_each_prompt_by_its_text_where_it_fits(results):
    cem = results.cems[METRIC]
    texts = prompt_texts(results)
    texts["p000"] = "a $5 bill beside a watercolor painting of a lighthouse at dawn"  # long, and mathtext's '$'
    ax = cem_heatmap(cem, METRIC, texts).axes[0]
    columns = cem.sort_index(axis=1).columns.get_level_values("prompt_id")
    shown = tick_texts(ax)
    assert shown == [mathtext_safe(prompt_label(texts[p])) for p in columns]
    long_label = shown[list(columns).index("p000")]
    assert long_label == "a \\$5 bill beside a watercol\u2026" and len(prompt_label(texts["p000"])) == 28
    assert "the idea of justice" in shown  # short texts whole
    assert ax.get_xlabel() == "prompts (text), by abstractness (above) and domain (thin lines)"
    classes = [t.get_text() for t in ax.child_axes[0].get_xticklabels()]  # the classes moved to the top axis
    assert classes == ["abstract", "compositional", "concrete"]


def test_cem_heatmap_of_many_prompts_labels_groups_only():
    columns = pd.MultiIndex.from_tuples([("concrete", f"d{i % 4}", f"p{i:03d}") for i in range(200)])
    index = pd.MultiIndex.from_tuples([("lora", "face1", "lora-face1"), ("dreambooth", "face1", "db-face1")])
    cem = pd.DataFrame(np.zeros((2, 200)), index=index, columns=columns)
    ax = cem_heatmap(cem, "image_drift", {f"p{i:03d}": f"prompt number {i}" for i in range(200)}).axes[0]
    assert ax.get_xlabel() == "prompts (abstractness / domain)"
    assert sorted(set(tick_texts(ax))) == ["concrete / d0", "concrete / d1", "concrete / d2", "concrete / d3"]
    assert ax.child_axes == []


def test_prompt_label_cuts_at_28_characters_with_an_ellipsis():
    assert prompt_label("a photo of a cat") == "a photo of a cat"
    assert prompt_label("  a   photo\nof a cat ") == "a photo of a cat"
    cut = prompt_label("an abstract composition of harmony and freedom")
    assert cut == "an abstract composition of\u2026" and len(cut) <= 28
    assert prompt_label("x" * 28) == "x" * 28 and prompt_label("x" * 29) == "x" * 27 + "\u2026"


def test_a_signed_metric_is_drawn_on_a_diverging_scale_centred_at_zero_with_its_unit():
    columns = pd.MultiIndex.from_tuples([("concrete", "object", "p0"), ("abstract", "style", "p1")])
    index = pd.MultiIndex.from_tuples([("lora", "face1", "lora-face1"), ("dreambooth", "face1", "db-face1")])
    signed = cem_heatmap(pd.DataFrame([[-46.0, 12.0], [51.0, 0.0]], index=index, columns=columns), "alignment_drop")
    image = signed.axes[0].images[0]
    assert image.get_cmap().name == "PuOr_r" and image.get_clim() == (-51.0, 51.0)
    assert signed.axes[1].get_ylabel() == "alignment drop (CLIPScore points, base - personalized)"
    unsigned = cem_heatmap(pd.DataFrame([[0.1, 0.2], [0.3, 0.0]], index=index, columns=columns), "image_drift")
    assert unsigned.axes[0].images[0].get_cmap().name == "viridis"
    assert unsigned.axes[1].get_ylabel().startswith("image drift (1 - cosine")


def test_cem_heatmap_rejects_flat_labels():
    with pytest.raises(ConfigError, match=r"cem for 'x': expected 3-level rows"):
        cem_heatmap(pd.DataFrame([[1.0]], index=["m"], columns=["p"]), "x")


def test_method_disruption_uses_summary_cis(results):
    pairs = per_pair_disruption(results, METRIC)
    means = find_records(results.section("methods", METRIC), ["method", "mean", "ci_low", "ci_high"])
    fig = method_disruption(pairs, METRIC, means=means)
    ax = fig.axes[0]
    assert tick_texts(ax) == ["dreambooth", "lora", "textual_inversion"]
    assert ax.get_ylabel() == METRIC
    bars = [c for c in ax.containers]  # one errorbar container per method
    assert len(bars) == 3
    lora = means.set_index("method").loc["lora"]
    assert bars[1].lines[0].get_ydata()[0] == pytest.approx(lora["mean"])


def test_method_disruption_bootstraps_without_summary():
    table = pd.DataFrame({"method": ["a"] * 5 + ["b"] * 5, "drop": [1.0, 2, 3, 4, 5, 5, 5, 5, 5, 5]})
    fig = method_disruption(table, "drop")
    low, high = fig.axes[0].containers[0].lines[2][0].get_segments()[0][:, 1]
    assert 1.0 <= low < 3.0 < high <= 5.0
    with pytest.raises(ConfigError, match=r"disruption: missing column\(s\) \['method'\]"):
        method_disruption(table.drop(columns="method"), "drop")


def test_abstractness_figure_annotates_tests_with_the_holm_p_of_the_table(results):
    section = results.section("abstractness", METRIC)
    kruskal = find_test(section, "kruskal")
    anova = find_test(section, "prompt_permutation_anova")
    pairwise = find_records(section, ["class_a", "class_b", "p_holm"])
    fig = abstractness_disruption(per_pair_disruption(results, METRIC), METRIC, kruskal, pairwise, anova=anova)
    ax = fig.axes[0]
    title = ax.get_title(loc="left")
    assert "Kruskal-Wallis H = " in title and f"p = {kruskal['p']:.3g}" in title
    # the p the table bolds by (Holm over the question's tests and metrics) is shown beside each raw p
    for test in (kruskal, anova):
        adjusted = test["extra"]["p_holm_question"]
        assert adjusted >= test["p"]
        assert f"Holm over the question {format_p(adjusted)}" in title
    assert "permutation ANOVA F = " in title
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["concrete", "abstract", "compositional"]
    holm_labels = [t.get_text() for t in ax.texts if t.get_text().startswith("pair Holm p")]
    assert len(holm_labels) == len(pairwise) == 3


def test_abstractness_figure_calls_significant_only_what_survives_holm():
    table = pd.DataFrame({"prompt_id": list("abcd"), "abstractness": ["concrete", "abstract"] * 2, "m": [1.0, 2, 1, 2]})
    raw_only = {"test": "kruskal", "statistic": 4.0, "p": 0.01, "effect_size": 0.5, "n": 4, "extra": {}}
    survives = {**raw_only, "extra": {"p_holm_question": 0.04}}
    fails = {**raw_only, "extra": {"p_holm_question": 0.2}}
    titles = [
        abstractness_disruption(table, "m", kruskal=t).axes[0].get_title(loc="left")
        for t in (raw_only, survives, fails)
    ]
    assert "Holm over the question n/a" in titles[0] and "significant" not in titles[0]
    assert "Holm over the question 0.04: significant" in titles[1]
    assert "Holm over the question 0.2" in titles[2] and "significant" not in titles[2]


def test_abstractness_figure_says_when_no_test():
    table = pd.DataFrame({"prompt_id": ["a", "b"], "abstractness": ["concrete", "abstract"], "m": [1.0, 2.0]})
    fig = abstractness_disruption(table, "m", kruskal=None)
    assert "not computed" in fig.axes[0].get_title(loc="left")


def test_similarity_scatter_one_panel_per_method(results):
    fig = similarity_scatter(results.tables["similarity"], results.tables["disruption"], METRIC)
    assert len(fig.axes) == 3
    assert all(ax.get_xlabel() == "text similarity to subject" for ax in fig.axes)
    assert fig.axes[0].get_title(loc="left").startswith("dreambooth: Spearman rho = ")
    with pytest.raises(ConfigError, match="no \\(model_id, prompt_id\\) pair matches"):
        similarity_scatter(results.tables["similarity"].assign(model_id="nobody"), results.tables["disruption"], METRIC)


def test_layer_axis_follows_unet_order_and_labels_resolution(results):
    layers = results.tables["layers"]
    shuffled = list(layers["layer"])[::-1]
    ordered, labels = layer_axis(shuffled, layers)
    assert ordered == list(layers.sort_values("order")["layer"])
    assert labels[0] == "0 down 8x8" and labels[2] == "2 mid 4x4" and labels[-1] == "4 up 8x8"
    # without layers.csv the module paths give the same order
    assert layer_axis(shuffled)[0] == ordered


def test_attention_shift_per_layer(results):
    fig = attention_shift_per_layer(results.tables["attention_shift"], results.tables["layers"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer (UNet order: down -> mid -> up)"
    assert tick_texts(ax)[2] == "2 mid 4x4"
    assert sorted(line.get_label() for line in ax.get_lines()) == ["dreambooth", "lora", "textual_inversion"]
    # the fixture's layer 3 carries the disruption: it has the largest mean shift for every method
    assert all(int(np.argmax(line.get_ydata())) == 3 for line in ax.get_lines())


def test_layer_correlation_marks_only_layers_that_survive_holm(results):
    table = find_records(results.section("layer_linking", METRIC), ["layer", "rho", "p_perm"])
    assert (table["p_holm_question"] >= table["p_perm"]).all()
    table["p_holm_question"] = [0.001, 0.2, 0.049, 0.06, 0.5]
    table["q_bh_perm"] = 0.001  # BH q marks nothing any more: every layer would pass it
    fig = layer_correlation(table, results.tables["layers"], METRIC)
    ax = fig.axes[0]
    stars = [t for t in ax.texts if t.get_text() == "*"]
    assert len(stars) == 2
    assert sorted(round(t.get_position()[0]) for t in stars) == [0, 2]  # layers.csv order is the fixture's order
    assert ax.get_ylabel() == "Spearman rho"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Holm-adjusted p < 0.05" in legend
    older = layer_correlation(table.drop(columns="p_holm_question"), results.tables["layers"], METRIC).axes[0]
    assert [t for t in older.texts if t.get_text() == "*"] == []
    assert "no Holm p in the summary: none marked" in [t.get_text() for t in older.get_legend().get_texts()]


def test_weight_delta_per_layer(results):
    deltas = results.tables["weight_deltas"]
    fig = weight_delta_per_layer(deltas)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dreambooth", "lora"]  # TI changes no weight
    labels = ax.get_yticklabels()  # one row per unit, read top-down, at a legible size (issue 25)
    assert len(labels) == 5 and all(label.get_fontsize() >= 8 for label in labels)
    assert labels[0].get_text().startswith("0 ") and ax.get_ylim()[0] > ax.get_ylim()[1]
    one = deltas[(deltas.model_id == "lora-mug") & deltas.module.str.startswith("down_blocks.0.")]
    assert weight_delta_unit(one.module.iloc[0]) == "down_blocks.0.attentions.0"


def test_dendrograms_from_summary_and_from_cem(results):
    cem = results.cems[METRIC]
    from_summary = cluster_dendrograms(cem, results.section("clustering", METRIC))
    computed = cluster_dendrograms(cem)
    assert set(from_summary) == set(computed) == {"prompt_dendrogram", "model_dendrogram"}
    assert "summary linkage" in from_summary["prompt_dendrogram"].axes[0].get_title(loc="left")
    assert "average linkage on the CEM" in computed["model_dendrogram"].axes[0].get_title(loc="left")
    leaves = {t.get_text() for t in from_summary["model_dendrogram"].axes[0].get_xticklabels()}
    assert leaves == set(cem.index.get_level_values("model_id"))


def test_save_figure_writes_png_and_svg(tmp_path):
    fig = method_disruption(pd.DataFrame({"method": ["a", "b"], "m": [1.0, 2.0]}), "m")
    written = save_figure(fig, tmp_path, "Methods m")
    assert sorted(written) == ["png", "svg"]
    assert written["png"].name == "methods-m.png"
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in written["svg"].read_bytes()[:2000]
    with pytest.raises(ConfigError, match=r"figure formats \['gif'\]"):
        save_figure(fig, tmp_path, "x", formats=["gif"])
    with pytest.raises(ConfigError, match=r"figure name '\?\?': expected letters or digits"):
        save_figure(fig, tmp_path, "??")


def test_method_colours_are_stable_and_distinct():
    colours = method_colours(["lora", "dreambooth", "textual_inversion", "lora"])
    assert colours == method_colours(["textual_inversion", "dreambooth", "lora"])
    assert len(set(colours.values())) == 3


def test_make_figures_skips_absent_inputs(sparse_results_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="cemaps.report.figures")
    written = make_figures(sparse_results_dir, tmp_path / "figs")
    assert "weight_delta_layers" not in written and "attention_overlay" not in written
    assert "similarity_alignment_drop" not in written
    assert {"cem_alignment_drop", "methods_alignment_drop", "prompt_dendrogram_alignment_drop"} <= set(written)
    assert not any(name.endswith("image_drift") for name in written)  # only the manifest's metrics
    for png in written.values():
        assert png.stat().st_size > 1000
        assert png.with_suffix(".svg").stat().st_size > 1000
    notes = caplog.text
    assert "weight_deltas.csv is absent" in notes and "similarity.csv is absent" in notes
    assert "missing-study.h5 is absent" in notes
