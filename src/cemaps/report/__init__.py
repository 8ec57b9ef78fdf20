"""Figures and the self-contained HTML report of a results folder written by ``cemaps analyze``.

Example:
    >>> from cemaps.report import write_report                   # doctest: +SKIP
    >>> write_report("results/", "report/")                       # doctest: +SKIP
    PosixPath('report/report.html')
"""

from cemaps.report.dendrograms import cluster_dendrograms, dendrogram
from cemaps.report.disruption_figures import abstractness_disruption, cem_heatmap, method_disruption, similarity_scatter
from cemaps.report.figures import RenderedFigure, make_figures, render_figures
from cemaps.report.html import write_report
from cemaps.report.layer_figures import attention_shift_per_layer, layer_correlation, weight_delta_per_layer
from cemaps.report.overlays import attention_overlay, choose_overlay
from cemaps.report.results import Results, load_results

__all__ = [
    "RenderedFigure",
    "Results",
    "abstractness_disruption",
    "attention_overlay",
    "attention_shift_per_layer",
    "choose_overlay",
    "cem_heatmap",
    "cluster_dendrograms",
    "dendrogram",
    "layer_correlation",
    "load_results",
    "make_figures",
    "method_disruption",
    "render_figures",
    "similarity_scatter",
    "weight_delta_per_layer",
    "write_report",
]
