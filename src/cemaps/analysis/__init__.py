"""Analysis: disruption metrics, Concept Entanglement Maps, statistics, layer linking, clustering.

Pure functions over arrays and tables, plus store-streaming wrappers; ``run_analysis``
ties them together into the results folder that ``cemaps report`` reads.
"""

from importlib import import_module

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
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.analysis' has no attribute {name!r}")
    value = getattr(import_module(f"cemaps.analysis.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
