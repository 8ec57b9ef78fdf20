"""The report: one self-contained HTML file that opens offline.

Figures are embedded as base64 PNG, the interactive CEM as inline SVG with an
inline script, styles inline; a Content-Security-Policy forbids every network
fetch. One section per research question (test tables, then figures), then
provenance and links (relative) to the data files it was made from.

Example:
    >>> path = write_report("results/", "report/")               # doctest: +SKIP
    >>> path.name                                                  # doctest: +SKIP
    'report.html'
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from cemaps.analysis.disruption import STRUCTURAL_ZERO, structural_zero_sentence, structural_zeros_by_model
from cemaps.models.aliases import TINY_MODEL_ID
from cemaps.report.figures import RenderedFigure, render_figures
from cemaps.report.html_cem import TOOLTIP_SCRIPT, cem_svg, json_script
from cemaps.report.html_tables import records_html, summary_html
from cemaps.report.in_context import in_context_section
from cemaps.report.results import QUESTIONS, Results, load_results, mentions, prompt_texts
from cemaps.report.safe_html import href, script_hash, slug
from cemaps.report.sections import report_sections

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
QUESTION_TITLES = {
    "methods": "1. Do personalization methods differ in how much they disrupt?",
    "abstractness": "2. Are abstract and compositional prompts more fragile than concrete ones?",
    "semantic_proximity": "3. Does disruption follow semantic proximity to the subject?",
    "layer_linking": "4. Which UNet layers carry the disruption?",
    "clustering": "5. Do prompts and models cluster by their labels?",
}
# Inline script runs only when its SHA-256 is listed: the page's own tooltip script, nothing a results
# folder could smuggle in (escaping is the first line of defence, this the second). Styles stay inline.
CSP = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {script_hash(TOOLTIP_SCRIPT)}"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 24px 48px; color: #222; }
h1 { margin-top: 24px; } h2 { border-bottom: 2px solid #0072B2; padding-bottom: 4px; margin-top: 40px; }
nav a { margin-right: 14px; } .banner { background: #FFF4D6; border-left: 6px solid #E69F00; padding: 10px 14px; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } caption { text-align: left; font-weight: 600; padding: 4px 0; }
td.sig { font-weight: 700; } .unvalidated { color: #777; } .structural-zeros { background: #EEF5FB; padding: 8px 12px; }
td.method { max-width: 420px; color: #555; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; } .note { color: #8a5a00; }
.cem-wrap { overflow-x: auto; } svg.cem text.label { font-size: 11px; fill: #333; }
svg.cem line.sep { stroke: #fff; stroke-width: 1.5; } svg.cem rect.cell:hover { stroke: #000; stroke-width: 1; }
#cem-tooltip { position: absolute; background: #fff; border: 1px solid #333; padding: 6px 9px; font-size: 12.5px;
  max-width: 420px; box-shadow: 2px 2px 6px rgba(0,0,0,.2); pointer-events: none; }
pre { background: #f7f7f7; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def tiny_model_banner(results: Results) -> str:
    """A warning when the base model is the embedded random-weight tiny pipeline, else ''."""
    if not mentions(results.manifest, TINY_MODEL_ID):
        return ""
    return (
        f'<p class="banner" id="tiny-model-warning"><b>Base model: {TINY_MODEL_ID}</b>, the embedded '
        "random-weight tiny model. This report validates the pipeline end to end; "
        "it is not evidence about SD v1.5.</p>"
    )


def structural_zero_note(results: Results) -> str:
    """A paragraph naming the models whose records are bit-identical to the base twin, or ''.

    Read from ``disruption.csv``'s ``structural_zero`` column; results written before that
    column existed get no paragraph.
    """
    table = results.tables.get("disruption")
    if table is None or STRUCTURAL_ZERO not in table.columns or "model_id" not in table.columns:
        return ""
    sentence = structural_zero_sentence(structural_zeros_by_model(table))
    return f'<p class="structural-zeros">{escape(sentence)}</p>'


def method_structural_zeros(section: Any) -> str:
    """The method comparison's sentence on structural zeros per method (the same for every metric), or ''."""
    if not isinstance(section, Mapping):
        return ""
    for results in section.values():
        if isinstance(results, Mapping) and isinstance(results.get("structural_zeros"), str):
            return f'<p class="structural-zeros">{escape(results["structural_zeros"])}</p>'
    return ""


def figure_html(figure: RenderedFigure) -> str:
    """A figure embedded as base64 PNG with its caption and links to its files, or its skip note."""
    if figure.note:
        return f'<p class="note" data-figure="{escape(figure.name)}">Figure {escape(figure.name)} {escape(figure.note)}</p>'
    encoded = base64.b64encode(figure.files["png"].read_bytes()).decode("ascii")
    links = " ".join(
        f'<a href="{href(f"{FIGURES_DIR}/{path.name}")}">{escape(fmt.upper())}</a>'
        for fmt, path in sorted(figure.files.items())
    )
    return (
        f'<figure id="fig-{slug(figure.name)}"><img alt="{escape(figure.caption)}" '
        f'src="data:image/png;base64,{encoded}"><figcaption>{escape(figure.caption)} ({links})</figcaption></figure>'
    )


