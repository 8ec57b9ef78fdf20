"""``run_statistics``: the five questions on any disruption table, as ``summary.json`` holds them.

The table can come from ``cemaps analyze`` (``disruption_by_prompt.csv``) or from another tool:
one row per (model_id, prompt_id), the columns listed in docs/statistics.md. For every metric
it runs the method comparison, abstractness, semantic proximity, layer linking (with a
``shift`` table) and clustering; then, per question, it Holm-corrects every validated test
across its tests and metrics (``extra.p_holm_question``; the report bolds only p_holm_question <
0.05), estimates the study's variance components, simulates the minimum detectable effect of
each question at 80% power (``power``), and writes each question's findings as sentences
(``findings``) with effect sizes and intervals.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> rows = [dict(model_id=f"{m}-{s}", method=m, subject_id=f"s{s}", subject_domain=("faces", "objects")[s % 2],
    ...              prompt_id=f"p{p}", abstractness=("concrete", "abstract")[p % 2],
    ...              domain=("faces", "objects")[p // 2 % 2], alignment_drop=rng.normal())
    ...         for m in ("lora", "dreambooth") for s in range(4) for p in range(12)]
    >>> summary = run_statistics(pd.DataFrame(rows), n_perm=99, power_sims=100)
    >>> sorted(summary)
    ['abstractness', 'clustering', 'layer_linking', 'methods', 'power', 'semantic_proximity']
    >>> summary["layer_linking"]["alignment_drop"]["not_computed"]
    'no shift table given'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cemaps.analysis.stats.abstractness import compare_abstractness
from cemaps.analysis.stats.clustering import cluster
from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    P_HOLM_QUESTION,
    StatsInputError,
    check_positive_int,
    holm,
    require_columns,
    require_numeric,
    to_jsonable,
    without_structural_zeros,
)
from cemaps.analysis.stats.design import VarianceComponents, estimate_components, layout_from_table
from cemaps.analysis.stats.findings import findings
from cemaps.analysis.stats.layers import link_layers
from cemaps.analysis.stats.methods import compare_methods
from cemaps.analysis.stats.power import minimum_detectable_effects
from cemaps.analysis.stats.semantic import semantic_proximity
from cemaps.errors import CemapsError

QUESTIONS = ("methods", "abstractness", "semantic_proximity", "layer_linking", "clustering")
DEFAULT_METRICS = ("alignment_drop", "image_drift")
NEEDS_LABEL = {"abstractness": "abstractness", "semantic_proximity": "domain"}


def run_statistics(
    disruption: pd.DataFrame,
    *,
    similarity: pd.DataFrame | None = None,
    shift: pd.DataFrame | None = None,
    weight_delta: pd.DataFrame | None = None,
    metrics: Sequence[str] | None = None,
    layer_order: Sequence[str] | None = None,
    n_perm: int = 9999,
    seed: int = 0,
    power_sims: int = 1000,
    skip: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Runs every question on ``disruption`` and returns the JSON-able summary.

    Args:
        disruption: one row per (model_id, prompt_id): model_id, prompt_id, method, subject_id and
            each metric; optional subject_domain, abstractness, domain, structural_zero, and per
            metric ``<metric>_sd`` / ``<metric>_n`` (SD and count over seeds). See docs/statistics.md.
        similarity: optional (model_id, prompt_id, similarity) for the similarity test.
        shift: optional (model_id, prompt_id, layer, attention_shift), seed-averaged, for layer linking.
        weight_delta: optional (model_id, layer, delta_norm).
        metrics: metric columns (default: those of ``alignment_drop``, ``image_drift`` present).
        layer_order: UNet order of the layers (default: down -> mid -> up by name).
        n_perm: permutations of every permutation test.
        seed: seeds every test and the power simulation.
        power_sims: simulated studies per question for the minimum detectable effects.
        skip: question -> reason, for questions the caller knows cannot run (reported as ``not_computed``).

    Returns:
        {question: {metric: results | {"not_computed": reason}, "findings": [sentences]}, "power":
        {metric: {"components": ..., "mde": records}}}. Every validated test's ``extra`` holds
        ``p_holm_question``; layer records hold a ``p_holm_question`` column.

    Raises:
        StatsInputError: ``disruption`` is not a table with the required columns, a metric is missing
            or not numeric, or ``n_perm`` / ``power_sims`` are not positive integers.
    """
    check_positive_int(n_perm, "n_perm")
    check_positive_int(power_sims, "power_sims", minimum=20)
    require_columns(disruption, ["model_id", "prompt_id", "method", "subject_id"], "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected one row per (model_id, prompt_id)")
    metrics = list(metrics) if metrics is not None else [m for m in DEFAULT_METRICS if m in disruption.columns]
    if not metrics:
        raise StatsInputError(f"disruption: no metric column; expected one of {list(DEFAULT_METRICS)} or metrics=[...]")
    for metric in metrics:
        require_columns(disruption, [metric], "disruption")
        require_numeric(disruption, metric, "disruption")
    if disruption.duplicated(["model_id", "prompt_id"]).any():
        raise StatsInputError("disruption: (model_id, prompt_id) must be unique; average seeds first")
    skip = dict(skip or {})
    for question, label in NEEDS_LABEL.items():
        if question not in skip and (label not in disruption.columns or disruption[label].isna().all()):
            skip[question] = f"the prompts carry no {label!r} labels; give the table a {label} column"
    if "semantic_proximity" not in skip and (
        "subject_domain" not in disruption.columns or disruption["subject_domain"].isna().all()
    ):
        skip["semantic_proximity"] = "the models carry no subject_domain labels"
    summary: dict[str, Any] = {question: {} for question in QUESTIONS}
    for metric in metrics:
        for question, run in _questions(disruption, metric, similarity, shift, weight_delta, layer_order, n_perm, seed):
            if question in skip:
                summary[question][metric] = {"not_computed": skip[question]}
                continue
            try:
                summary[question][metric] = run()
            except CemapsError as exc:
                summary[question][metric] = {"not_computed": str(exc)}
    family_sizes = {question: holm_across_question(summary[question]) for question in QUESTIONS}
    summary["power"] = {
        metric: power_for_metric(disruption, metric, family_sizes, power_sims, seed) for metric in metrics
    }
    for question in QUESTIONS:
        summary[question]["findings"] = findings(question, summary[question], summary["power"], metrics)
    return to_jsonable(summary)


