"""Family 5: do prompts (and models) cluster by their known labels?

Prompts are clustered by their CEM column profiles (disruption under every
model), models by their rows (disruption over every prompt), hierarchically with
scipy. Each tree is cut at k = number of classes of a label, and the partition
is compared with the label by adjusted Rand index and normalised mutual
information (sklearn). A permutation p-value for the ARI (labels shuffled)
says whether the agreement exceeds chance.

A constant profile (a model whose every value is 0, e.g. Textual Inversion on
prompts without its token) has no correlation distance: it is set apart, listed
in ``set_apart`` with its reason, and the others are clustered and compared
with their labels. Before, one such profile made the whole question "not
computed" (190 of 200 simulated studies with skewed non-negative disruption).

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> cem = pd.DataFrame(rng.normal(size=(4, 6)) + [0, 0, 0, 5, 5, 5],
    ...                    index=[f"m{i}" for i in range(4)], columns=[f"p{j}" for j in range(6)])
    >>> prompts = pd.DataFrame({"prompt_id": cem.columns, "abstractness": ["concrete"] * 3 + ["abstract"] * 3})
    >>> models = pd.DataFrame({"model_id": cem.index, "method": ["lora", "lora", "ti", "ti"]})
    >>> out = cluster(cem, prompts, models, metric="euclidean", n_perm=99)
    >>> out["prompts"]["agreement"][0]["ari"]
    1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cemaps.analysis.stats.common import (
    StatsInputError,
    check_choice,
    check_positive_int,
    permutation_p_greater,
    to_jsonable,
)

METRICS = ("correlation", "euclidean")
LINKAGE_METHODS = ("single", "complete", "average", "weighted", "centroid", "median", "ward")
EUCLIDEAN_ONLY = ("centroid", "median", "ward")
PROMPT_LABELS = ("abstractness", "domain")
MODEL_LABELS = ("method",)


def _labels_by_id(
    labels: pd.DataFrame, id_column: str, ids: pd.Index, wanted: tuple[str, ...], table_name: str
) -> pd.DataFrame:
    """Label table indexed by id (from a column or the index), aligned to ``ids``; missing labels raise."""
    if not isinstance(labels, pd.DataFrame):
        raise StatsInputError(f"{table_name}: expected a pandas DataFrame, got {type(labels).__name__}")
    table = labels.set_index(id_column) if id_column in labels.columns else labels
    table.index = table.index.astype(str)
    if table.index.duplicated().any():
        raise StatsInputError(
            f"{table_name}: {id_column} must be unique; {table.index[table.index.duplicated()][0]!r} repeats"
        )
    present = [c for c in wanted if c in table.columns]
    if not present:
        raise StatsInputError(f"{table_name}: needs at least one of the columns {list(wanted)}")
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise StatsInputError(f"{table_name}: no labels for {id_column} {missing[:3]} of the CEM")
    return table.loc[list(ids), present]


def tree(profiles: np.ndarray, method: str, metric: str, what: str) -> np.ndarray:
    """Linkage matrix [n - 1 x 4] of the rows of ``profiles`` [n x features], optimal leaf order."""
    distances = pdist(profiles, metric=metric)
    if not np.all(np.isfinite(distances)):
        raise StatsInputError(f"cem: {what} profiles have no finite {metric} distance; expected non-constant rows")
    return hierarchy.linkage(distances, method=method, optimal_ordering=True)


def constant_profiles(profiles: np.ndarray, metric: str) -> np.ndarray:
    """[n] True where a row has no correlation distance (constant, up to 1e-12 of its scale); all False for euclidean."""
    if metric != "correlation":
        return np.zeros(profiles.shape[0], dtype=bool)
    scale = np.maximum(1.0, np.abs(profiles).max(axis=1))
    return np.ptp(profiles, axis=1) <= 1e-12 * scale


def _pair_index(class_codes: np.ndarray, cluster_codes: np.ndarray) -> np.ndarray:
    """sum_ij C(n_ij, 2) of the class x cluster contingency table, per row of ``class_codes`` [B, n].

    Shuffling class labels keeps both margins, so the ARI's expected and maximum
    index are fixed and the ARI is an increasing function of this index: the
    permutation p of the ARI is the permutation p of the index (Hubert & Arabie
    1985), computed here for all draws at once instead of one sklearn call each.
    """
    n_clusters = int(cluster_codes.max()) + 1
    n_classes = int(class_codes.max()) + 1
    draws = class_codes.shape[0]
    cells = (np.arange(draws)[:, None] * n_classes + class_codes) * n_clusters + cluster_codes[None, :]
    counts = np.bincount(cells.ravel(), minlength=draws * n_classes * n_clusters).reshape(draws, -1)
    return (counts * (counts - 1) / 2.0).sum(axis=1)


def label_agreement(linkage: np.ndarray, labels: pd.DataFrame, n_perm: int, rng: np.random.Generator) -> pd.DataFrame:
    """Cut the tree at k = number of classes of each label; ARI, NMI and a permutation p for the ARI."""
    rows = []
    for column in labels.columns:
        classes = labels[column].astype(str).to_numpy()
        k = int(len(np.unique(classes)))
        row = dict(
            label=column,
            k=k,
            n_clusters=0,
            ari=float("nan"),
            nmi=float("nan"),
            p_ari=float("nan"),
            computable=False,
            reason="",
        )
        if k < 2 or k >= classes.size:
            row["reason"] = f"needs 2 <= classes < items; has {k} classes for {classes.size} items"
            rows.append(row)
            continue
        assignment = hierarchy.fcluster(linkage, t=k, criterion="maxclust")
        ari = adjusted_rand_score(classes, assignment)
        class_codes = np.unique(classes, return_inverse=True)[1]
        cluster_codes = np.unique(assignment, return_inverse=True)[1]
        observed = _pair_index(class_codes[None, :], cluster_codes)[0]
        null = _pair_index(
            rng.permuted(np.broadcast_to(class_codes, (n_perm, class_codes.size)), axis=1), cluster_codes
        )
        row.update(
            n_clusters=int(len(np.unique(assignment))),
            ari=float(ari),
            nmi=float(normalized_mutual_info_score(classes, assignment)),
            p_ari=float(permutation_p_greater(observed, null)),
            computable=True,
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", "k", "n_clusters", "ari", "nmi", "p_ari", "computable", "reason"])


def cluster(
    cem: pd.DataFrame,
    prompt_labels: pd.DataFrame,
    model_labels: pd.DataFrame,
    method: str = "average",
    metric: str = "correlation",
    n_perm: int = 999,
    seed: int = 0,
) -> dict[str, Any]:
    """Family 5: hierarchical clustering of prompts and models, compared with their labels.

    Args:
        cem: [n_models x n_prompts] concept entanglement map, index = model_id,
            columns = prompt_id, no missing cells.
        prompt_labels: prompt_id (column or index) with abstractness and/or domain.
        model_labels: model_id (column or index) with method.
        method: scipy linkage method; centroid/median/ward need ``metric="euclidean"``.
        metric: ``"correlation"`` (profile shape) or ``"euclidean"`` (profile level and shape).
        n_perm: label permutations for the ARI p-values.
        seed: seeds those permutations.

    Returns:
        JSON-able dict with ``prompts`` and ``models``, each holding ``ids`` (the
        clustered ids, in CEM order), ``linkage`` ([n-1 x 4] lists), ``leaf_order`` (ids in
        dendrogram order), ``set_apart`` (records: id, reason; constant profiles under the
        correlation metric) and ``agreement`` (records: label, k, n_clusters, ari,
        nmi, p_ari), or ``not_computed`` when fewer than 2 profiles remain.
    """
    check_choice(method, "method", LINKAGE_METHODS)
    check_choice(metric, "metric", METRICS)
    check_positive_int(n_perm, "n_perm")
    if method in EUCLIDEAN_ONLY and metric != "euclidean":
        raise StatsInputError(f"method={method!r}: needs metric='euclidean', got {metric!r}")
    if not isinstance(cem, pd.DataFrame):
        raise StatsInputError(f"cem: expected a pandas DataFrame [models x prompts], got {type(cem).__name__}")
    if cem.shape[0] < 2 or cem.shape[1] < 2:
        raise StatsInputError(f"cem: expected >= 2 models and >= 2 prompts, got shape {cem.shape}")
    values = cem.to_numpy(dtype=np.float64) if all(pd.api.types.is_numeric_dtype(t) for t in cem.dtypes) else None
    if values is None or not np.all(np.isfinite(values)):
        raise StatsInputError("cem: expected finite numeric cells (no NaN); fill or drop incomplete rows/columns")
    model_ids, prompt_ids = cem.index.astype(str), cem.columns.astype(str)
    if model_ids.duplicated().any() or prompt_ids.duplicated().any():
        raise StatsInputError("cem: model ids (index) and prompt ids (columns) must be unique")
    prompts = _labels_by_id(prompt_labels, "prompt_id", prompt_ids, PROMPT_LABELS, "prompt_labels")
    models = _labels_by_id(model_labels, "model_id", model_ids, MODEL_LABELS, "model_labels")
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "method": method,
        "metric": metric,
        "agreement_method": (
            "scipy.cluster.hierarchy.fcluster(maxclust=k classes); "
            "sklearn adjusted_rand_score and normalized_mutual_info_score; "
            f"p_ari = one-sided permutation p, {n_perm} label shuffles; "
            "conservative (ties of the ARI): null rate at or below 0.05 in benchmarks/stats_validity.py "
            "(docs/statistics.md), so read it as an upper bound; constant profiles are set apart first"
        ),
    }
    for name, profiles, ids, labels in (
        ("prompts", values.T, prompt_ids, prompts),
        ("models", values, model_ids, models),
    ):
        constant = constant_profiles(profiles, metric)
        set_apart = [
            {"id": ids[i], "reason": "constant profile: no correlation distance (e.g. all structural zeros)"}
            for i in np.flatnonzero(constant)
        ]
        kept = np.flatnonzero(~constant)
        kept_ids = [ids[i] for i in kept]
        if kept.size < 2:
            out[name] = {
                "ids": kept_ids,
                "set_apart": set_apart,
                "not_computed": f"{kept.size} {name} with a non-constant profile; clustering needs >= 2",
            }
            continue
        linkage = tree(profiles[kept], method, metric, name)
        out[name] = {
            "ids": kept_ids,
            "linkage": linkage,
            "leaf_order": [kept_ids[i] for i in hierarchy.leaves_list(linkage)],
            "set_apart": set_apart,
            "agreement": label_agreement(linkage, labels.iloc[kept], n_perm, rng),
        }
    return to_jsonable(out)