def interactive_cems(results: Results) -> str:
    texts = prompt_texts(results)
    parts = []
    for metric in results.metrics:
        cem = results.cems.get(metric)
        if cem is None:
            parts.append(f'<p class="note">No cem_{escape(metric)}.csv: no interactive map for {escape(metric)}.</p>')
            continue
        element_id = f"cem-data-{slug(metric)}"
        svg, data = cem_svg(cem, metric, element_id, texts)
        parts.append(
            f"<h3>{escape(metric)}</h3><p>Hover a cell for the model, the prompt and the value.</p>"
            f'<div class="cem-wrap">{svg}</div>{json_script(element_id, data)}'
        )
    return "\n".join(parts)


def findings_html(section: Any) -> str:
    """The question's findings (``run_statistics``: one sentence per claim, with effect, interval and MDE), or ''."""
    sentences = section.get("findings") if isinstance(section, Mapping) else None
    if not isinstance(sentences, list) or not sentences:
        return ""
    items = "".join(f"<li>{escape(str(sentence))}</li>" for sentence in sentences)
    return f'<div class="findings"><h3>Findings</h3><ul>{items}</ul></div>'


def question_section(question: str, results: Results, figures: list[RenderedFigure]) -> str:
    section = results.summary.get(question)
    parts = [f'<section id="{question}"><h2>{escape(QUESTION_TITLES[question])}</h2>']
    if question == "methods":
        parts.append(method_structural_zeros(section))
    parts.append(findings_html(section))
    if isinstance(section, Mapping) and all(m in section for m in results.metrics) and results.metrics:
        for metric in results.metrics:
            parts.append(f"<h3>Tests: {escape(metric)}</h3>{summary_html(section[metric])}")
    elif isinstance(section, Mapping):
        parts.append(summary_html(section))
    else:
        parts.append(f'<p class="note">summary.json has no {escape(question)} results.</p>')
    parts += [figure_html(f) for f in figures if f.question == question]
    parts.append("</section>")
    return "\n".join(parts)


def provenance_section(results: Results) -> str:
    provenance = results.manifest.get("provenance") or {}
    parts = [
        '<section id="provenance"><h2>Provenance</h2>',
        "<dl>"
        + "".join(
            f"<dt>{escape(k)}</dt><dd>{escape(str(results.manifest.get(k)))}</dd>"
            for k in ("store", "created_at", "cemaps_version")
            if k in results.manifest
        )
        + "</dl>",
    ]
    packages = provenance.get("packages") if isinstance(provenance, Mapping) else None
    if isinstance(packages, Mapping):
        parts.append(records_html([{"package": k, "version": v} for k, v in packages.items()], "package versions"))
    models = results.tables.get("models")
    if models is not None:
        parts.append(records_html(json.loads(models.to_json(orient="records")), "models (models.csv)"))
    parts.append(
        "<h3>Base model, settings and everything else recorded</h3>"
        f"<pre>{escape(json.dumps(provenance, indent=2, default=str))}</pre></section>"
    )
    return "\n".join(parts)


def data_section(results: Results, out_dir: Path) -> str:
    items = []
    for name, path in sorted(results.files.items()):
        relative = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
        items.append(f'<li><a href="{href(relative)}">{escape(path.name)}</a> ({escape(name)})</li>')
    notes = "".join(f"<li>{escape(n)}</li>" for n in results.notes)
    return (
        '<section id="data"><h2>Data files</h2><p>Links are relative to this report.</p>'
        f"<ul>{''.join(items)}</ul>"
        + (f'<p>Not found:</p><ul class="note">{notes}</ul>' if notes else "")
        + "</section>"
    )


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Writes ``out_dir/report.html`` (self-contained) and its figures under ``out_dir/figures/``.

    Args:
        results_dir: folder written by ``cemaps analyze``.
        out_dir: where the report goes (created if absent).

    Returns:
        Path of ``report.html``.
    """
    results = load_results(results_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = render_figures(results, out_dir / FIGURES_DIR)
    skipped = [f for f in figures if f.note]
    in_context = in_context_section(results)  # '' when the study ran no in-context prompt set
    extra = [(section, section.body(results)) for section in report_sections()]  # '' unless the study is its kind
    optional = (("in_context",) if in_context else ()) + tuple(section.id for section, html in extra if html)
    sections = ("cem", *QUESTIONS, *optional, "provenance", "data")
    nav = " ".join(f'<a href="#{q}">{escape(q.replace("_", " "))}</a>' for q in sections)
    banners = [tiny_model_banner(results), *(section.banner(results) for section, _ in extra)]
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>cemaps report</h1><p>Made {created} from <code>{escape(str(results.folder))}</code>; metrics: "
        f"{escape(', '.join(results.metrics) or 'none')}.</p>",
        *banners,
        f"<nav>{nav}</nav>",
        f'<section id="cem"><h2>Concept Entanglement Maps</h2>{structural_zero_note(results)}'
        f"{interactive_cems(results)}</section>",
        *[question_section(q, results, figures) for q in QUESTIONS],
        in_context,
        *(html for _, html in extra),
        provenance_section(results),
        data_section(results, out_dir),
    ]
    if skipped:
        body.insert(
            1 + len(banners),
            f'<p class="note">{len(skipped)} figure(s) skipped for absent inputs; see their sections.</p>',
        )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>cemaps report</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}"
        f'<div id="cem-tooltip" role="tooltip" hidden></div><script>{TOOLTIP_SCRIPT}</script></body></html>'
    )
    path = out_dir / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
