"""Family 4: which UNet layers carry the disruption?

Three views: (1) per layer, Spearman rho between the layer's attention shift and
the disruption over (model, prompt) pairs, with a p-value from a permutation of
prompts shared by all models (valid when prompts move both variables) and
Benjamini-Hochberg q-values over layers; structural-zero pairs (bit-identical to
the base twin, disruption and shift 0 by construction) are left out, since they
make every layer look "strongly linked" (issue 21: 72 of the demo's 216 pairs;
without them one layer's rho fell from 0.76 to 0.22). scipy's asymptotic p, which
treats pairs as independent and over-rejects (null rate 0.20-0.43), is not in
the result: :func:`asymptotic_layer_table` gives it for a CSV, marked not
validated; (2) a
cross-validated ridge regression predicting disruption from the whole per-layer
shift vector, folds grouped by prompt so that no prompt is in both training and
test data, plus leave-one-block-out ablations (down / mid / up) reported as the
change in R^2; (3) per layer, Spearman rho across models
between the weight-delta norm and the model's mean attention shift.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> layers = ["down_blocks.0.attn2", "mid_block.attn2", "up_blocks.0.attn2"]
    >>> shift = pd.DataFrame([dict(model_id=m, prompt_id=p, layer=l, attention_shift=rng.normal())
    ...                       for m in range(2) for p in range(20) for l in layers])
    >>> first = shift[shift.layer == layers[0]]
    >>> disruption = first[["model_id", "prompt_id"]].assign(drop=first.attention_shift.to_numpy())
    >>> out = link_layers(shift, disruption, "drop")
    >>> out["layers"][0]["layer"], out["layers"][0]["rho"] > 0.99
    ('down_blocks.0.attn2', True)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    StatsInputError,
    TestResult,
    benjamini_hochberg,
    check_positive_int,
    permutation_p_two_sided,
    require_columns,
    require_numeric,
    to_jsonable,
    without_structural_zeros,
)
from cemaps.labelled import transformer_depth

BLOCK_OF_PREFIX = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
BLOCK_RANK = {"down": 0, "mid": 1, "up": 2, "other": 3}
RIDGE_ALPHAS = np.logspace(-3, 3, 13)


def layer_block(layer: str) -> str:
    """UNet block of a module path: ``down``, ``mid``, ``up``, or ``other``."""
    for part in layer.split("."):
        if part in BLOCK_OF_PREFIX:
            return BLOCK_OF_PREFIX[part]
    return "other"


def _natural_key(layer: str) -> tuple[Any, ...]:
    parts = re.split(r"(\d+)", layer)
    return (
        BLOCK_RANK[layer_block(layer)],
        transformer_depth(layer),
        *[(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts],
    )


def order_layers(layers: Sequence[str], layer_order: Sequence[str] | None) -> list[str]:
    """Layers in depth order: ``layer_order`` if given, else down -> mid -> up (a transformer: double- then
    single-stream blocks) with numeric sorting."""
    layers = list(dict.fromkeys(map(str, layers)))
    if layer_order is None:
        return sorted(layers, key=_natural_key)
    position = {name: i for i, name in enumerate(layer_order)}
    unknown = [name for name in layers if name not in position]
    if unknown:
        raise StatsInputError(f"layer_order: lacks layer(s) {unknown[:3]} present in shift.layer")
    return sorted(layers, key=position.__getitem__)


def shift_matrix(
    shift: pd.DataFrame, disruption: pd.DataFrame, value: str, layer_order: Sequence[str] | None
) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
    """Joins per-layer shifts with disruption: one row per (model_id, prompt_id) present in both.

    Returns:
        (X [n_pairs x n_layers] with a (model_id, prompt_id) index, y [n_pairs], counts of dropped pairs).
        Structural-zero pairs of ``disruption`` (column ``structural_zero``) are dropped first.
    """
    require_columns(shift, ["model_id", "prompt_id", "layer", "attention_shift"], "shift")
    require_columns(disruption, ["model_id", "prompt_id", value], "disruption")
    require_numeric(shift, "attention_shift", "shift")
    require_numeric(disruption, value, "disruption")
    n_zero = int(len(disruption))
    disruption, _ = without_structural_zeros(disruption, pairs=True)
    n_zero -= int(len(disruption))
    if shift.empty or disruption.empty:
        raise StatsInputError("shift/disruption: a table is empty; expected rows per (model_id, prompt_id)")
    if shift.duplicated(["model_id", "prompt_id", "layer"]).any():
        raise StatsInputError("shift: (model_id, prompt_id, layer) must be unique; average seeds first")
    if disruption.duplicated(["model_id", "prompt_id"]).any():
        raise StatsInputError("disruption: (model_id, prompt_id) must be unique; average seeds first")
    layers = order_layers(shift["layer"].unique(), layer_order)
    wide = shift.assign(layer=shift["layer"].astype(str)).pivot(
        index=["model_id", "prompt_id"], columns="layer", values="attention_shift"
    )[layers]
    complete = wide.dropna(axis=0, how="any")
    target = disruption.set_index(["model_id", "prompt_id"])[value]
    joined = complete.join(target.rename("__target__"), how="inner")
    counts = {
        "pairs_structural_zero_dropped": n_zero,
        "pairs_in_shift": int(len(wide)),
        "pairs_missing_a_layer": int(len(wide) - len(complete)),
        "pairs_without_disruption": int(len(complete) - len(joined)),
        "pairs_used": int(len(joined)),
    }
    if len(joined) < 3:
        raise StatsInputError(
            f"shift/disruption: only {len(joined)} complete (model_id, prompt_id) pairs; expected >= 3"
        )
    y = joined.pop("__target__").to_numpy(dtype=np.float64)
    return joined, y, counts


def layer_correlations(x: pd.DataFrame, y: np.ndarray) -> pd.DataFrame:
    """Per layer Spearman rho(shift, y) over the pairs; NaN for constant input.

    Args:
        x: [n_pairs x n_layers] shifts, columns = layer names.
        y: [n_pairs] disruption.

    Returns:
        Columns layer, block, rho, n.
    """
    rows = []
    for layer in x.columns:
        column = x[layer].to_numpy(dtype=np.float64)
        rho = float("nan")
        if np.ptp(column) > 0 and np.ptp(y) > 0:  # correlation undefined for constant input
            rho = float(stats.spearmanr(column, y).statistic)
        rows.append(dict(layer=layer, block=layer_block(layer), rho=rho, n=int(y.size)))
    return pd.DataFrame(rows, columns=["layer", "block", "rho", "n"])


def asymptotic_layer_table(
    shift: pd.DataFrame, disruption: pd.DataFrame, value: str, layer_order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per layer scipy's asymptotic Spearman p and its BH q, for a CSV only: NOT a valid test here.

    scipy's p treats the (model, prompt) pairs as independent; prompts move both shift and
    disruption under every model, and it rejected a true null in 20-43% of simulated studies
    (benchmarks/stats_validity.py). Structural-zero pairs are dropped as in :func:`link_layers`.

    Returns:
        Columns layer, block, rho, n, p_asymptotic, q_bh_asymptotic, null_rate_validated (always False).
    """
    x, y, _ = shift_matrix(shift, disruption, value, layer_order)
    table = layer_correlations(x, y)
    p = [
        float(stats.spearmanr(x[layer], y).pvalue) if np.isfinite(rho) else float("nan")
        for layer, rho in zip(table["layer"], table["rho"], strict=True)
    ]
    table["p_asymptotic"] = p
    table["q_bh_asymptotic"] = benjamini_hochberg(np.asarray(p))
    table[NULL_RATE_VALIDATED] = False
    return table


