"""Family 3: does disruption follow semantic proximity to the personalized subject?

Per model, the prompts whose domain equals the subject's domain ("in-domain")
are compared with the rest by a one-sided permutation test of the difference in
means (in - out), permuting domain labels across that model's prompts. Models
are combined by one permutation per draw of the prompt -> domain labels, applied
to every model at once; the statistic is the sum of per-model differences, so
each model keeps its own scale and its own in/out counts. A prompt is the unit
that carries a domain, and the same prompt is disrupted alike under different
models; permuting each model independently would break that dependence and
make the combined test anti-conservative (models of one subject share their
in-domain prompts).

Optionally, the Spearman correlation between text similarity (subject
descriptor vs prompt) and disruption over all (model, prompt) pairs is tested
the same way: prompts are permuted within every model by one shared
permutation.

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"m{m}", subject_domain="faces", prompt_id=p,
    ...              domain=("faces", "animals")[p % 2], alignment_drop=float(p % 2 == 0) + p / 100)
    ...         for m in range(2) for p in range(12)]
    >>> out = semantic_proximity(pd.DataFrame(rows), "alignment_drop", n_perm=199)
    >>> out["combined"]["p"] < 0.05
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    StatsInputError,
    TestResult,
    check_choice,
    check_positive_int,
    permutation_p_greater,
    permutation_p_two_sided,
    require_columns,
    require_constant_within,
    require_numeric,
    to_jsonable,
)

ALTERNATIVES = ("greater", "two-sided")
PERMUTATION_BATCH = 500


def permuted_label_matrix(labels: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm x n] independent random permutations of a boolean label vector."""
    return rng.permuted(np.broadcast_to(labels, (n_perm, labels.size)), axis=1)


