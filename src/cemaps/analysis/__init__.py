"""Analysis: disruption metrics, Concept Entanglement Maps, statistics, layer linking, clustering.

Pure functions over arrays and tables, plus store-streaming wrappers; ``run_analysis``
ties them together into the results folder that ``cemaps report`` reads.
"""

from importlib import import_module

_LAZY = {
    "ClipScorer": "clip_scorer",
    "clip_score_from_embeddings": "clip_scorer",
    "attention_shift": "attention_shift",
    "attention_shift_table": "attention_shift",
    "js_divergence": "attention_shift",
    "spatial_distributions": "attention_shift",
    "paired_records": "attention_shift",
    "base_model_id": "attention_shift",
    "disruption_table": "disruption",
    "aggregate_over_seeds": "disruption",
    "semantic_similarity": "disruption",
    "entanglement_map": "entanglement",
    "write_entanglement_maps": "entanglement",
    "read_entanglement_maps": "entanglement",
    "compare_methods": "stats_methods",
    "compare_abstractness": "stats_abstractness",
    "semantic_proximity": "stats_semantic",
    "link_layers": "stats_layers",
    "cluster": "stats_clustering",
    "TestResult": "stats_common",
    "run_analysis": "pipeline",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.analysis' has no attribute {name!r}")
    value = getattr(import_module(f"cemaps.analysis.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
