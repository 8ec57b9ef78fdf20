"""Dendrograms of the prompt and model clusterings.

The trees come from the summary's linkage matrices (``summary["clustering"]``)
when they are there, so the figure shows exactly the clustering that was
tested; otherwise they are computed from the CEM with scipy (average linkage,
correlation distance, falling back to Euclidean for constant profiles).

Example:
    >>> import numpy as np, pandas as pd
    >>> cem = pd.DataFrame(np.arange(12.0).reshape(3, 4) ** 2, index=["m0", "m1", "m2"],
    ...                    columns=["p0", "p1", "p2", "p3"])
    >>> linkage, ids = linkage_from_cem(cem, "prompts")
    >>> linkage.shape, ids
    ((3, 4), ['p0', 'p1', 'p2', 'p3'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist

from cemaps.errors import ConfigError
from cemaps.report import style

WHAT = ("prompts", "models")


def _flat_ids(index: pd.Index) -> list[str]:
    """The id level of a (possibly 3-level) CEM axis: its last level."""
    return [str(v) for v in index.get_level_values(index.nlevels - 1)]


def linkage_from_cem(cem: pd.DataFrame, what: str, method: str = "average") -> tuple[np.ndarray, list[str]]:
    """Linkage matrix [n - 1 x 4] of the CEM's prompts (columns) or models (rows), and their ids.

    Correlation distance compares profile shapes; a constant profile has none, so
    then the whole tree uses Euclidean distance.
    """
    if what not in WHAT:
        raise ConfigError(f"what={what!r}: expected one of {list(WHAT)}")
    filled = cem.apply(lambda column: column.fillna(column.mean())).fillna(0.0)
    profiles = filled.to_numpy(np.float64).T if what == "prompts" else filled.to_numpy(np.float64)
    ids = _flat_ids(cem.columns if what == "prompts" else cem.index)
    if len(ids) < 2:
        raise ConfigError(f"cem: {len(ids)} {what}; a dendrogram needs at least 2")
    distances = pdist(profiles, metric="correlation")
    if not np.all(np.isfinite(distances)):
        distances = pdist(profiles, metric="euclidean")
    return hierarchy.linkage(distances, method=method, optimal_ordering=True), ids


def linkage_from_summary(clustering: Mapping[str, Any] | None, what: str) -> tuple[np.ndarray, list[str]] | None:
    """(linkage, ids) of ``clustering[what]`` as written by ``analysis.stats_clustering.cluster``, or None."""
    entry = clustering.get(what) if isinstance(clustering, Mapping) else None
    if not isinstance(entry, Mapping) or "linkage" not in entry or "ids" not in entry:
        return None
    linkage = np.asarray(entry["linkage"], dtype=np.float64)
    ids = [str(i) for i in entry["ids"]]
    if linkage.ndim != 2 or linkage.shape != (len(ids) - 1, 4):
        raise ConfigError(
            f"summary clustering.{what}.linkage has shape {linkage.shape}; expected "
            f"({len(ids) - 1}, 4) for {len(ids)} ids"
        )
    return linkage, ids


def dendrogram(
    linkage: np.ndarray, ids: Sequence[str], title: str, groups: Mapping[str, str] | None = None, group_name: str = ""
) -> Figure:
    """A dendrogram with leaves labelled by id, coloured by their group (e.g. abstractness or method).

    Args:
        linkage: [n - 1 x 4] scipy linkage matrix.
        ids: the n leaf ids, in the order the linkage numbers them.
        title: the figure title.
        groups: optional id -> group label; leaf labels take the group's colour and a legend.
        group_name: what the groups are (legend title), e.g. ``"abstractness"``.
    """
    ids = [str(i) for i in ids]
    fig = style.new_figure(max(5.0, 1.0 + 0.18 * len(ids)), 3.8)
    ax = fig.add_subplot()
    tree = hierarchy.dendrogram(
        np.asarray(linkage, dtype=np.float64),
        labels=ids,
        ax=ax,
        leaf_rotation=90,
        leaf_font_size=style.TEXT_SIZE - 2,
        color_threshold=0,
        above_threshold_color="#555555",
    )
    style.style_axes(ax, title, "", "linkage distance")
    ax.grid(False)
    if groups:
        names = sorted({str(groups.get(i, "n/a")) for i in ids})
        colours = {name: style.OKABE_ITO[k % len(style.OKABE_ITO)] for k, name in enumerate(names)}
        for label in ax.get_xticklabels():
            label.set_color(colours[str(groups.get(label.get_text(), "n/a"))])
        for name in names:
            ax.plot([], [], marker="s", linestyle="none", color=colours[name], label=name)
        ax.legend(
            title=group_name,
            fontsize=style.TEXT_SIZE - 1,
            title_fontsize=style.TEXT_SIZE - 1,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    if len(tree["ivl"]) != len(ids):
        raise ConfigError(f"dendrogram: {len(tree['ivl'])} leaves drawn for {len(ids)} ids")
    return fig


def cluster_dendrograms(cem: pd.DataFrame, clustering: Mapping[str, Any] | None = None) -> dict[str, Figure]:
    """``{"prompt_dendrogram": fig, "model_dendrogram": fig}`` for one CEM.

    Args:
        cem: [n_models x n_prompts] map with 3-level labels (its group labels colour the leaves).
        clustering: the summary's clustering results for this metric, if any.
    """
    figures = {}
    for what, name in (("prompts", "prompt_dendrogram"), ("models", "model_dendrogram")):
        axis = cem.columns if what == "prompts" else cem.index
        from_summary = linkage_from_summary(clustering, what)
        linkage, ids = from_summary if from_summary is not None else linkage_from_cem(cem, what)
        # the first label level (abstractness for prompts, method for models) colours the leaves
        groups = (
            dict(zip(_flat_ids(axis), map(str, axis.get_level_values(0)), strict=True)) if axis.nlevels > 1 else None
        )
        source = "summary linkage" if from_summary is not None else "average linkage on the CEM"
        label = "abstractness" if what == "prompts" else "method"
        figures[name] = dendrogram(linkage, ids, f"Clustering of {what} ({source})", groups, label)
    return figures