def _questions(disruption, metric, similarity, shift, weight_delta, layer_order, n_perm, seed):
    def layers() -> dict[str, Any]:
        if shift is None:
            raise StatsInputError("no shift table given")
        return link_layers(shift, disruption, metric, weight_delta=weight_delta, layer_order=layer_order, seed=seed)

    yield "methods", lambda: compare_methods(disruption, metric, seed=seed)
    yield "abstractness", lambda: compare_abstractness(disruption, metric, n_perm=n_perm, seed=seed)
    yield (
        "semantic_proximity",
        lambda: semantic_proximity(disruption, metric, n_perm=n_perm, seed=seed, similarity=similarity),
    )
    yield "layer_linking", layers
    yield "clustering", lambda: clustering(disruption, metric, n_perm, seed)


def clustering(disruption: pd.DataFrame, metric: str, n_perm: int, seed: int) -> dict[str, Any]:
    """Clusters the CEM of ``metric`` (prompts seen by every model) as the pipeline does, models that are all
    structural zeros set apart first."""
    tested, excluded = without_structural_zeros(disruption)
    cem = tested.pivot_table(index="model_id", columns="prompt_id", values=metric, aggfunc="mean").dropna(axis=1)
    prompt_columns = [c for c in ("abstractness", "domain") if c in tested and tested[c].notna().any()]
    prompts = tested.drop_duplicates("prompt_id").set_index("prompt_id")[prompt_columns]
    models = tested.drop_duplicates("model_id")[["model_id", "method"]]
    if not prompt_columns:
        prompts = prompts.assign(abstractness="n/a")  # no label to compare with: the trees are still drawn
    out = cluster(cem, prompts, models, n_perm=min(n_perm, 999), seed=seed)
    reason = "all structural zeros (bit-identical to the base twin)"
    out["models"]["set_apart"] = [{"id": m, "reason": reason} for m in excluded] + out["models"]["set_apart"]
    return out


