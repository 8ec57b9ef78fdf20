"""The report section "Toy-world ground truth": which layers localise, and which subjects were learned.

Reads ``toyworld_localisation.csv`` and ``toyworld_subjects.csv`` from the results folder
(written by ``cemaps analyze`` for toy-world studies; :mod:`cemaps.toyworld.ground_truth`).
Registered with the report by :func:`cemaps.toyworld.register` (:mod:`cemaps.report.sections`).
Both compare what the model did with what the world knows: the object's mask found in the
pixels, and whether the subject appears. The section is absent for other studies.

Example:
    >>> from cemaps.report.results import Results, mentions
    >>> import pathlib
    >>> toy_world_section(Results(pathlib.Path("."), {}, {}, {}, {}, {}))
    ''
"""

from __future__ import annotations

import base64
import io
from html import escape

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cemaps.report.html_tables import frame_records, records_html
from cemaps.report.results import Results, mentions
from cemaps.report.style import OKABE_ITO, TEXT_SIZE, TITLE_SIZE, new_figure
from cemaps.toyworld.assets import TOYWORLD_MODEL_ID
from cemaps.toyworld.attention import DAAM_THRESHOLD
from cemaps.toyworld.ground_truth import ALL_LAYERS, FILES, best_layer
from cemaps.toyworld.subject_check import SUBJECT_RATE_TARGET

SECTION_ID = "toy_world"
TITLE = "Toy-world ground truth"
MIOU_TARGET = 0.5  # issue 11's bar for the best layer
WORD_COLOURS = {"colour": OKABE_ITO[0], "shape": OKABE_ITO[3]}


def _short(layer: str) -> str:
    return layer.removesuffix(".transformer_blocks.0.attn2").replace("_blocks", "").replace("attentions", "a")


def layer_order(localisation: pd.DataFrame, layers: pd.DataFrame | None) -> list[str]:
    """Layers in the UNet's order (``layers.csv``'s ``order``; else by name), then ``"all layers"``."""
    present = [layer for layer in localisation["layer"].unique() if layer != ALL_LAYERS]
    if layers is not None and {"layer", "order"} <= set(layers.columns):
        rank = dict(zip(layers["layer"], layers["order"], strict=False))
        present.sort(key=lambda layer: (rank.get(layer, np.inf), layer))
    else:
        present.sort()
    return present + ([ALL_LAYERS] if (localisation["layer"] == ALL_LAYERS).any() else [])


def localisation_figure(localisation: pd.DataFrame, layers: pd.DataFrame | None = None) -> Figure:
    """Grouped bars: mIoU of the colour and shape words' maps per layer (UNet order), DAAM's protocol."""
    order = layer_order(localisation, layers)
    fig = new_figure(max(6.0, 0.42 * len(order) + 1.5), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(order))
    for offset, word in ((-0.2, "colour"), (0.2, "shape")):
        values = localisation[localisation["word"] == word].set_index("layer")["miou"].reindex(order)
        ax.bar(x + offset, values.to_numpy(), width=0.4, color=WORD_COLOURS[word], label=f"{word} word")
    ax.axhline(MIOU_TARGET, color="#555555", linestyle="--", linewidth=0.8, label=f"mIoU {MIOU_TARGET}")
    ax.set_xticks(x, [_short(layer) for layer in order], rotation=60, ha="right", fontsize=TEXT_SIZE - 1)
    ax.set_ylabel("mIoU with the judged object mask", fontsize=TEXT_SIZE)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=TEXT_SIZE - 1, frameon=False, loc="upper left")
    ax.set_title("Which layers localise: word maps vs. the object found in the pixels", loc="left", fontsize=TITLE_SIZE)
    return fig


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _read(results: Results, key: str) -> pd.DataFrame | None:
    listed = results.manifest.get("files") if isinstance(results.manifest.get("files"), dict) else {}
    path = results.folder / str(listed.get(f"toyworld_{key}", FILES[key]))
    return pd.read_csv(path, dtype={"model_id": str, "subject_id": str}) if path.is_file() else None