PERMUTATION_BATCH = 250


def prompt_permutation_p(x: pd.DataFrame, y: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Two-sided per-layer Spearman p-values from permuting prompts, one permutation shared by all models.

    A prompt's shift and disruption are alike under every model, so pairs that
    share a prompt are not independent and scipy's asymptotic p (which assumes
    independent pairs) over-rejects when both variables carry prompt effects.
    Each draw relabels the prompts of the disruption grid, the same way for
    every model, which keeps that dependence. Uses the prompts seen by every
    model (a complete models x prompts grid); NaN when fewer than 3.

    Args:
        x: [n_pairs x n_layers] with a (model_id, prompt_id) index.
        y: [n_pairs] disruption.

    Returns:
        [n_layers] p-values, (1 + #|null| >= |observed|) / (1 + n_perm).
    """
    frame = x.assign(__target__=y)
    grid_y = frame["__target__"].unstack("prompt_id")
    complete = grid_y.columns[grid_y.notna().all(axis=0)]
    if len(complete) < 3:
        return np.full(x.shape[1], np.nan)
    grid_y = grid_y[complete].to_numpy(dtype=np.float64)  # [n_models, n_prompts]
    rank_y = stats.rankdata(grid_y.ravel()).reshape(grid_y.shape)
    centred_y = rank_y - rank_y.mean()
    centred_x = []
    for layer in x.columns:
        grid_x = frame[layer].unstack("prompt_id")[complete].to_numpy(dtype=np.float64)
        rank_x = stats.rankdata(grid_x.ravel()).reshape(grid_x.shape)
        centred_x.append(rank_x - rank_x.mean())
    centred_x = np.stack(centred_x)  # [n_layers, n_models, n_prompts]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.linalg.norm(centred_x, axis=(1, 2)) * np.linalg.norm(centred_y)
        observed = np.einsum("lmp,mp->l", centred_x, centred_y) / scale
        null = np.empty((n_perm, x.shape[1]))
        n_prompts = grid_y.shape[1]
        for start in range(0, n_perm, PERMUTATION_BATCH):
            size = min(PERMUTATION_BATCH, n_perm - start)
            permutations = rng.permuted(np.broadcast_to(np.arange(n_prompts), (size, n_prompts)), axis=1)
            permuted_y = centred_y[:, permutations]  # [n_models, size, n_prompts]
            null[start : start + size] = np.einsum("lmp,mbp->bl", centred_x, permuted_y) / scale
    p = permutation_p_two_sided(observed, null)
    return np.where(np.isfinite(observed), p, np.nan)


def cross_validated_r2(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cv_folds: int, seed: int) -> np.ndarray:
    """Per-fold test R^2 of StandardScaler + RidgeCV, GroupKFold by ``groups`` (prompts)."""
    splitter = GroupKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    scores = cross_validate(model, x, y, groups=groups, cv=splitter, scoring="r2")
    return scores["test_score"]


def ridge_with_ablation(x: pd.DataFrame, y: np.ndarray, cv_folds: int, seed: int) -> dict[str, Any]:
    """Cross-validated ridge R^2 on all layers, and the change in R^2 when each block is left out."""
    groups = x.index.get_level_values("prompt_id").astype(str).to_numpy()
    n_groups = len(np.unique(groups))
    folds = min(cv_folds, n_groups)
    text = (
        f"sklearn Pipeline(StandardScaler, RidgeCV(alphas=logspace(-3, 3, 13))); GroupKFold({folds}, "
        f"shuffle, seed {seed}) grouped by prompt_id; statistic = mean test R^2 over folds"
    )
    if folds < 2:
        return {
            "full": TestResult(
                test="ridge_cv_r2",
                statistic=None,
                p=None,
                effect_size=None,
                effect_size_name="r2",
                n=int(y.size),
                method=text,
                extra={"computable": False, "reason": f"needs >= 2 prompts, has {n_groups}"},
            ),
            "ablation": pd.DataFrame(columns=["block", "n_layers_dropped", "r2", "delta_r2"]),
        }
    full_scores = cross_validated_r2(x.to_numpy(), y, groups, folds, seed)
    full_r2 = float(full_scores.mean())
    rows = []
    blocks = [layer_block(layer) for layer in x.columns]
    for block in sorted(set(blocks), key=BLOCK_RANK.__getitem__):
        keep = [b != block for b in blocks]
        if not any(keep):
            rows.append(dict(block=block, n_layers_dropped=len(blocks), r2=float("nan"), delta_r2=float("nan")))
            continue
        r2 = float(cross_validated_r2(x.loc[:, keep].to_numpy(), y, groups, folds, seed).mean())
        rows.append(dict(block=block, n_layers_dropped=int(len(blocks) - sum(keep)), r2=r2, delta_r2=r2 - full_r2))
    full = TestResult(
        test="ridge_cv_r2",
        statistic=full_r2,
        p=None,
        effect_size=full_r2,
        effect_size_name="r2",
        n=int(y.size),
        method=text,
        extra={"computable": True, "fold_r2": full_scores.tolist(), "n_prompts": n_groups, "n_layers": int(x.shape[1])},
    )
    return {
        "full": full,
        "ablation": pd.DataFrame(rows, columns=["block", "n_layers_dropped", "r2", "delta_r2"]),
        "ablation_method": "same folds without the block's layers; delta_r2 = r2(without block) - r2(all)",
    }


def weight_delta_link(shift: pd.DataFrame, weight_delta: pd.DataFrame, layers: Sequence[str]) -> pd.DataFrame:
    """Per layer Spearman rho across models of delta_norm vs the model's mean attention shift (>= 3 models).

    Descriptive only: models of one subject or one method share levels of both variables, so no
    p-value is given (scipy's would treat the models as independent).
    """
    require_columns(weight_delta, ["model_id", "layer", "delta_norm"], "weight_delta")
    require_numeric(weight_delta, "delta_norm", "weight_delta")
    if weight_delta.duplicated(["model_id", "layer"]).any():
        raise StatsInputError("weight_delta: (model_id, layer) must be unique")
    mean_shift = shift.groupby(["model_id", "layer"], sort=True)["attention_shift"].mean().rename("mean_shift")
    joined = (
        weight_delta.assign(layer=weight_delta["layer"].astype(str))
        .set_index(["model_id", "layer"])
        .join(mean_shift, how="inner")
    )
    rows = []
    for layer in layers:
        part = joined.xs(layer, level="layer") if layer in joined.index.get_level_values("layer") else joined.iloc[:0]
        n = int(len(part))
        row = dict(
            layer=layer,
            block=layer_block(layer),
            n_models=n,
            rho=float("nan"),
            computable=False,
            reason="",
        )
        if n < 3:
            row["reason"] = f"needs >= 3 models with both delta_norm and attention_shift, has {n}"
        elif np.ptp(part["delta_norm"]) == 0 or np.ptp(part["mean_shift"]) == 0:
            row["reason"] = "delta_norm or mean attention shift is constant across models"
        else:
            row.update(rho=float(stats.spearmanr(part["delta_norm"], part["mean_shift"]).statistic), computable=True)
        rows.append(row)
    return pd.DataFrame(rows, columns=["layer", "block", "n_models", "rho", "computable", "reason"])


def link_layers(
    shift: pd.DataFrame,
    disruption: pd.DataFrame,
    value: str,
    weight_delta: pd.DataFrame | None = None,
    layer_order: Sequence[str] | None = None,
    cv_folds: int = 5,
    seed: int = 0,
    ridge: bool = True,
    n_perm: int = 999,
) -> dict[str, Any]:
    """Family 4: link per-layer attention shift (and weight change) to disruption.

    Args:
        shift: (model_id, prompt_id, layer, attention_shift), layer = module path.
        disruption: (model_id, prompt_id, ``value``).
        value: metric column of ``disruption``.
        weight_delta: optional (model_id, layer, delta_norm).
        layer_order: optional UNet order of layer names; default down -> mid -> up.
        cv_folds: GroupKFold splits (capped at the number of prompts).
        seed: shuffles the grouped folds.
        ridge: fit the cross-validated ridge and its ablations.
        n_perm: prompt permutations for ``p_perm`` (0 skips them). ``p_perm`` /
            ``q_bh_perm`` stay valid when prompts affect both shift and
            disruption under every model.

    Returns:
        JSON-able dict: ``layers`` (records: layer, block, rho, n, p_perm, q_bh_perm; structural-zero
        pairs left out),
        ``ridge`` (full TestResult dict + ``ablation`` records) or None,
        ``weight_delta`` (records) or None, ``pairs`` (counts).
    """
    check_positive_int(cv_folds, "cv_folds", minimum=2)
    check_positive_int(n_perm, "n_perm", minimum=0)
    x, y, counts = shift_matrix(shift, disruption, value, layer_order)
    correlations = layer_correlations(x, y)
    p_perm = (
        prompt_permutation_p(x, y, n_perm, np.random.default_rng(seed)) if n_perm > 0 else np.full(x.shape[1], np.nan)
    )
    correlations["p_perm"] = p_perm
    correlations["q_bh_perm"] = benjamini_hochberg(p_perm)
    return to_jsonable(
        {
            "value": value,
            "layers": correlations,
            "layers_method": (
                "scipy.stats.spearmanr per layer over (model, prompt) pairs; p_perm = two-sided, "
                f"{n_perm} permutations of prompts shared by all models (prompts seen by every model), "
                "null rate measured in benchmarks/stats_validity.py; q_bh_perm = Benjamini-Hochberg over layers; "
                "structural-zero pairs left out; scipy's asymptotic p (not validated) only in "
                "layers_asymptotic.csv"
            ),
            "ridge": ridge_with_ablation(x, y, cv_folds, seed) if ridge else None,
            "weight_delta": (
                weight_delta_link(shift, weight_delta, list(x.columns)) if weight_delta is not None else None
            ),
            "pairs": counts,
        }
    )
