"""``run_analysis``: from a store to the results folder that ``cemaps report`` reads.

Steps, each streaming from the store: CLIP disruption of every personalized record
against its base twin; attention shift per layer; semantic similarity of each
subject to each prompt in the base model's own text space; the statistics of the
reference study's three questions plus layer linking and clustering; and the
Concept Entanglement Maps.

Results folder::

    manifest.json               store, provenance, metrics, file list
    summary.json                question -> metric -> every statistical test (statistic, p, effect size, n, method)
    disruption.csv/.parquet     per (model, prompt, seed): clip_base, clip_personalized, alignment_drop, image_drift
    disruption_by_prompt.csv    per (model, prompt): mean, sd, n, 95% CI over seeds, with labels
    attention_shift.csv/.parquet per (model, prompt, seed, layer): Jensen-Shannon shift
    layers.csv                  layer, order, block, resolution (side of the stored maps), height, width, n_heads
    weight_deltas.csv           per (model, module, param), if the store has them
    similarity.csv              per (model, prompt): cosine of subject descriptor and prompt
    cem_<metric>.csv, entanglement_maps.h5   the Concept Entanglement Maps
    prompts.csv, models.csv     labels
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from cemaps.analysis.attention_shift import attention_shift_table
from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.analysis.disruption import aggregate_over_seeds, disruption_table, semantic_similarity
from cemaps.analysis.entanglement import entanglement_map, write_entanglement_maps
from cemaps.analysis.stats_abstractness import compare_abstractness
from cemaps.analysis.stats_clustering import cluster
from cemaps.analysis.stats_common import to_jsonable
from cemaps.analysis.stats_layers import link_layers
from cemaps.analysis.stats_methods import compare_methods
from cemaps.analysis.stats_semantic import semantic_proximity
from cemaps.errors import CemapsError, StoreError
from cemaps.store import open_store

METRICS = ("alignment_drop", "image_drift")
TINY_BASES = ("cemaps/tiny-sd", "tiny")
TOYWORLD_BASES = ("cemaps/toyworld", "toyworld")


def run_analysis(store_path: str | Path, out_dir: str | Path, *, scorer: ClipScorer | None = None,
                 clip_model: str = "ViT-B-32", clip_weights: str | Path | None = None,
                 subjects: str | Path = "subjects15", n_perm: int = 9999, progress: bool = True,
                 console: Console | None = None) -> Path:
    """Analyse a store into ``out_dir``; returns the path of ``summary.json``."""
    from cemaps.data import load_subjects

    console = console or Console(stderr=True, quiet=not progress)
    out = Path(out_dir)
    with open_store(store_path) as store:
        models = store.models.reset_index()
        if (models["method"] == "base").sum() != 1:
            raise StoreError(f"{store_path}: expected exactly one base model in the models table")
        if (models["method"] != "base").sum() == 0:
            raise StoreError(f"{store_path}: no personalized models; add `personalized:` to the study and capture again")
        base_id = store.base.get("model_id")
        if scorer is None:
            if clip_weights is None and base_id in TINY_BASES:
                console.print("[yellow]CLIP scorer[/]: the tiny random-weight open_clip model (the store's base is the "
                              "embedded tiny model); pass --clip-weights for a real one")
                scorer = ClipScorer.tiny(seed=0)
            elif clip_weights is None and base_id in TOYWORLD_BASES:
                console.print("[yellow]CLIP scorer[/]: the toy world's trained CLIP (the store's base is the toy world)")
                scorer = ClipScorer.toyworld()
            else:
                scorer = ClipScorer.load(clip_model, clip_weights)
        out.mkdir(parents=True, exist_ok=True)
        subject_table = load_subjects(subjects).set_index("subject_id")
        models = _with_subject_labels(models, subject_table)
        prompts = store.prompts.reset_index()

        with console.status("CLIP disruption of every personalized record"):
            per_seed = disruption_table(store, scorer)
        per_seed = per_seed.merge(models[["model_id", "method", "subject_id", "subject_domain"]], on="model_id", how="left")
        per_seed = per_seed.merge(_prompt_labels(prompts), on="prompt_id", how="left")
        by_prompt = aggregate_over_seeds(per_seed, list(METRICS), models=models.set_index("model_id"),
                                         prompts=prompts.set_index("prompt_id"))
        with console.status("attention shift per layer"):
            shift = attention_shift_table(store)
        shift = shift.merge(models[["model_id", "method", "subject_id"]], on="model_id", how="left")
        layers = _layer_table(store)
        similarity = _similarity(store, models, prompts, subject_table, console)
        weight_deltas = _optional_table(store, "weight_deltas")
        ti_stats = _optional_table(store, "textual_inversion")
        provenance = {"store_provenance": store.provenance, "settings": store.settings, "base": store.base}

    files: dict[str, str] = {}
    files.update(_write_table(per_seed, out, "disruption", parquet=True))
    files.update(_write_table(by_prompt, out, "disruption_by_prompt"))
    files.update(_write_table(shift, out, "attention_shift", parquet=True))
    files.update(_write_table(layers, out, "layers"))
    files.update(_write_table(similarity, out, "similarity"))
    files.update(_write_table(models, out, "models"))
    files.update(_write_table(prompts.drop(columns=[c for c in ("tokens", "token_ids") if c in prompts]), out, "prompts"))
    if weight_deltas is not None:
        weight_deltas = weight_deltas.merge(models[["model_id", "method", "subject_id"]], on="model_id", how="left")
        files.update(_write_table(weight_deltas, out, "weight_deltas"))
    if ti_stats is not None:
        files.update(_write_table(ti_stats, out, "textual_inversion"))

    maps = {metric: entanglement_map(by_prompt, metric) for metric in METRICS}
    for name, path in write_entanglement_maps(maps, out).items():
        files[name] = Path(path).name

    shift_by_prompt = shift.groupby(["model_id", "prompt_id", "layer"], as_index=False)["attention_shift"].mean()
    layer_delta = _layer_weight_delta(weight_deltas, list(layers["layer"])) if weight_deltas is not None else None
    summary: dict[str, Any] = {}  # question -> metric -> results
    with console.status("statistics"):
        for metric in METRICS:
            per_metric = _statistics(metric, by_prompt, similarity, shift_by_prompt, layer_delta,
                                     list(layers["layer"]), maps[metric], prompts, models, n_perm)
            for question, results in per_metric.items():
                summary.setdefault(question, {})[metric] = results
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(to_jsonable(summary), indent=1, allow_nan=False))
    manifest = {
        "store": str(Path(store_path).resolve()),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cemaps_version": _version(),
        "metrics": list(METRICS),
        "clip_scorer": getattr(scorer, "description", clip_model),
        "provenance": to_jsonable(provenance),
        "files": {**files, "summary": "summary.json"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    console.print(f"[green]results[/] {out}")
    return summary_path


def _statistics(metric, by_prompt, similarity, shift, layer_delta, layer_order, cem, prompts, models, n_perm):
    """The five families for one metric; a family that cannot run on this design says why."""
    results: dict[str, Any] = {}
    families = {
        "methods": lambda: compare_methods(by_prompt, metric),
        "abstractness": lambda: compare_abstractness(by_prompt, metric),
        "semantic_proximity": lambda: semantic_proximity(by_prompt, metric, n_perm=n_perm, similarity=similarity),
        "layer_linking": lambda: link_layers(shift, by_prompt, metric, weight_delta=layer_delta, layer_order=layer_order),
        "clustering": lambda: cluster(_flat(cem), _prompt_labels(prompts), models[["model_id", "method"]]),
    }
    for name, family in families.items():
        try:
            results[name] = family()
        except CemapsError as exc:
            results[name] = {"not_computed": str(exc)}
    return results


def _flat(cem: pd.DataFrame) -> pd.DataFrame:
    flat = cem.copy()
    flat.index = cem.index.get_level_values("model_id")
    flat.columns = cem.columns.get_level_values("prompt_id")
    return flat.dropna(axis=1)


def _prompt_labels(prompts: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in ("prompt_id", "abstractness", "domain") if c in prompts.columns]
    return prompts[columns]


def _with_subject_labels(models: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    models = models.copy()
    known = models["subject_id"].isin(subjects.index)
    models["subject_domain"] = np.where(known, models["subject_id"].map(subjects["domain"]), None)
    models["descriptor"] = np.where(known, models["subject_id"].map(subjects["descriptor"]), None)
    return models


def _similarity(store, models, prompts, subjects, console) -> pd.DataFrame:
    from cemaps.models.loading import load_pipeline

    described = models.dropna(subset=["descriptor"])
    described = described[described["method"] != "base"]
    if described.empty:
        return pd.DataFrame(columns=["model_id", "prompt_id", "similarity"])
    with console.status("semantic similarity in the base model's text space"):
        pipe = load_pipeline(store.base["model_id"], device="cpu", dtype="float32")
        return semantic_similarity(pipe.text_encoder, pipe.tokenizer, dict(zip(described["model_id"], described["descriptor"])),
                                   dict(zip(prompts["prompt_id"], prompts["text"])))


def _layer_table(store) -> pd.DataFrame:
    from cemaps.analysis.stats_layers import order_layers

    prefix = "cross_attention/"
    names = [n[len(prefix):] for n in store.array_names if n.startswith(prefix)]
    rows = []
    for order, layer in enumerate(order_layers(names, None)):
        shape = store.trailing_shape(prefix + layer)
        axes = store.axes(prefix + layer)[1:]
        dims = dict(zip(axes, shape))
        block = layer.split("_")[0] if not layer.startswith("mid") else "mid"
        rows.append({"layer": layer, "order": order, "block": block, "resolution": dims.get("y"),
                     "height": dims.get("y"), "width": dims.get("x"), "n_heads": dims.get("head")})
    return pd.DataFrame(rows)


def _layer_weight_delta(weight_deltas: pd.DataFrame, layers: list[str]) -> pd.DataFrame:
    """||dW||_F of each cross-attention layer's projections (to_q/k/v/out) per model."""
    rows = []
    unet = weight_deltas[weight_deltas.get("component", "unet") == "unet"] if "component" in weight_deltas else weight_deltas
    for (model_id, module), group in unet.groupby(["model_id", "module"]):
        for layer in layers:
            if module.startswith(layer + "."):
                rows.append({"model_id": model_id, "layer": layer, "sq": float((group["fro_norm"] ** 2).sum())})
    if not rows:
        return pd.DataFrame(columns=["model_id", "layer", "delta_norm"])
    table = pd.DataFrame(rows).groupby(["model_id", "layer"], as_index=False)["sq"].sum()
    table["delta_norm"] = np.sqrt(table.pop("sq"))
    return table


def _optional_table(store, name: str) -> pd.DataFrame | None:
    try:
        return store.table(name)
    except StoreError:
        return None


def _write_table(table: pd.DataFrame, out: Path, name: str, parquet: bool = False) -> dict[str, str]:
    files = {name: f"{name}.csv"}
    table.to_csv(out / f"{name}.csv", index=False)
    if parquet:
        table.to_parquet(out / f"{name}.parquet", index=False)
        files[f"{name}_parquet"] = f"{name}.parquet"
    return files


def _version() -> str:
    from cemaps import __version__

    return __version__
