"""Per-layer figures: attention shift, its correlation with disruption, and weight-delta norms.

The x axis is always the UNet's layers in execution order (down -> mid -> up),
labelled with block and latent resolution from ``layers.csv`` when it is given.

Example:
    >>> import pandas as pd
    >>> shift = pd.DataFrame({"layer": ["down_blocks.0.a", "up_blocks.0.a"] * 2, "method": ["lora"] * 4,
    ...                       "attention_shift": [0.1, 0.2, 0.3, 0.4]})
    >>> fig = attention_shift_per_layer(shift)
    >>> fig.axes[0].get_xlabel()
    'layer (UNet order: down -> mid -> up)'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats

from cemaps.analysis.stats.common import P_HOLM_QUESTION
from cemaps.errors import ConfigError
from cemaps.labelled import TRANSFORMER_BLOCK_DEPTH, transformer_depth
from cemaps.report import style
from cemaps.report.results import require_table

X_LABEL = "layer (UNet order: down -> mid -> up)"
X_LABEL_DEPTH = "layer (transformer depth order)"
_BLOCK_OF_PREFIX = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
_BLOCK_RANK = {"down": 0, "mid": 1, "up": 2, "other": 3}
SIGNIFICANCE_P = 0.05  # on p_holm_question, the p the report's table and findings judge by


def block_of(path: str) -> str:
    """``down``, ``mid``, ``up`` or ``other`` for a UNet module path."""
    for part in path.split("."):
        if part in _BLOCK_OF_PREFIX:
            return _BLOCK_OF_PREFIX[part]
    return "other"


def unet_order_key(path: str) -> tuple:
    """Sort key: block (down, mid, up, other), a transformer's block list (double- then single-stream), then
    the path with numbers compared as numbers."""
    parts = re.split(r"(\d+)", path)
    return (
        _BLOCK_RANK[block_of(path)],
        transformer_depth(path),
        *[(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts],
    )


def x_label(names: Sequence[str]) -> str:
    """The layer axis' label: UNet order, or depth order for a transformer (no down/mid/up blocks)."""
    return X_LABEL if any(block_of(str(n)) != "other" for n in names) else X_LABEL_DEPTH


def layer_axis(names: Sequence[str], layers: pd.DataFrame | None = None) -> tuple[list[str], list[str]]:
    """Layers in UNet order and their tick labels.

    Args:
        names: layer module paths to place.
        layers: optional ``layers.csv`` (layer, order, block, resolution); gives the order and
            labels like ``down 16x16``. Without it the order comes from the module paths.

    Returns:
        (ordered layer names, tick labels).
    """
    names = list(dict.fromkeys(map(str, names)))
    info = None
    if layers is not None and "layer" in layers.columns:
        info = layers.assign(layer=layers["layer"].astype(str)).drop_duplicates("layer").set_index("layer")
    if info is not None and "order" in info.columns and all(n in info.index for n in names):
        ordered = sorted(names, key=lambda n: (float(info.loc[n, "order"]), unet_order_key(n)))
    else:
        ordered = sorted(names, key=unet_order_key)
    labels = []
    for i, name in enumerate(ordered):
        block = (
            str(info.loc[name, "block"])
            if info is not None and name in info.index and "block" in info.columns
            else block_of(name)
        )
        label = f"{i} {block}"
        if info is not None and name in info.index and "resolution" in info.columns:
            resolution = info.loc[name, "resolution"]
            if pd.notna(resolution):
                label += f" {int(resolution)}x{int(resolution)}"
        labels.append(label)
    return ordered, labels


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    if values.size < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    low, high = stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=stats.sem(values))
    return float(low), float(high)


