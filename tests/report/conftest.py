"""A small synthetic results folder in the format ``cemaps analyze`` writes, and a tiny real store.

The summary is produced by the real statistics functions (cemaps.analysis.stats_*),
so the report is tested against their actual nesting. Disruption has built-in
effects (methods differ; abstract prompts are more fragile) so the figures have
something to show.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cemaps.analysis.entanglement import entanglement_map, write_entanglement_maps
from cemaps.analysis.stats.abstractness import compare_abstractness
from cemaps.analysis.stats.clustering import cluster
from cemaps.analysis.stats.layers import link_layers
from cemaps.analysis.stats.methods import compare_methods
from cemaps.analysis.stats.run import holm_across_question
from cemaps.analysis.stats.semantic import semantic_proximity
from cemaps.report import write_report
from cemaps.store import StoreWriter

METRICS = ("alignment_drop", "image_drift")
METHOD_EFFECT = {"dreambooth": 1.5, "lora": 1.0, "textual_inversion": 0.2}
SUBJECTS = {"alice": "faces", "mug": "objects", "ukiyoe": "styles"}
ABSTRACTNESS_EFFECT = {"concrete": 0.0, "compositional": 0.6, "abstract": 1.2}
DOMAINS = ("faces", "objects", "styles", "animals")
LAYERS = [  # (module path, block, resolution) in UNet order
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", "down", 8),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2", "down", 4),
    ("mid_block.attentions.0.transformer_blocks.0.attn2", "mid", 4),
    ("up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up", 4),
    ("up_blocks.2.attentions.0.transformer_blocks.0.attn2", "up", 8),
]
WORDS = [
    "lighthouse",
    "cat",
    "portrait",
    "freedom",
    "harmony",
    "mountain",
    "robot",
    "violin",
    "dream",
    "river",
    "castle",
    "justice",
]
SEEDS = (0, 1)
STORE_PROMPTS = 3  # prompts with records in the tiny store (all models, seed 0)
STEPS_CAPTURED = 3
GRID = 4  # y = x of the stored attention maps
IMAGE_SIDE = 32


def synthetic_prompts() -> pd.DataFrame:
    rows = []
    for i, word in enumerate(WORDS):
        abstractness = list(ABSTRACTNESS_EFFECT)[i % 3]
        text = {
            "concrete": f"a photo of a {word}",
            "compositional": f"a {word} next to a red cube on a table",
            "abstract": f"the idea of {word}",
        }[abstractness]
        rows.append(dict(prompt_id=f"p{i:03d}", text=text, abstractness=abstractness, domain=DOMAINS[i % 4]))
    return pd.DataFrame(rows)


def synthetic_models() -> pd.DataFrame:
    rows = [
        dict(model_id=f"{method}-{subject}", method=method, subject_id=subject, subject_domain=domain)
        for method in METHOD_EFFECT
        for subject, domain in SUBJECTS.items()
    ]
    return pd.DataFrame(rows)


def synthetic_disruption(prompts: pd.DataFrame, models: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model in models.itertuples():
        for prompt in prompts.itertuples():
            for seed in SEEDS:
                effect = METHOD_EFFECT[model.method] + ABSTRACTNESS_EFFECT[prompt.abstractness]
                clip_base = 30.0 + rng.normal(0, 0.5)
                drop = effect + rng.normal(0, 0.4)
                # TI on the first prompt: bit-identical to the base twin, 0 by construction
                structural_zero = model.method == "textual_inversion" and prompt.Index == 0
                if structural_zero:
                    effect = drop = 0.0
                rows.append(
                    dict(
                        model_id=model.model_id,
                        prompt_id=prompt.prompt_id,
                        seed=seed,
                        method=model.method,
                        subject_id=model.subject_id,
                        subject_domain=model.subject_domain,
                        abstractness=prompt.abstractness,
                        domain=prompt.domain,
                        clip_base=clip_base,
                        clip_personalized=clip_base - drop,
                        alignment_drop=drop,
                        image_drift=0.0 if structural_zero else 0.1 * effect + abs(rng.normal(0, 0.05)),
                        image_identical=structural_zero,
                        structural_zero=structural_zero,
                    )
                )
    return pd.DataFrame(rows)


def by_prompt(disruption: pd.DataFrame) -> pd.DataFrame:
    labels = ["method", "subject_id", "subject_domain", "abstractness", "domain"]
    grouped = disruption.groupby(["model_id", "prompt_id"], sort=True)
    table = grouped[labels].first()
    for metric in METRICS:
        stats = grouped[metric].agg(["mean", "min", "max", "size"])
        table[f"{metric}_mean"] = stats["mean"]
        table[f"{metric}_ci_low"] = stats["min"]
        table[f"{metric}_ci_high"] = stats["max"]
        table["n"] = stats["size"]
    return table.reset_index()


def synthetic_shift(disruption: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for row in disruption.itertuples():
        for k, (layer, _, _) in enumerate(LAYERS):
            coupling = 0.2 if k == 3 else 0.01  # one layer carries the disruption
            rows.append(
                dict(
                    model_id=row.model_id,
                    prompt_id=row.prompt_id,
                    seed=row.seed,
                    layer=layer,
                    attention_shift=max(0.0, coupling * row.alignment_drop + rng.normal(0.05, 0.01)),
                    method=row.method,
                    subject_id=row.subject_id,
                )
            )
    return pd.DataFrame(rows)


def synthetic_weight_deltas(models: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model in models.itertuples():
        for layer, block, _ in LAYERS:
            for param in ("to_k.weight", "to_v.weight"):
                module = f"{layer}.{param.split('.')[0]}"
                if model.method == "textual_inversion":
                    continue  # TI changes no UNet weight
                fro = abs(rng.normal(METHOD_EFFECT[model.method], 0.1))
                rows.append(
                    dict(
                        model_id=model.model_id,
                        module=module,
                        param=param,
                        method=model.method,
                        block=block,
                        kind="attn2",
                        fro_norm=fro,
                        rel_norm=fro / 10,
                    )
                )
    return pd.DataFrame(rows)


def summary(per_pair: pd.DataFrame, shift: pd.DataFrame, similarity: pd.DataFrame, cems: dict) -> dict:
    prompt_labels = synthetic_prompts()
    model_labels = synthetic_models()
    shift_per_pair = shift.groupby(["model_id", "prompt_id", "layer"], as_index=False)["attention_shift"].mean()
    out = {q: {} for q in ("methods", "abstractness", "semantic_proximity", "layer_linking", "clustering")}
    for metric in METRICS:
        # CIs for the first metric only: the figure must also draw its own when the summary has none
        out["methods"][metric] = compare_methods(per_pair, metric, n_boot=99 if metric == METRICS[0] else 0)
        out["abstractness"][metric] = compare_abstractness(per_pair, metric, n_perm=99)
        out["semantic_proximity"][metric] = semantic_proximity(per_pair, metric, n_perm=99, similarity=similarity)
        out["layer_linking"][metric] = link_layers(
            shift_per_pair, per_pair, metric, layer_order=[name for name, _, _ in LAYERS], cv_folds=3
        )
        cem = cems[metric].copy()
        cem.index = cem.index.get_level_values("model_id")
        cem.columns = cem.columns.get_level_values("prompt_id")
        out["clustering"][metric] = cluster(cem, prompt_labels, model_labels, metric="euclidean", n_perm=49)
    for section in out.values():
        holm_across_question(section)  # as run_statistics does: each validated p gets p_holm_question
    return out


def write_results(folder: Path, store_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    prompts, models = synthetic_prompts(), synthetic_models()
    disruption = synthetic_disruption(prompts, models, rng)
    per_pair = (
        disruption.groupby(["model_id", "prompt_id"], sort=True)
        .agg(
            **{c: (c, "first") for c in ["method", "subject_id", "subject_domain", "abstractness", "domain"]},
            **{m: (m, "mean") for m in METRICS},
            structural_zero=("structural_zero", "all"),
        )
        .reset_index()
    )
    shift = synthetic_shift(disruption, rng)
    similarity = per_pair[["model_id", "prompt_id"]].assign(similarity=rng.uniform(0.1, 0.4, len(per_pair)))
    cems = {m: entanglement_map(per_pair, m) for m in METRICS}
    files = {
        "disruption": "disruption.csv",
        "disruption_by_prompt": "disruption_by_prompt.csv",
        "attention_shift": "attention_shift.csv",
        "layers": "layers.csv",
        "similarity": "similarity.csv",
        "prompts": "prompts.csv",
        "models": "models.csv",
        "summary": "summary.json",
    }
    write_entanglement_maps(cems, folder)
    files.update({f"cem_{m}": f"cem_{m}.csv" for m in METRICS})
    disruption.to_csv(folder / "disruption.csv", index=False)
    by_prompt(disruption).to_csv(folder / "disruption_by_prompt.csv", index=False)
    shift.to_csv(folder / "attention_shift.csv", index=False)
    pd.DataFrame(
        [dict(layer=name, order=i, block=b, resolution=r, n_heads=2) for i, (name, b, r) in enumerate(LAYERS)]
    ).to_csv(folder / "layers.csv", index=False)
    synthetic_weight_deltas(models, rng).to_csv(folder / "weight_deltas.csv", index=False)
    files["weight_deltas"] = "weight_deltas.csv"
    similarity.to_csv(folder / "similarity.csv", index=False)
    prompts.to_csv(folder / "prompts.csv", index=False)
    models.to_csv(folder / "models.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summary(per_pair, shift, similarity, cems), indent=1))
    manifest = {
        "store": str(store_path),
        "created_at": "2026-01-01T00:00:00+00:00",
        "cemaps_version": "0.1.0",
        "metrics": list(METRICS),
        "provenance": {
            "base": {"model_id": "cemaps/tiny-sd", "sha256": "00ff"},
            "packages": {"torch": "2.14.1", "diffusers": "0.42.1"},
            "settings": {
                "generation": {"steps": 20, "guidance_scale": 7.5},
                "capture": {"halves": ["cond"], "timesteps": STEPS_CAPTURED},
            },
        },
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def write_store(path: Path) -> Path:
    """Base + every personalized model on the first prompts, seed 0, with maps whose attention moves."""
    rng = np.random.default_rng(1)
    prompts = synthetic_prompts().iloc[:STORE_PROMPTS]
    settings = {"generation": {"steps": 20}, "capture": {"halves": ["cond"], "timesteps": STEPS_CAPTURED}}
    with StoreWriter(
        path, settings=settings, base={"model_id": "cemaps/tiny-sd"}, provenance={"packages": {"cemaps": "0.1.0"}}
    ) as writer:
        writer.add_models(
            [{"model_id": "base", "method": "base"}]
            + [dict(row) for row in synthetic_models().to_dict(orient="records")]
        )
        rows = []
        for prompt in prompts.itertuples():
            words = prompt.text.split()
            rows.append(
                dict(
                    prompt_id=prompt.prompt_id,
                    text=prompt.text,
                    tokens=["<|startoftext|>", *[f"{w}</w>" for w in words], "<|endoftext|>"],
                    token_ids=list(range(49406, 49406 + len(words) + 2)),
                    abstractness=prompt.abstractness,
                    domain=prompt.domain,
                )
            )
        writer.add_prompts(rows)
        yy, xx = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE] / IMAGE_SIDE
        for prompt, row in zip(prompts.itertuples(), rows, strict=True):
            n_tokens = len(row["tokens"])
            base_logits = rng.normal(scale=0.3, size=(n_tokens, STEPS_CAPTURED, 1, 1, GRID, GRID))
            for k, model_id in enumerate(["base", *synthetic_models()["model_id"]]):
                logits = base_logits.copy()
                if model_id != "base":
                    logits[1, :, :, :, :2, :2] += 2.0  # the personalized models look at the top-left corner
                maps = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
                # a smooth image per model: easy to read under the overlay
                image = np.stack([yy, xx, np.full_like(xx, k / 10)], axis=-1) * 255
                arrays = {f"cross_attention/{layer}": maps.astype(np.float16) for layer, _, _ in LAYERS}
                writer.write_record(
                    model_id,
                    prompt.prompt_id,
                    0,
                    arrays,
                    axes={name: ("token", "step", "half", "head", "y", "x") for name in arrays},
                    image=image.astype(np.uint8),
                )
    return path


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> Path:
    """Full results folder + tiny store (built once per session; treat as read-only)."""
    root = tmp_path_factory.mktemp("report")
    store = write_store(root / "study.h5")
    return write_results(root / "results", store)


@pytest.fixture(scope="session")
def report_path(results_dir, tmp_path_factory) -> Path:
    """report.html written from the full fixture results (built once per session)."""
    return write_report(results_dir, tmp_path_factory.mktemp("report-out"))


@pytest.fixture
def sparse_results_dir(results_dir, tmp_path) -> Path:
    """One metric, and no weight_deltas.csv, similarity.csv or store (their figures must be skipped)."""
    folder = Path(shutil.copytree(results_dir, tmp_path / "results"))
    (folder / "weight_deltas.csv").unlink()
    (folder / "similarity.csv").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(metrics=list(METRICS[:1]), store=str(tmp_path / "missing-study.h5"))
    del manifest["files"]["weight_deltas"], manifest["files"]["similarity"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


from hostile_strings import HOSTILE  # noqa: E402  (a plain module: test files cannot import from conftest)


def _hostile(text: str) -> str:
    for old, new in HOSTILE.items():
        text = text.replace(old, new)
    return text


def _hostile_json(value):
    if isinstance(value, str):
        return _hostile(value)
    if isinstance(value, dict):
        return {_hostile(k): _hostile_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hostile_json(v) for v in value]
    return value


@pytest.fixture(scope="session")
def hostile_results_dir(results_dir, tmp_path_factory) -> Path:
    """The synthetic results with hostile strings in every field a results folder carries: metric names
    (and so CSV file names), model, subject and prompt ids, prompt text, labels, summary and provenance
    keys, and a data file named like a javascript: URL."""
    folder = tmp_path_factory.mktemp("hostile") / "results"
    folder.mkdir()
    for path in results_dir.iterdir():
        target = folder / _hostile(path.name)
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            frame.columns = [_hostile(c) for c in frame.columns]
            frame.map(_hostile).to_csv(target, index=False)
        elif path.suffix == ".json":
            target.write_text(json.dumps(_hostile_json(json.loads(path.read_text()))))
    (folder / "javascript:document.title=7").write_text("x")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["javascript:document.title=7"] = "javascript:document.title=7"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="session")
def hostile_report_path(hostile_results_dir, tmp_path_factory) -> Path:
    return write_report(hostile_results_dir, tmp_path_factory.mktemp("hostile-out"))
