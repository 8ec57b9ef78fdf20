"""The report's "Subjects in context" section."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from cemaps.analysis.in_context import in_context_summary
from cemaps.report import write_report
from cemaps.report.in_context import example_texts, in_context_section, per_method, top_words
from cemaps.report.results import load_results

LAYERS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
]


def write_in_context(folder):
    rng = np.random.default_rng(0)
    rows, shift = [], []
    models = {"base": "base", "ti-face1": "textual_inversion", "db-face1": "dreambooth"}
    for prompt in ("face01@face1", "face02@face1"):
        for model_id, method in models.items():
            text = {"base": "a woman", "ti-face1": "<sks-face1>", "db-face1": "a sks woman"}[model_id]
            rows.append(
                {
                    "model_id": model_id,
                    "method": method,
                    "subject_id": "face1",
                    "prompt_id": prompt,
                    "template_id": prompt.split("@")[0],
                    "kind": "face",
                    "seed": 0,
                    "text": f"{text} on a beach",
                    "class_text": "a woman on a beach",
                    "clip_t": 30 + rng.normal(),
                    "clip_i": 0.5 + 0.1 * rng.random(),
                }
            )
            if method != "base":
                shift += [
                    {
                        "model_id": model_id,
                        "prompt_id": prompt,
                        "seed": 0,
                        "layer": layer,
                        "n_context_tokens": 6,
                        "non_subject_shift": rng.random() * 0.1,
                        "method": method,
                        "subject_id": "face1",
                    }
                    for layer in LAYERS
                ]
    records, shift = pd.DataFrame(rows), pd.DataFrame(shift)
    pd.DataFrame(
        {
            "model_id": ["ti-face1", "ti-face1", "db-face1"],
            "method": ["textual_inversion"] * 2 + ["dreambooth"],
            "subject_id": "face1",
            "token": ["beach</w>", "photo</w>", "beach</w>"],
            "non_subject_shift": [0.02, 0.01, 0.03],
            "n": [32, 32, 32],
        }
    ).to_csv(folder / "in_context_tokens.csv", index=False)
    records.to_csv(folder / "in_context.csv", index=False)
    shift.to_csv(folder / "in_context_shift.csv", index=False)
    in_context_summary(records, shift).to_csv(folder / "in_context_summary.csv", index=False)
    return records, shift


def test_section_renders_tables_figure_and_nav_link(results_dir, tmp_path):
    folder = shutil.copytree(results_dir, tmp_path / "results")
    write_in_context(folder)
    html = write_report(folder, tmp_path / "out").read_text(encoding="utf-8")
    assert '<section id="in_context">' in html and '<a href="#in_context">' in html
    assert 'id="fig-in-context-shift"' in html
    assert "&lt;sks-face1&gt; on a beach" in html  # the filled placeholder is shown, escaped
    section = in_context_section(load_results(folder))
    assert section.count("<table") == 4
    assert 'class="sig"' not in section  # descriptive: nothing is marked significant


def test_example_texts_show_one_prompt_per_row_and_a_column_per_method():
    records = pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2"],
            "subject_id": "face1",
            "method": ["base", "textual_inversion"] * 2,
            "text": ["a woman x", "<t> x", "a woman y", "<t> y"],
        }
    )
    table = example_texts(records)
    assert table.columns.tolist() == ["prompt_id", "base", "textual_inversion"]
    assert table["textual_inversion"].tolist() == ["<t> x", "<t> y"]


def test_top_words_rank_within_each_method_weighted_by_occurrences():
    tokens = pd.DataFrame(
        {
            "model_id": ["a", "b", "a", "c"],
            "method": ["lora", "lora", "lora", "dreambooth"],
            "token": ["sea</w>", "sea</w>", "of</w>", "of</w>"],
            "non_subject_shift": [0.1, 0.4, 0.2, 0.5],
            "n": [3, 1, 4, 2],
        }
    )
    table = top_words(tokens, top=1).set_index("method")
    assert table.at["lora", "token"] == "of"  # sea: (0.3 + 0.4) / 4 = 0.175 < of: 0.2
    assert table.at["lora", "non_subject_shift"] == pytest.approx(0.2)
    assert table.at["dreambooth", "n"] == 2


def test_per_method_means_the_models():
    summary = pd.DataFrame(
        {
            "model_id": ["a", "b", "c"],
            "method": ["lora", "lora", "textual_inversion"],
            "clip_t": [20.0, 30.0, 25.0],
            "non_subject_shift": [0.1, 0.3, 0.0],
        }
    )
    table = per_method(summary).set_index("method")
    assert table.at["lora", "clip_t"] == 25.0 and table.at["lora", "n_models"] == 2
    assert table.at["lora", "non_subject_shift"] == 0.2


def test_no_in_context_results_no_section(results_dir, report_path):
    html = report_path.read_text(encoding="utf-8")
    assert 'id="in_context"' not in html
    assert in_context_section(load_results(results_dir)) == ""