def attention_shift_per_layer(shift: pd.DataFrame, layers: pd.DataFrame | None = None) -> Figure:
    """Mean attention shift per layer and method, with a 95% t interval over (model, prompt, seed) rows.

    Args:
        shift: ``attention_shift.csv`` rows (layer, method, attention_shift).
        layers: optional ``layers.csv`` for order and tick labels.
    """
    require_table(shift, ["layer", "method", "attention_shift"], "attention_shift")
    ordered, labels = layer_axis(shift["layer"].unique(), layers)
    position = {name: i for i, name in enumerate(ordered)}
    methods = sorted(shift["method"].astype(str).unique())
    colours = style.method_colours(methods)
    fig = style.new_figure(max(5.0, 1.5 + 0.32 * len(ordered)), 4.0)
    ax = fig.add_subplot()
    for method in methods:
        part = shift[shift["method"].astype(str) == method]
        points = []  # (x, mean, ci low, ci high) per layer
        for layer, group in part.groupby(part["layer"].astype(str), sort=False):
            values = group["attention_shift"].dropna().to_numpy(np.float64)
            if values.size:
                points.append((position[layer], float(values.mean()), *_t_interval(values)))
        xs, means, lows, highs = np.array(sorted(points)).T
        ax.plot(xs, means, marker="o", markersize=3, color=colours[method], label=method)
        ax.fill_between(xs, lows, highs, color=colours[method], alpha=0.2, linewidth=0)
    ax.set_xticks(range(len(ordered)), labels, rotation=90)
    style.style_axes(
        ax, "Attention shift per layer (mean, 95% CI)", x_label(ordered), "attention shift (JS divergence)"
    )
    ax.legend(title="method", fontsize=style.TEXT_SIZE - 1, title_fontsize=style.TEXT_SIZE - 1, frameon=False)
    return fig


