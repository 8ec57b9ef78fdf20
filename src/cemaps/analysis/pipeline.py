"""``run_analysis``: from a store to the results folder that ``cemaps report`` reads.

Steps, each streaming from the store: CLIP disruption of every personalized record
against its base twin; attention shift per layer; semantic similarity of each
subject to each prompt in the base model's own text space; the statistics of the
reference study's three questions plus layer linking and clustering; and the
Concept Entanglement Maps.

Results folder::

    manifest.json               store, provenance, metrics, file list
    summary.json                question -> metric -> every statistical test (statistic, p, effect size, n, method),
                                each question's findings, and the power of each test (cemaps.analysis.run_statistics)
    layers_asymptotic.csv       scipy's asymptotic per-layer p: NOT validated (null_rate_validated False), CSV only
    disruption.csv/.parquet     per (model, prompt, seed): clip_base, clip_personalized, alignment_drop, image_drift
    disruption_by_prompt.csv    per (model, prompt): mean, sd, n, 95% CI over seeds, with labels
    attention_shift.csv/.parquet per (model, prompt, seed, layer): Jensen-Shannon shift
    layers.csv                  layer, order, block, resolution (side of the stored maps), height, width, n_heads
    weight_deltas.csv           per (model, module, param), if the store has them
    similarity.csv              per (model, prompt): cosine of subject descriptor and prompt
    cem_<metric>.csv, entanglement_maps.h5   the Concept Entanglement Maps
    prompts.csv, models.csv     labels
    in_context*.csv             subjects in context (CLIP-T, CLIP-I, non-subject shift per layer and word), if run
    ...                         tables of a registered world (cemaps.analysis.extensions), e.g. the toy world's

The folder describes one run: it is written aside and moved into place when complete
(:func:`cemaps.outputs.staged_output`), so a failed run leaves no half-written folder and a
new run leaves no stale file of an older one; a folder holding other files is refused.

Prompts without labels (an inline list in study.yaml has no ``abstractness`` or ``domain``)
are analysed as far as no label is needed: disruption, attention shift, the Concept
Entanglement Maps (label "n/a"), method comparison, layer linking and clustering. The
questions that need a label are skipped, with the reason in ``summary.json``
(``not_computed``) and ``manifest.json`` (``skipped``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape

from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.analysis.disruption import (
    aggregate_over_seeds,
    disruption_table,
    semantic_similarity,
)
from cemaps.analysis.entanglement import entanglement_map, write_entanglement_maps
from cemaps.analysis.extensions import result_tables, scorer_provider
from cemaps.analysis.in_context import analyse_in_context
from cemaps.analysis.shift.attention_shift import attention_shift_table
from cemaps.analysis.stats.common import to_jsonable
from cemaps.analysis.stats.layers import asymptotic_layer_table
from cemaps.analysis.stats.run import run_statistics
from cemaps.errors import CemapsError, ConfigError, StoreError
from cemaps.outputs import check_output_folder, staged_output
from cemaps.store import open_store

METRICS = ("alignment_drop", "image_drift")
PROMPT_LABELS = ("abstractness", "domain")
# question -> the prompt label it cannot do without
NEEDS_LABEL = {"abstractness": "abstractness", "semantic_proximity": "domain"}


def run_analysis(
    store_path: str | Path,
    out_dir: str | Path,
    *,
    scorer: ClipScorer | None = None,
    clip_model: str = "ViT-B-32",
    clip_weights: str | Path | None = None,
    subjects: str | Path = "subjects15",
    n_perm: int = 9999,
    progress: bool = True,
    console: Console | None = None,
) -> Path:
    """Analyse a store into ``out_dir``; returns the path of ``summary.json``.

    Raises:
        OutputError: ``out_dir`` is a file or a folder holding files this analysis did not write.
        ConfigError: ``clip_model`` is not an open_clip architecture.
        StoreError: the store is unreadable or has no personalized models.
    """
    console = console or Console(stderr=True, quiet=not progress)
    out = Path(out_dir)
    check_output_folder(out, "analyze")
    if scorer is None:
        check_clip_model(clip_model)
    with staged_output(out, "analyze") as staging:
        skipped = _analyse(
            store_path,
            staging,
            scorer=scorer,
            clip_model=clip_model,
            clip_weights=clip_weights,
            subjects=subjects,
            n_perm=n_perm,
            console=console,
        )
    for question, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {question}: {escape(reason)}")
    console.print(f"[green]results[/] {escape(str(out))}")
    return out / "summary.json"


def check_clip_model(name: str) -> None:
    """Refuses a CLIP scorer name that open_clip does not know, naming the ones it does."""
    import difflib

    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"--clip-model {name!r} is not an open_clip architecture; {hint}open_clip knows "
            f"{len(known)}: {', '.join(known)}"
        )


def _analyse(store_path, out: Path, *, scorer, clip_model, clip_weights, subjects, n_perm, console) -> dict[str, str]:
    """Writes every result file into ``out``; returns the skipped questions with their reasons."""
    from cemaps.data import load_subjects

    with open_store(store_path) as store:
        if (store.settings.get("prompt_set") or {}).get("name") == "in_context":
            raise StoreError(
                f"{store_path}: this is a study's in-context store; analyze the main store beside it "
                "(it finds this one), or call cemaps.analysis.in_context.analyse_in_context"
            )
        models = store.models.reset_index()
        if (models["method"] == "base").sum() != 1:
            raise StoreError(f"{store_path}: expected exactly one base model in the models table")
        if (models["method"] != "base").sum() == 0:
            raise StoreError(
                f"{store_path}: no personalized models; add `personalized:` to the study and capture again"
            )
        base_id = store.base.get("model_id")
        if scorer is None:
            provider = scorer_provider(base_id) if clip_weights is None else None
            if provider is not None:
                console.print(f"[yellow]CLIP scorer[/]: {escape(provider.notice)}")
                scorer, scorer_name = provider.build(), provider.description
            else:
                scorer = ClipScorer.load(clip_model, clip_weights)
                scorer_name = f"{clip_model} ({clip_weights or 'weights from the local Hugging Face cache'})"
        else:
            scorer_name = getattr(scorer, "description", None) or f"caller's {type(scorer).__name__}"
        subject_table = load_subjects(subjects).set_index("subject_id")
        models = _with_subject_labels(models, subject_table)
        prompts = store.prompts.reset_index()
        unlabelled = [c for c in PROMPT_LABELS if c not in prompts.columns or prompts[c].isna().all()]
        for column in unlabelled:
            prompts[column] = None  # the maps show such prompts under the label "n/a"
        skipped = {
            question: f"the prompts carry no {label!r} labels (e.g. an inline prompt list); give a prompts "
            f"CSV/YAML with the column {label} (prompt_id, text, abstractness, domain)"
            for question, label in NEEDS_LABEL.items()
            if label in unlabelled
        }

        with console.status("CLIP disruption of every personalized record"):
            per_seed = disruption_table(store, scorer)
        per_seed = per_seed.merge(
            models[["model_id", "method", "subject_id", "subject_domain"]], on="model_id", how="left"
        )
        per_seed = per_seed.merge(_prompt_labels(prompts), on="prompt_id", how="left")
        by_prompt = aggregate_over_seeds(
            per_seed, list(METRICS), models=models.set_index("model_id"), prompts=prompts.set_index("prompt_id")
        )
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
    files.update(
        _write_table(prompts.drop(columns=[c for c in ("tokens", "token_ids") if c in prompts]), out, "prompts")
    )
    if weight_deltas is not None:
        weight_deltas = weight_deltas.merge(models[["model_id", "method", "subject_id"]], on="model_id", how="left")
        files.update(_write_table(weight_deltas, out, "weight_deltas"))
    if ti_stats is not None:
        files.update(_write_table(ti_stats, out, "textual_inversion"))

    with console.status("subjects in context"):
        files.update(analyse_in_context(store_path, out, scorer))  # {} when the study had no in-context set
    for tables in result_tables():  # a registered world's own tables; {} unless the store is its kind
        with console.status(tables.status):
            files.update(tables.write(Path(store_path), out))
    maps = {metric: entanglement_map(by_prompt, metric) for metric in METRICS}
    for name, path in write_entanglement_maps(maps, out).items():
        files[name] = Path(path).name

    shift_by_prompt = shift.groupby(["model_id", "prompt_id", "layer"], as_index=False)["attention_shift"].mean()
    layer_delta = _layer_weight_delta(weight_deltas, list(layers["layer"])) if weight_deltas is not None else None
    with console.status("statistics"):
        summary = run_statistics(
            by_prompt,
            similarity=similarity,
            shift=shift_by_prompt,
            weight_delta=layer_delta,
            metrics=list(METRICS),
            layer_order=list(layers["layer"]),
            n_perm=n_perm,
            skip=skipped,
        )
        files.update(_asymptotic_layers(shift_by_prompt, by_prompt, list(layers["layer"]), out))
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(to_jsonable(summary), indent=1, allow_nan=False))
    manifest = {
        "store": str(Path(store_path).resolve()),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cemaps_version": _version(),
        "metrics": list(METRICS),
        "clip_scorer": scorer_name,
        "skipped": skipped,
        "provenance": to_jsonable(provenance),
        "files": {**files, "summary": "summary.json"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return skipped


def _asymptotic_layers(shift: pd.DataFrame, by_prompt: pd.DataFrame, layer_order: list[str], out: Path):
    """layers_asymptotic.csv: scipy's asymptotic per-layer p (not validated; the report never shows it)."""
    tables = []
    for metric in METRICS:
        try:
            tables.append(asymptotic_layer_table(shift, by_prompt, metric, layer_order).assign(metric=metric))
        except CemapsError:
            continue  # the layer question reports why in summary.json
    if not tables:
        return {}
    return _write_table(pd.concat(tables, ignore_index=True), out, "layers_asymptotic")


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
    from cemaps.models.families import family_of
    from cemaps.models.loading import load_pipeline

    described = models.dropna(subset=["descriptor"])
    described = described[described["method"] != "base"]
    if described.empty:
        return pd.DataFrame(columns=["model_id", "prompt_id", "similarity"])
    with console.status("semantic similarity in the base model's text space"):
        pipe = load_pipeline(store.base["model_id"], device="cpu", dtype="float32")
        family = family_of(pipe)
        stream = family.labelling_stream  # the text encoder whose tokens label the maps
        if not getattr(getattr(pipe, stream.encoder), "config", None).model_type.startswith("clip"):
            # a T5-labelled family (Flux): its CLIP stream's pooled space, where it has one (PixArt: T5's mean)
            stream = next((s for s in family.text_streams if s.pooled), stream)
        return semantic_similarity(
            getattr(pipe, stream.encoder),
            getattr(pipe, stream.tokenizer),
            dict(zip(described["model_id"], described["descriptor"], strict=False)),
            dict(zip(prompts["prompt_id"], prompts["text"], strict=False)),
        )


