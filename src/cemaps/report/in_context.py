"""The report section "Subjects in context": CLIP-T, CLIP-I and the non-subject attention shift.

Reads ``in_context_summary.csv``, ``in_context.csv`` and ``in_context_shift.csv`` from
the results folder (written by ``cemaps analyze`` when the study ran the in-context
prompt set; see :mod:`cemaps.analysis.in_context`). The section is descriptive: means
per model and per method, no significance test, so nothing in it is marked significant.

Example:
    >>> from cemaps.report.results import Results
    >>> import pathlib
    >>> in_context_section(Results(pathlib.Path("."), {}, {}, {}, {}, {}))
    ''
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import pandas as pd

from cemaps.report.html_tables import frame_records, records_html
from cemaps.report.results import Results
from cemaps.report.style import TITLE_SIZE

SECTION_ID = "in_context"
TITLE = "Subjects in context"
FILES = {
    "summary": "in_context_summary.csv",
    "records": "in_context.csv",
    "shift": "in_context_shift.csv",
    "tokens": "in_context_tokens.csv",
}
TOP_WORDS = 6
ID_COLUMNS = {"model_id": str, "prompt_id": str, "subject_id": str, "template_id": str}
INTRO = (
    "Each subject of the study placed in new contexts, as personalization papers evaluate "
    "(DreamBooth, Custom Diffusion: CLIP-T, CLIP-I). Every template holds a <code>{subject}</code> placeholder: "
    "the base model got the subject's class phrase (\u201ca woman\u201d), DreamBooth and LoRA models their "
    "identifier before the class word (\u201ca sks woman\u201d), Textual Inversion its token alone; records are "
    "paired with the base twin of the same template and seed. <b>CLIP-T</b>: CLIPScore (0-100) of the image with "
    "the class-word prompt, the same text for base and personalized images. <b>CLIP-I</b>: mean cosine of the "
    "image's CLIP embedding with the subject's training images (blank when none were given). <b>Non-subject "
    "shift</b>: Jensen-Shannon attention shift (0-1) against the base twin over the tokens outside the subject "
    "phrase (start, context words, end), aligned by the shared context. Means only; no test is run here."
)


def read_in_context(results: Results) -> dict[str, pd.DataFrame]:
    """The in-context tables present in the results folder (name -> DataFrame)."""
    listed = results.manifest.get("files") if isinstance(results.manifest.get("files"), dict) else {}
    tables = {}
    for key, default in FILES.items():
        name = Path(default).stem
        path = results.folder / str(listed.get(name, default))
        if path.is_file():
            tables[key] = pd.read_csv(path, dtype=ID_COLUMNS)
    return tables


def per_method(summary: pd.DataFrame) -> pd.DataFrame:
    """Means of the per-model summary per method, with the number of models."""
    columns = ["clip_t", "clip_t_base", "clip_t_change", "clip_i", "clip_i_base", "clip_i_change", "non_subject_shift"]
    present = [c for c in columns if c in summary.columns]
    grouped = summary.groupby("method", sort=True)
    table = grouped[present].mean()
    table.insert(0, "n_models", grouped.size())
    return table.reset_index()


def shift_figure_html(shift: pd.DataFrame, layers: pd.DataFrame | None) -> str:
    """The per-layer figure of the non-subject shift (the layer figure of the unrelated suite, reused)."""
    from cemaps.report.layer_figures import attention_shift_per_layer

    table = shift.rename(columns={"non_subject_shift": "attention_shift"}).dropna(subset=["attention_shift"])
    if table.empty or "method" not in table.columns:
        return ""
    fig = attention_shift_per_layer(table, layers)
    fig.axes[0].set_title(
        "Non-subject attention shift per layer, subjects in context (mean, 95% CI)", loc="left", fontsize=TITLE_SIZE
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    caption = (
        "Non-subject attention shift per layer and method, subjects in context (mean and 95% t interval over "
        "personalized records; the context tokens only). A layer whose maps are 1x1 shows 0 by construction: "
        "a one-pixel map is the same distribution in every model."
    )
    return (
        f'<figure id="fig-in-context-shift"><img alt="{escape(caption)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def top_words(tokens: pd.DataFrame, top: int = TOP_WORDS) -> pd.DataFrame:
    """Per method, the ``top`` context words with the largest mean shift (occurrence-weighted over its models).

    ``n`` counts (record, layer, occurrence) values: a word of one template has few, so read it with ``n``.
    """
    weighted = tokens.assign(total=tokens["non_subject_shift"] * tokens["n"])
    grouped = weighted.groupby(["method", "token"], as_index=False)[["total", "n"]].sum()
    grouped["non_subject_shift"] = grouped["total"] / grouped["n"]
    ranked = grouped.sort_values(["method", "non_subject_shift"], ascending=[True, False])
    table = ranked.groupby("method", sort=True).head(top)[["method", "token", "non_subject_shift", "n"]]
    return table.assign(token=table["token"].str.removesuffix("</w>"))  # CLIP's end-of-word mark


def example_texts(records: pd.DataFrame, per_subject: int = 2) -> pd.DataFrame:
    """The text each method got for the first ``per_subject`` prompts of every subject: one row per prompt."""
    first = records.drop_duplicates("prompt_id").groupby("subject_id", sort=False).head(per_subject)["prompt_id"]
    rows = records[records["prompt_id"].isin(first)].drop_duplicates(["method", "prompt_id"])
    table = rows.pivot(index="prompt_id", columns="method", values="text").reindex(list(first))
    methods = ["base", *sorted(m for m in table.columns if m != "base")]
    return table[[m for m in methods if m in table.columns]].reset_index()


def in_context_section(results: Results) -> str:
    """The section's HTML, or '' when the results hold no in-context tables."""
    tables = read_in_context(results)
    if "summary" not in tables:
        return ""
    summary = tables["summary"]
    parts = [f'<section id="{SECTION_ID}"><h2>{escape(TITLE)}</h2><p>{INTRO}</p>']
    parts.append(
        records_html(frame_records(per_method(summary)), "per method: mean over its models (in_context_summary.csv)")
    )
    parts.append(
        records_html(frame_records(summary), "per model: its records and their base twins (in_context_summary.csv)")
    )
    if "shift" in tables:
        parts.append(shift_figure_html(tables["shift"], results.tables.get("layers")))
    if "tokens" in tables and not tables["tokens"].empty:
        parts.append(
            records_html(
                frame_records(top_words(tables["tokens"])),
                f"context words whose attention shifts most, top {TOP_WORDS} per method "
                "(mean over records, layers and occurrences; in_context_tokens.csv)",
            )
        )
    if "records" in tables:
        parts.append(
            records_html(
                frame_records(example_texts(tables["records"])), "the placeholder filled per method (in_context.csv)"
            )
        )
    parts.append("</section>")
    return "\n".join(p for p in parts if p)
