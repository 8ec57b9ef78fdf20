"""One look for every cemaps figure: colour-blind-safe colours, sizes, and how figures are saved.

Figures are plain :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas; nothing here touches pyplot or the global ``rcParams``, so importing the
report never changes a notebook's matplotlib state.

Example:
    >>> fig = new_figure(4, 3)
    >>> ax = fig.add_subplot()
    >>> method_colours(["ti", "lora"])["lora"]
    '#E69F00'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cemaps.errors import ConfigError

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000")
# Perceptually uniform and readable in grey scale; used for every heat map.
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "PuOr_r"
BLOCK_COLOURS = {"down": "#0072B2", "mid": "#009E73", "up": "#D55E00", "other": "#999999"}
SIGNIFICANT_MARK = "*"
GRID_COLOUR = "#DDDDDD"
TEXT_SIZE = 9
TITLE_SIZE = 10
DPI = 150
FORMATS = ("png", "svg")


def new_figure(width: float, height: float) -> Figure:
    """An empty figure (inches) on the Agg canvas, laid out with constrained layout."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style_axes(ax: Axes, title: str, xlabel: str, ylabel: str) -> Axes:
    """Titles, labels and a light grid in the house style; returns ``ax``."""
    ax.set_title(title, fontsize=TITLE_SIZE, loc="left")
    ax.set_xlabel(xlabel, fontsize=TEXT_SIZE)
    ax.set_ylabel(ylabel, fontsize=TEXT_SIZE)
    ax.tick_params(labelsize=TEXT_SIZE - 1)
    ax.grid(True, axis="y", color=GRID_COLOUR, linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def method_colours(methods: Iterable[str]) -> dict[str, str]:
    """A fixed colour per method name: the sorted names take the Okabe-Ito colours in turn."""
    names = sorted({str(m) for m in methods})
    return {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(names)}


def figure_stem(name: str) -> str:
    """A file stem from a figure name: lower case letters, digits, '-' and '_' only."""
    stem = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    if not stem:
        raise ConfigError(f"figure name {name!r}: expected letters or digits to name its files")
    return stem


def save_figure(fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Writes ``fig`` as ``<out_dir>/<name>.<format>`` for each format.

    Returns:
        format -> path written.
    """
    unknown = [f for f in formats if f not in ("png", "svg", "pdf")]
    if unknown or not formats:
        raise ConfigError(f"figure formats {list(formats)}: expected a non-empty subset of ['png', 'svg', 'pdf']")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = figure_stem(name)
    written = {}
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        # No creation date in vector files: re-rendering the same results should not look like a change.
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None
        fig.savefig(path, format=fmt, dpi=DPI, metadata=metadata)
        written[fmt] = path
    return written