def _layer_table(store) -> pd.DataFrame:
    from cemaps.analysis.stats.layers import order_layers
    from cemaps.labelled import CROSS_ATTENTION_PREFIX as prefix
    from cemaps.labelled import is_attention_map

    names = [n[len(prefix) :] for n in store.array_names if is_attention_map(n)]
    rows = []
    for order, layer in enumerate(order_layers(names, None)):
        shape = store.trailing_shape(prefix + layer)
        axes = store.axes(prefix + layer)[1:]
        dims = dict(zip(axes, shape, strict=False))
        block = layer.split("_")[0] if not layer.startswith("mid") else "mid"
        rows.append(
            {
                "layer": layer,
                "order": order,
                "block": block,
                "resolution": dims.get("y"),
                "height": dims.get("y"),
                "width": dims.get("x"),
                "n_heads": dims.get("head"),
            }
        )
    return pd.DataFrame(rows)


def _layer_weight_delta(weight_deltas: pd.DataFrame, layers: list[str]) -> pd.DataFrame:
    """||dW||_F of each cross-attention layer's projections (to_q/k/v/out) per model."""
    rows = []
    unet = (
        weight_deltas[weight_deltas.get("component", "unet") == "unet"]
        if "component" in weight_deltas
        else weight_deltas
    )
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
    from cemaps.version import __version__

    return __version__