def holm_across_question(section: Mapping[str, Any]) -> int:
    """Holm over every validated test of one question (all metrics); returns how many tests it corrected.

    A validated test is a test dict whose ``extra.null_rate_validated`` is true and whose p is a number,
    and each layer record's ``p_perm``. Each gets ``p_holm_question`` (in ``extra``, or as a column).
    """
    slots: list[tuple[Callable[[float], None], float]] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            extra = value.get("extra")
            if "test" in value and isinstance(extra, dict) and extra.get(NULL_RATE_VALIDATED) is True:
                if isinstance(value.get("p"), (int, float)):
                    slots.append((lambda q, e=extra: e.__setitem__(P_HOLM_QUESTION, q), float(value["p"])))
            for child in value.values():
                visit(child)
        elif isinstance(value, list):
            for record in value:
                if isinstance(record, dict) and "layer" in record and isinstance(record.get("p_perm"), (int, float)):
                    slots.append((lambda q, r=record: r.__setitem__(P_HOLM_QUESTION, q), float(record["p_perm"])))
                else:
                    visit(record)

    visit(dict(section))
    adjusted = holm([p for _, p in slots]) if slots else np.array([])
    for (setter, _), q in zip(slots, adjusted, strict=True):
        setter(float(q))
    return len(slots)


def power_for_metric(
    disruption: pd.DataFrame, metric: str, family_sizes: Mapping[str, int], n_sims: int, seed: int
) -> dict[str, Any]:
    """Variance components of ``metric`` estimated from the table, and each question's MDE at 80% power."""
    tested, _ = without_structural_zeros(disruption)
    grid = tested.pivot_table(index="model_id", columns="prompt_id", values=metric, aggfunc="mean").dropna(axis=1)
    if grid.shape[0] < 2 or grid.shape[1] < 2:
        return {"not_computed": f"needs >= 2 models and >= 2 prompts seen by every model; has {grid.shape}"}
    n_column, sd_column = f"{metric}_n", f"{metric}_sd"
    n_seeds = int(round(float(tested[n_column].mean()))) if n_column in tested else 1
    seed_sd = float(np.sqrt(np.nanmean(tested[sd_column] ** 2))) if sd_column in tested and n_seeds > 1 else 0.0
    labels = tested.drop_duplicates("model_id").set_index("model_id")
    domain = (
        tested.drop_duplicates("prompt_id").set_index("prompt_id")["domain"].astype(str)
        if "domain" in tested and tested["domain"].notna().all()
        else None
    )
    estimated = estimate_components(
        grid, labels["method"].astype(str), labels["subject_id"].astype(str), seed_sd, domain
    )
    # the grid's residual holds the seed noise (seed_sd^2 / n_seeds); the simulation adds that part itself
    pair_sd = float(np.sqrt(max(0.0, estimated.pair_sd**2 - seed_sd**2 / max(n_seeds, 1))))
    components = VarianceComponents(
        prompt_sd=estimated.prompt_sd,
        model_sd=estimated.model_sd,
        subject_sd=estimated.subject_sd,
        pair_sd=pair_sd,
        seed_sd=seed_sd,
        domain_sd=estimated.domain_sd,
        source=estimated.source,
    )
    layout = layout_from_table(tested[tested["prompt_id"].isin(grid.columns)], n_seeds=n_seeds)
    table = minimum_detectable_effects(layout, components, family_size=family_sizes, n_sims=n_sims, seed=seed)
    return {
        "components": {k: v for k, v in vars(components).items()},
        "n_seeds": n_seeds,
        "mde": table,
        "method": (
            "minimum detectable effect at 80% power, alpha 0.05 / (validated tests of the question), simulated "
            f"({n_sims} studies per question) on this study's models, subjects, prompts, labels and seeds with "
            "the variance components estimated from it (cemaps.analysis.stats.power)"
        ),
    }