def layer_correlation(correlations: pd.DataFrame, layers: pd.DataFrame | None = None, metric: str = "") -> Figure:
    """Per-layer Spearman rho between attention shift and disruption; '*' marks the layers whose p survives Holm.

    The mark follows the report's rule for every question (issue 21, item 5): a layer's
    prompt-permutation p (``p_perm``, null rate measured under shared prompt effects), Holm-adjusted
    over every layer and metric of the layer question (``p_holm_question``, set by ``run_statistics``),
    below 0.05. Benjamini-Hochberg q-values stay in the table but mark nothing. A summary without
    ``p_holm_question`` (written before it existed) marks nothing, and the legend says so.

    Args:
        correlations: records layer, rho and, when computed, p_holm_question (the summary's layer-linking table).
        layers: optional ``layers.csv`` for order and tick labels.
        metric: the disruption metric, for the axis label.
    """
    require_table(correlations, ["layer", "rho"], "layer correlations")
    table = correlations.assign(layer=correlations["layer"].astype(str)).drop_duplicates("layer").set_index("layer")
    ordered, labels = layer_axis(table.index, layers)
    table = table.loc[ordered]
    rho = pd.to_numeric(table["rho"], errors="coerce").to_numpy(np.float64)
    adjusted = table.get(P_HOLM_QUESTION)
    holm = (
        pd.to_numeric(adjusted, errors="coerce").to_numpy(np.float64)
        if adjusted is not None
        else np.full(len(ordered), np.nan)
    )
    fig = style.new_figure(max(5.0, 1.5 + 0.32 * len(ordered)), 3.8)
    ax = fig.add_subplot()
    colours = [style.BLOCK_COLOURS.get(block_of(n), style.BLOCK_COLOURS["other"]) for n in ordered]
    ax.bar(range(len(ordered)), np.nan_to_num(rho), color=colours)
    significant = np.isfinite(holm) & (holm < SIGNIFICANCE_P)
    for x in np.flatnonzero(significant):
        y = rho[x]
        ax.text(
            x,
            y + (0.02 if y >= 0 else -0.02),
            style.SIGNIFICANT_MARK,
            ha="center",
            va="bottom" if y >= 0 else "top",
            fontsize=style.TITLE_SIZE,
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ordered)), labels, rotation=90)
    low = float(np.nanmin(np.append(rho, 0.0)))
    high = float(np.nanmax(np.append(rho, 0.0)))
    pad = max(0.1, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    style.style_axes(
        ax, f"Spearman rho of attention shift with {metric or 'disruption'} per layer", x_label(ordered), "Spearman rho"
    )
    handles = [
        Patch(color=style.BLOCK_COLOURS[b], label=b)
        for b in ("down", "mid", "up")
        if any(block_of(n) == b for n in ordered)
    ]
    handles.append(
        Line2D(
            [],
            [],
            linestyle="none",
            marker="$*$",
            color="black",
            markersize=8,
            label=(
                f"Holm-adjusted p < {SIGNIFICANCE_P}"
                if adjusted is not None
                else "no Holm p in the summary: none marked"
            ),
        )
    )
    ax.legend(handles=handles, fontsize=style.TEXT_SIZE - 1, frameon=False, ncols=len(handles))
    return fig


def weight_delta_unit(module: str) -> str:
    """The layer a parameter's module belongs to: e.g. ``down_blocks.1.attentions.0`` for any module inside it.

    A UNet has hundreds of modules with weights; their deltas are pooled per
    attention/resnet unit so that one bar stands for one layer.
    """
    parts = module.split(".")
    # a transformer's unit is one block: transformer_blocks.3 (its attention, feed-forward and norms)
    depth = {"down_blocks": 4, "up_blocks": 4, "mid_block": 3, **dict.fromkeys(TRANSFORMER_BLOCK_DEPTH, 2)}.get(
        parts[0], 1
    )
    return ".".join(parts[:depth])


def weight_delta_per_layer(weight_deltas: pd.DataFrame, norm: str = "fro_norm") -> Figure:
    """Norm of the weight change per layer and method.

    Per model, the Frobenius norms of a unit's parameter deltas combine as
    sqrt(sum of squares) (the norm of all of them together); methods show the mean over their models.

    Args:
        weight_deltas: ``weight_deltas.csv`` rows (model_id, module, method, ``norm``).
        norm: the column with per-parameter Frobenius norms.
    """
    require_table(weight_deltas, ["model_id", "module", "method", norm], "weight_deltas")
    table = weight_deltas.assign(
        unit=weight_deltas["module"].astype(str).map(weight_delta_unit),
        squared=pd.to_numeric(weight_deltas[norm], errors="coerce") ** 2,
    )
    per_model = table.groupby(["method", "model_id", "unit"], sort=True)["squared"].sum().pow(0.5).rename("norm")
    per_method = per_model.groupby(level=["method", "unit"]).mean().unstack("method")
    if per_method.empty:
        raise ConfigError(f"weight_deltas: no finite {norm} values")
    units = sorted(per_method.index, key=unet_order_key)
    per_method = per_method.loc[units]
    methods = [str(m) for m in per_method.columns]
    colours = style.method_colours(methods)
    # One row per unit, read down the UNet: labels stay at the report's text size however many units
    # there are (issue 25: 48 vertical bars at the report's width made ~5 pt labels).
    fig = style.new_figure(7.0, 1.2 + 0.2 * len(units))
    ax = fig.add_subplot()
    height = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ax.barh(
            np.arange(len(units)) + (i - (len(methods) - 1) / 2) * height,
            per_method[method].fillna(0.0).to_numpy(),
            height=height,
            color=colours[method],
            label=method,
        )
    ax.set_yticks(
        range(len(units)), [f"{i} {block_of(u)} {u}" for i, u in enumerate(units)], fontsize=style.TEXT_SIZE - 1
    )
    ax.set_ylim(len(units) - 0.5, -0.5)  # the first unit at the top
    style.style_axes(ax, "Weight change per layer (mean over models)", f"||delta W|| ({norm})", x_label(units))
    ax.legend(
        title="method",
        fontsize=style.TEXT_SIZE - 1,
        title_fontsize=style.TEXT_SIZE - 1,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    return fig
