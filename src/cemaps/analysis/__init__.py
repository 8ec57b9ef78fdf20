"""Analysis: disruption metrics, Concept Entanglement Maps, statistics, layer linking, clustering.

Pure functions over arrays and tables, plus store-streaming wrappers; ``run_analysis``
ties them together into the results folder that ``cemaps report`` reads.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_LAZY = {
    "ClipScorer": "clip_scorer",
    "clip_score_from_embeddings": "clip_scorer",
    "attention_shift": "shift.attention_shift",
    "attention_shift_table": "shift.attention_shift",
    "js_divergence": "shift.attention_shift",
    "spatial_distributions": "shift.attention_shift",
    "paired_records": "shift.attention_shift",
    "base_model_id": "shift.attention_shift",
    "disruption_table": "disruption",
    "aggregate_over_seeds": "disruption",
    "semantic_similarity": "disruption",
    "entanglement_map": "entanglement",
    "write_entanglement_maps": "entanglement",
    "read_entanglement_maps": "entanglement",
    "compare_methods": "stats.methods",
    "compare_abstractness": "stats.abstractness",
    "semantic_proximity": "stats.semantic",
    "link_layers": "stats.layers",
    "cluster": "stats.clustering",
    "TestResult": "stats.common",
    "run_analysis": "pipeline",
    "run_statistics": "stats.run",
    "minimum_detectable_effects": "stats.power",
}
__all__ = [
    "ClipScorer",
    "TestResult",
    "aggregate_over_seeds",
    "attention_shift",
    "attention_shift_table",
    "base_model_id",
    "clip_score_from_embeddings",
    "cluster",
    "compare_abstractness",
    "compare_methods",
    "disruption_table",
    "entanglement_map",
    "js_divergence",
    "link_layers",
    "minimum_detectable_effects",
    "paired_records",
    "read_entanglement_maps",
    "run_analysis",
    "run_statistics",
    "semantic_proximity",
    "semantic_similarity",
    "spatial_distributions",
    "write_entanglement_maps",
]

if TYPE_CHECKING:
    from cemaps.analysis.clip_scorer import ClipScorer, clip_score_from_embeddings
    from cemaps.analysis.disruption import aggregate_over_seeds, disruption_table, semantic_similarity
    from cemaps.analysis.entanglement import entanglement_map, read_entanglement_maps, write_entanglement_maps
    from cemaps.analysis.pipeline import run_analysis
    from cemaps.analysis.shift.attention_shift import (
        attention_shift,
        attention_shift_table,
        base_model_id,
        js_divergence,
        paired_records,
        spatial_distributions,
    )
    from cemaps.analysis.stats.abstractness import compare_abstractness
    from cemaps.analysis.stats.clustering import cluster
    from cemaps.analysis.stats.common import TestResult
    from cemaps.analysis.stats.layers import link_layers
    from cemaps.analysis.stats.methods import compare_methods
    from cemaps.analysis.stats.power import minimum_detectable_effects
    from cemaps.analysis.stats.run import run_statistics
    from cemaps.analysis.stats.semantic import semantic_proximity


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.analysis' has no attribute {name!r}")
    value = getattr(import_module(f"cemaps.analysis.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
