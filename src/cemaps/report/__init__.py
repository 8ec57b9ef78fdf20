"""Figures and the self-contained HTML report of a results folder written by ``cemaps analyze``.

What a user calls: :func:`write_report` (the HTML report), :func:`load_results` (the results
folder as DataFrames), :func:`make_figures` / :func:`render_figures` (every figure, as matplotlib
figures or written files), :func:`attention_overlay` / :func:`choose_overlay` (a stored map over
its image). The single figure builders live in their modules (``disruption_figures``,
``layer_figures``, ``dendrograms``). Names are imported on first use, so ``import cemaps.report``
does not import matplotlib.

Example:
    >>> from cemaps.report import write_report                   # doctest: +SKIP
    >>> write_report("results/", "report/")                       # doctest: +SKIP
    PosixPath('report/report.html')
"""

from importlib import import_module
from typing import TYPE_CHECKING

_LAZY = {
    "write_report": "html",
    "load_results": "results",
    "Results": "results",
    "make_figures": "figures",
    "render_figures": "figures",
    "RenderedFigure": "figures",
    "attention_overlay": "overlays",
    "choose_overlay": "overlays",
}
__all__ = [
    "RenderedFigure",
    "Results",
    "attention_overlay",
    "choose_overlay",
    "load_results",
    "make_figures",
    "render_figures",
    "write_report",
]

if TYPE_CHECKING:
    from cemaps.report.figures import RenderedFigure, make_figures, render_figures
    from cemaps.report.html import write_report
    from cemaps.report.overlays import attention_overlay, choose_overlay
    from cemaps.report.results import Results, load_results


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.report' has no attribute {name!r}")
    value = getattr(import_module(f"cemaps.report.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