def findings(results: Results) -> list[str]:
    """One sentence per toy-world table present: the best localising layer, the subjects learned."""
    sentences = []
    localisation, subjects = _read(results, "localisation"), _read(results, "subjects")
    if localisation is not None and not localisation.empty:
        best, best_miou, worst, worst_miou = best_layer(localisation)
        sentences.append(
            f"Attention localises best at {_short(best)} (mIoU {best_miou:.2f}, mean of the "
            f"colour and shape words) and worst at {_short(worst)} ({worst_miou:.2f})."
        )
    if subjects is not None and not subjects.empty:
        learned = subjects[subjects["learned"].astype(bool)]
        sentences.append(
            f"{len(learned)} of {len(subjects)} personalizations render their subject in >= "
            f"{SUBJECT_RATE_TARGET:.0%} of their in-context images (mean rate {subjects['rate'].mean():.2f}; "
            f"base model with the class word: {subjects['base_rate'].mean():.2f})."
        )
    return sentences


def toy_world_banner(results: Results, model_id: str = TOYWORLD_MODEL_ID) -> str:
    """A banner naming the toy world as the base, with :func:`findings`; '' for other bases."""
    if not mentions(results.manifest, model_id):
        return ""
    # the best of many layers over a few images is a pick, not a finding: it stays in the section, not here
    said = " ".join(escape(s) for s in findings(results) if not s.startswith("Attention localises best"))
    return (
        f'<p class="banner" id="toy-world-base"><b>Base model: {escape(model_id)}</b>, the toy world trained by '
        "cemaps on rendered 32x32 scenes whose truth is known; its numbers are about the toy world, not "
        f'Stable Diffusion v1.5. {said} <a href="#{SECTION_ID}">Toy-world ground truth</a></p>'
    )


def toy_world_section(results: Results) -> str:
    """The section's HTML, or '' when the results hold neither toy-world table."""
    localisation, subjects = _read(results, "localisation"), _read(results, "subjects")
    if localisation is None and subjects is None:
        return ""
    parts = [f'<section id="{SECTION_ID}"><h2>{escape(TITLE)}</h2>']
    if localisation is not None and not localisation.empty:
        layer, miou, _, _ = best_layer(localisation)
        n_layers = localisation.loc[localisation["layer"] != ALL_LAYERS, "layer"].nunique()
        counts = localisation.iloc[0]
        caption = (
            f"Cross-attention maps of the colour and shape words as segmentations (DAAM [Tang et al. 2023]: bilinear "
            f"upsampling, "
            f"max-normalised, threshold {DAAM_THRESHOLD}), against the mask of the asked-colour object that the pixel "
            f"judge found in the base model's image, for the single-object concrete prompts; mIoU over "
            f"{int(counts['images'])} images ({int(counts['images_without_object'])} more had no object of the asked "
            f"colour and are not scored). Highest of {n_layers} layers: {layer} (mIoU {miou:.2f}, "
            "mean of the two words; the best of many layers over few images is a pick, not a finding). "
            f"'{ALL_LAYERS}' averages the upsampled maps first. (toyworld_localisation.csv)"
        )
        fig = localisation_figure(localisation, results.tables.get("layers"))
        parts.append(
            f'<figure id="fig-toyworld-localisation"><img alt="{escape(caption)}" '
            f'src="data:image/png;base64,{_png(fig)}"><figcaption>{escape(caption)}</figcaption></figure>'
        )
    if subjects is not None and not subjects.empty:
        learned = int(subjects["learned"].astype(bool).sum())
        parts.append(
            f"<p>Did each personalization learn its subject? Every image of the subjects-in-context prompts is "
            f"judged from its pixels (cemaps.toyworld.subject_check); <code>rate</code> is the share showing the "
            f"subject, <code>base_rate</code> the base model's share on the same templates with the class word. "
            f"{learned} of {len(subjects)} models reach {SUBJECT_RATE_TARGET:.0%}.</p>"
        )
        parts.append(records_html(frame_records(subjects), "subject check per model (toyworld_subjects.csv)"))
    parts.append("</section>")
    return "\n".join(parts)
