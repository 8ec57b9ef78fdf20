"""The interactive Concept Entanglement Map: an inline SVG heat map with a hover tooltip (vanilla JS, inline).

Each cell is an SVG ``rect`` with its row and column index; columns are labelled by the
prompts' text where it fits (issue 25), groups by abstractness / domain above; the labels (model,
method, subject, prompt id, prompt text, abstractness, domain) and values sit
once in a JSON block, and one script shows them in a tooltip under the pointer.
Nothing is fetched.

Example:
    >>> import pandas as pd
    >>> cem = pd.DataFrame([[0.1, 0.5]], index=pd.MultiIndex.from_tuples([("lora", "dog", "lora-dog")]),
    ...                    columns=pd.MultiIndex.from_tuples([("concrete", "animals", "p0"),
    ...                                                       ("abstract", "styles", "p1")]))
    >>> svg, data = cem_svg(cem, "alignment_drop", "cem-alignment_drop", {"p0": "a dog", "p1": "freedom"})
    >>> svg.count('class="cell"'), data["prompts"][0]["text"]  # columns sorted: abstract first
    (2, 'freedom')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_hex

from cemaps.report.disruption_figures import METRIC_UNITS, group_spans, prompt_label
from cemaps.report.safe_html import slug
from cemaps.report.style import DIVERGING_CMAP, SEQUENTIAL_CMAP

LEFT, TOP, RIGHT, BOTTOM = 190, 70, 150, 60
MISSING_FILL = "#E8E8E8"
PROMPT_LABEL_PX = 13.0  # column width (px) that one rotated 11 px label needs; narrower columns: groups only
CHAR_PX = 6.5  # mean advance of an 11 px system-ui character, for the room under the map
LABEL_GAP = 6.0

TOOLTIP_SCRIPT = """
(function () {
  "use strict";
  var tip = document.getElementById("cem-tooltip");
  function line(label, text) {
    var row = document.createElement("div");
    var key = document.createElement("b");
    key.textContent = label + ": ";
    row.appendChild(key);
    row.appendChild(document.createTextNode(text));
    return row;
  }
  document.querySelectorAll("svg.cem").forEach(function (svg) {
    var data = JSON.parse(document.getElementById(svg.getAttribute("data-source")).textContent);
    svg.addEventListener("mousemove", function (event) {
      var cell = event.target;
      if (!cell.classList || !cell.classList.contains("cell")) { tip.hidden = true; return; }
      var model = data.models[+cell.getAttribute("data-i")];
      var prompt = data.prompts[+cell.getAttribute("data-j")];
      var value = data.values[+cell.getAttribute("data-i")][+cell.getAttribute("data-j")];
      tip.replaceChildren(
        line("model", model.model_id + " (" + model.method + " / " + model.subject_id + ")"),
        line("prompt", prompt.prompt_id + ": \\u201c" + prompt.text + "\\u201d"),
        line("abstractness / domain", prompt.abstractness + " / " + prompt.domain),
        line(data.metric, value === null ? "n/a" : value.toPrecision(4)));
      tip.hidden = false;
      tip.style.left = (event.pageX + 14) + "px";
      tip.style.top = (event.pageY + 14) + "px";
    });
    svg.addEventListener("mouseleave", function () { tip.hidden = true; });
  });
})();
"""


def _cell_size(count: int, span: float, low: float, high: float) -> float:
    return float(min(high, max(low, span / max(count, 1))))


def cem_svg(cem: pd.DataFrame, metric: str, element_id: str, prompt_texts: Mapping[str, str]) -> tuple[str, dict]:
    """SVG markup of the map and the JSON-able data its tooltip reads.

    Args:
        cem: [n_models x n_prompts], 3-level rows (method, subject_id, model_id) and columns
            (abstractness, domain, prompt_id).
        metric: the metric's name.
        element_id: id of the ``<script type="application/json">`` holding the data; also the prefix of
            the legend's gradient id, so it must be a safe slug (``safe_html.slug``).
        prompt_texts: prompt_id -> text (from ``prompts.csv``); absent texts show as '' in the tooltip.
            Where a column is at least ``PROMPT_LABEL_PX`` wide, each prompt is labelled under the map by
            its text (``prompt_label``: 28 characters, then an ellipsis; its id when it has no text), with
            the whole text as the label's SVG title; narrower columns keep the group labels only.

    Returns:
        (svg markup, data) with data = {metric, models, prompts, values [n_models][n_prompts]}.
    """
    if slug(element_id) != element_id:
        raise ValueError(f"element_id {element_id!r}: expected a slug (letters, digits, '_' and '-')")
    cem = cem.sort_index(axis=0).sort_index(axis=1)
    values = cem.to_numpy(dtype=np.float64)
    n_models, n_prompts = values.shape
    width = _cell_size(n_prompts, 900.0, 4.0, 28.0)
    height = _cell_size(n_models, 520.0, 6.0, 26.0)
    finite = values[np.isfinite(values)]
    norm = Normalize(float(finite.min()) if finite.size else 0.0, float(finite.max()) if finite.size else 1.0)
    cmap = colormaps[SEQUENTIAL_CMAP]
    if finite.size and finite.min() < 0:  # signed: diverging, centred at 0, as in the PNG (cem_heatmap)
        limit = float(np.abs(finite).max())
        norm, cmap = Normalize(-limit, limit), colormaps[DIVERGING_CMAP]
    cells = []
    for i in range(n_models):
        for j in range(n_prompts):
            fill = to_hex(cmap(norm(values[i, j]))) if np.isfinite(values[i, j]) else MISSING_FILL
            cells.append(
                f'<rect class="cell" data-i="{i}" data-j="{j}" x="{LEFT + j * width:.2f}" '
                f'y="{TOP + i * height:.2f}" width="{width:.2f}" height="{height:.2f}" fill="{fill}"/>'
            )
    rows = list(zip(cem.index.get_level_values(0), cem.index.get_level_values(1), strict=True))
    cols = list(zip(cem.columns.get_level_values(0), cem.columns.get_level_values(1), strict=True))
    labels = []
    for (method, subject), start, stop in group_spans(rows):
        y = TOP + (start + stop) / 2 * height
        labels.append(
            f'<text class="label" x="{LEFT - 6}" y="{y:.1f}" text-anchor="end" dominant-baseline="middle">'
            f"{escape(str(method))} / {escape(str(subject))}</text>"
        )
        labels.append(
            f'<line class="sep" x1="{LEFT - 4}" x2="{LEFT + n_prompts * width}" y1="{TOP + start * height:.2f}"'
            f' y2="{TOP + start * height:.2f}"/>'
        )
    for (abstractness, domain), start, stop in group_spans(cols):
        x = LEFT + (start + stop) / 2 * width
        labels.append(
            f'<text class="label" x="{x:.1f}" y="{TOP - 8}" text-anchor="start" '
            f'transform="rotate(-30 {x:.1f} {TOP - 8})">{escape(str(abstractness))} / {escape(str(domain))}</text>'
        )
        labels.append(
            f'<line class="sep" x1="{LEFT + start * width:.2f}" x2="{LEFT + start * width:.2f}" y1="{TOP - 4}"'
            f' y2="{TOP + n_models * height:.2f}"/>'
        )
    prompt_labels = []
    label_space = 0.0
    if width >= PROMPT_LABEL_PX:  # one label per prompt fits: its text, read downwards under its column
        texts = [prompt_label(prompt_texts.get(str(p)) or str(p)) for p in cem.columns.get_level_values(2)]
        label_space = LABEL_GAP + CHAR_PX * max(len(t) for t in texts)
        y = TOP + n_models * height + LABEL_GAP
        for j, (text, full) in enumerate(zip(texts, cem.columns.get_level_values(2), strict=True)):
            x = LEFT + (j + 0.5) * width
            title = prompt_texts.get(str(full)) or str(full)
            # the whole text as the group's title (the browser's own tooltip), outside the label's text
            prompt_labels.append(
                f"<g><title>{escape(title)}</title>"
                f'<text class="label prompt" data-j="{j}" x="{x:.1f}" y="{y:.1f}" dominant-baseline="middle" '
                f'transform="rotate(90 {x:.1f} {y:.1f})">{escape(text)}</text></g>'
            )
    total_w = LEFT + n_prompts * width + RIGHT
    total_h = TOP + n_models * height + label_space + BOTTOM
    legend_y = TOP + n_models * height + label_space + 20
    stops = "".join(f'<stop offset="{t:.2f}" stop-color="{to_hex(cmap(t))}"/>' for t in np.linspace(0, 1, 11))
    legend = (
        f'<defs><linearGradient id="{element_id}-gradient">{stops}</linearGradient></defs>'
        f'<rect x="{LEFT}" y="{legend_y}" width="200" height="10" fill="url(#{element_id}-gradient)"/>'
        f'<text class="label" x="{LEFT - 6}" y="{legend_y + 9}" text-anchor="end">{norm.vmin:.3g}</text>'
        f'<text class="label" x="{LEFT + 206}" y="{legend_y + 9}">{norm.vmax:.3g}</text>'
        f'<text class="label" x="{LEFT}" y="{legend_y + 24}">{escape(METRIC_UNITS.get(metric, metric))}</text>'
    )
    svg = (
        f'<svg class="cem" data-source="{escape(element_id)}" role="img" viewBox="0 0 {total_w:.0f} {total_h:.0f}" '
        f'width="{total_w:.0f}" height="{total_h:.0f}"><title>Concept Entanglement Map: {escape(metric)}</title>'
        f"{''.join(cells)}{''.join(labels)}{''.join(prompt_labels)}{legend}</svg>"
    )
    models = [dict(method=str(m), subject_id=str(s), model_id=str(i)) for m, s, i in cem.index]
    prompts = [
        dict(abstractness=str(a), domain=str(d), prompt_id=str(p), text=str(prompt_texts.get(str(p), "")))
        for a, d, p in cem.columns
    ]
    data = {
        "metric": metric,
        "models": models,
        "prompts": prompts,
        "values": [[float(v) if np.isfinite(v) else None for v in row] for row in values],
    }
    return svg, data


def json_script(element_id: str, data: Any) -> str:
    """Data for the page's scripts; '<' is escaped so no text in it can close the script element."""
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{escape(element_id)}">{text}</script>'