def in_domain_difference(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of values where labels is True minus mean where False, per row of ``labels``.

    Args:
        values: [n] disruption of one model's prompts.
        labels: [n] or [B, n] booleans (in-domain).

    Returns:
        [] or [B] differences in means.
    """
    labels = np.asarray(labels, dtype=np.float64)
    n_in = labels.sum(axis=-1)
    total = values.sum()
    sum_in = labels @ values
    return sum_in / n_in - (total - sum_in) / (values.size - n_in)


def proximity_permutation(
    disruption: pd.DataFrame, value: str, n_perm: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, TestResult, list[dict[str, Any]]]:
    """Per-model and combined one-sided permutation tests of in-domain > out-of-domain.

    Per model: domain labels permuted across that model's prompts. Combined:
    each draw permutes the prompt -> domain assignment once and applies it to
    every model (a permutation within each model, the same for all), statistic =
    sum of per-model differences. Using one permutation for all models keeps
    the correlation between models that share prompts: the same prompt tends to
    be disrupted alike under every model, and models of one subject share their
    in-domain set, so independent per-model permutations would understate the
    null variance of the sum and over-reject.

    Returns:
        (per_model table, combined TestResult, skipped models with reasons).
    """
    prompt_domain = require_constant_within(disruption, "prompt_id", "domain", "disruption").astype(str)
    prompt_position = pd.Series(np.arange(len(prompt_domain)), index=prompt_domain.index)
    domain_codes, domain_names = pd.factorize(prompt_domain.to_numpy())
    prompt_permutations = rng.permuted(
        np.broadcast_to(np.arange(domain_codes.size), (n_perm, domain_codes.size)), axis=1
    )  # [n_perm, n_prompts]
    permuted_codes = domain_codes[prompt_permutations]  # [n_perm, n_prompts]
    per_model_rows, skipped = [], []
    null_sums, observed_sum = np.zeros(n_perm), 0.0
    for model_id, group in disruption.groupby("model_id", sort=True):
        values = group[value].to_numpy(dtype=np.float64)
        subject_domain = str(group["subject_domain"].iloc[0])
        labels = (group["domain"].astype(str) == subject_domain).to_numpy()
        n_in = int(labels.sum())
        if n_in == 0 or n_in == labels.size:
            reason = "no in-domain prompts" if n_in == 0 else "no out-of-domain prompts"
            skipped.append({"model_id": model_id, "subject_domain": subject_domain, "reason": reason})
            continue
        observed = float(in_domain_difference(values, labels))
        within_model_null = in_domain_difference(values, permuted_label_matrix(labels, n_perm, rng))
        subject_code = np.flatnonzero(domain_names == subject_domain)[0]
        positions = prompt_position.loc[group["prompt_id"]].to_numpy()
        combined_labels = permuted_codes[:, positions] == subject_code  # [n_perm, n_model_prompts]
        n_in_draw = combined_labels.sum(axis=1)
        both_groups = (n_in_draw > 0) & (n_in_draw < labels.size)  # always true when models share all prompts
        with np.errstate(divide="ignore", invalid="ignore"):
            draw_difference = in_domain_difference(values, combined_labels)
        null_sums += np.where(both_groups, draw_difference, 0.0)
        observed_sum += observed
        per_model_rows.append(
            dict(
                model_id=model_id,
                subject_domain=subject_domain,
                n_in=n_in,
                n_out=int(labels.size - n_in),
                mean_in=float(values[labels].mean()),
                mean_out=float(values[~labels].mean()),
                difference=observed,
                p=float(permutation_p_greater(observed, within_model_null)),
            )
        )
    per_model = pd.DataFrame(
        per_model_rows,
        columns=["model_id", "subject_domain", "n_in", "n_out", "mean_in", "mean_out", "difference", "p"],
    )
    text = (
        f"one-sided permutation test (in-domain > out-of-domain): each of {n_perm} draws permutes the "
        f"prompt -> domain labels once and applies it to every model; statistic = sum over models of "
        f"mean(in) - mean(out); p = (1 + #null >= observed) / (1 + draws); effect_size = mean per-model "
        f"difference. Per-model p: labels permuted within that model alone"
    )
    if per_model.empty:
        combined = TestResult(
            test="proximity_prompt_permutation",
            statistic=None,
            p=None,
            effect_size=None,
            effect_size_name="mean_difference",
            n=0,
            method=text,
            extra={"computable": False, "reason": "no model has both in- and out-of-domain prompts"},
        )
    else:
        combined = TestResult(
            test="proximity_prompt_permutation",
            statistic=float(observed_sum),
            p=float(permutation_p_greater(observed_sum, null_sums)),
            effect_size=float(per_model["difference"].mean()),
            effect_size_name="mean_difference",
            n=int(len(per_model)),
            method=text,
            extra={
                "computable": True,
                NULL_RATE_VALIDATED: True,
                "n_perm": n_perm,
                "n_models": int(len(per_model)),
                "n_models_skipped": len(skipped),
                "n_prompts": int(domain_codes.size),
            },
        )
    return per_model, combined, skipped


def similarity_spearman(
    pairs: pd.DataFrame, value: str, n_perm: int, rng: np.random.Generator, alternative: str
) -> TestResult:
    """Spearman rho(similarity, value) over all pairs, with a prompt-permutation p-value.

    Only prompts seen by every model are used (a complete models x prompts
    grid). Each draw permutes the prompts of the similarity grid once, for all
    models alike (within-model permutation that keeps prompts shared by models
    aligned, see :func:`proximity_permutation`). Ranks are taken once over all
    pairs, so each draw's rho is the Pearson correlation of permuted ranks.
    """
    similarity_grid = pairs.pivot(index="model_id", columns="prompt_id", values="similarity")
    complete_prompts = similarity_grid.columns[similarity_grid.notna().all(axis=0)]
    similarity_grid = similarity_grid[complete_prompts]
    disruption_grid = pairs.pivot(index="model_id", columns="prompt_id", values=value)[complete_prompts]
    n_pairs = int(similarity_grid.size)
    text = (
        f"Spearman rho (scipy.stats.spearmanr) over all (model, prompt) pairs of prompts seen by every model; "
        f"p from {n_perm} draws that permute prompts of the similarity grid, the same permutation for every "
        f"model ({alternative}); p = (1 + #null >= observed) / (1 + draws)"
    )
    similarity = similarity_grid.to_numpy(dtype=np.float64)
    disruption = disruption_grid.to_numpy(dtype=np.float64)
    if len(complete_prompts) < 3 or np.ptp(similarity) == 0 or np.ptp(disruption) == 0:
        return TestResult(
            test="similarity_spearman",
            statistic=None,
            p=None,
            effect_size=None,
            effect_size_name="spearman_rho",
            n=n_pairs,
            method=text,
            extra={
                "computable": False,
                "n_prompts": int(len(complete_prompts)),
                "reason": "needs >= 3 prompts seen by every model and non-constant values",
            },
        )
    rho = float(stats.spearmanr(similarity.ravel(), disruption.ravel()).statistic)
    rank_x = stats.rankdata(similarity.ravel()).reshape(similarity.shape)
    rank_y = stats.rankdata(disruption.ravel()).reshape(disruption.shape)
    centred_x = rank_x - rank_x.mean()
    centred_y = rank_y - rank_y.mean()
    scale = np.linalg.norm(centred_x) * np.linalg.norm(centred_y)
    n_prompts = similarity.shape[1]
    null = np.empty(n_perm)
    for start in range(0, n_perm, PERMUTATION_BATCH):  # bounds memory at paper scale
        size = min(PERMUTATION_BATCH, n_perm - start)
        permutations = rng.permuted(np.broadcast_to(np.arange(n_prompts), (size, n_prompts)), axis=1)
        permuted_x = centred_x[:, permutations]  # [n_models, size, n_prompts]
        null[start : start + size] = np.einsum("mbp,mp->b", permuted_x, centred_y) / scale
    p = permutation_p_greater(rho, null) if alternative == "greater" else permutation_p_two_sided(rho, null)
    return TestResult(
        test="similarity_spearman",
        statistic=rho,
        p=float(p),
        effect_size=rho,
        effect_size_name="spearman_rho",
        n=n_pairs,
        method=text,
        extra={
            "computable": True,
            NULL_RATE_VALIDATED: True,
            "n_perm": n_perm,
            "n_models": int(similarity.shape[0]),
            "n_prompts": int(n_prompts),
            "n_pairs_dropped_incomplete_prompts": int(len(pairs) - n_pairs),
            "alternative": alternative,
        },
    )


def semantic_proximity(
    disruption: pd.DataFrame,
    value: str,
    n_perm: int = 9999,
    seed: int = 0,
    similarity: pd.DataFrame | None = None,
    alternative: str = "greater",
) -> dict[str, Any]:
    """Family 3: is disruption larger for prompts semantically close to the subject?

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            prompt_id, subject_domain, domain and ``value``.
        value: metric column.
        n_perm: permutation draws.
        seed: seeds numpy's Generator for all draws.
        similarity: optional (model_id, prompt_id, similarity) table.
        alternative: for the similarity test, ``"greater"`` (closer prompts
            more disrupted, matching the in-domain test) or ``"two-sided"``.

    Returns:
        JSON-able dict: ``per_model`` (records), ``combined`` (TestResult dict),
        ``skipped_models`` (records), ``similarity`` (TestResult dict or None).
    """
    check_positive_int(n_perm, "n_perm")
    check_choice(alternative, "alternative", ALTERNATIVES)
    require_columns(disruption, ["model_id", "prompt_id", "subject_domain", "domain", value], "disruption")
    require_numeric(disruption, value, "disruption")
    if disruption.empty:
        raise StatsInputError("disruption: table is empty; expected rows per (model_id, prompt_id)")
    if disruption.duplicated(["model_id", "prompt_id"]).any():
        raise StatsInputError("disruption: (model_id, prompt_id) must be unique; average seeds first")
    require_constant_within(disruption, "model_id", "subject_domain", "disruption")
    rng = np.random.default_rng(seed)
    per_model, combined, skipped = proximity_permutation(disruption, value, n_perm, rng)
    similarity_result = None
    if similarity is not None:
        require_columns(similarity, ["model_id", "prompt_id", "similarity"], "similarity")
        require_numeric(similarity, "similarity", "similarity")
        if similarity.duplicated(["model_id", "prompt_id"]).any():
            raise StatsInputError("similarity: (model_id, prompt_id) must be unique")
        pairs = disruption[["model_id", "prompt_id", value]].merge(
            similarity[["model_id", "prompt_id", "similarity"]],
            on=["model_id", "prompt_id"],
            how="inner",
            validate="one_to_one",
        )
        if len(pairs) < 3:
            raise StatsInputError(
                f"similarity: only {len(pairs)} (model_id, prompt_id) pairs match disruption; expected >= 3"
            )
        similarity_result = similarity_spearman(pairs, value, n_perm, rng, alternative)
    return to_jsonable(
        {
            "value": value,
            "per_model": per_model,
            "combined": combined,
            "skipped_models": skipped,
            "similarity": similarity_result,
        }
    )
