"""Family 3: does disruption follow semantic proximity to the personalized subject?

The question is an interaction: does a subject's model disrupt prompts of its
own domain MORE than the other models disrupt the same prompts? Comparing a
model's in-domain prompts with its out-of-domain prompts answers a different
question, confounded with domain main effects: when face prompts are more
fragile under EVERY model, a face subject's in-domain prompts look "more
disrupted" with no proximity at all (issue 21 measured a false-positive rate of
0.31 at the paper's design). So every value is first centred on its prompt: its
disruption minus the mean disruption of that prompt over all models (prompts
seen by every model). A prompt's own fragility, and with it any domain main
effect, cancels; what is left is how much more this model disrupts the prompt
than the models do on average.

On those prompt-centred values the statistic is the sum over models of
in-domain minus out-of-domain mean. Its null rearranges the subjects' domains
across subjects (a subject's models move together): under no proximity it does
not matter which subject carries which domain, even when a model prefers some
domain for reasons of its own. (Permuting prompts instead would count such
model x domain preferences as proximity.) Few subjects give few arrangements:
3 subjects of 3 domains give 6, so p is never below 1/6 and the result says so.
The effect is the own-domain excess delta in the metric's units (what, added to
a model's pairs of its own domain, explains the statistic), with a 95% interval
that inverts the same test, so interval and p never disagree.
Models whose pairs are all structural zeros are left out (they compute what the
base computes). The test is one-sided: a p near 1 means the in-domain
difference fell below nearly every permutation, i.e. subjects' models disrupt
their own domain LESS than other models do; it is not evidence of "no
proximity", which the interval (and the design's minimum detectable effect)
speaks to.

Optionally, Spearman's rho between text similarity (subject descriptor vs
prompt) and disruption, both prompt-centred the same way, is tested over all
(model, prompt) pairs with one prompt permutation shared by every model
(:func:`cemaps.analysis.stats.similarity.similarity_spearman`, importable from here).

Example:
    >>> import pandas as pd
    >>> rows = [dict(model_id=f"m{m}", subject_id=f"s{m}", subject_domain=("faces", "animals")[m % 2], prompt_id=p,
    ...              domain=("faces", "animals")[p % 2], alignment_drop=float(p % 2 == m % 2) + p / 100)
    ...         for m in range(8) for p in range(12)]
    >>> out = semantic_proximity(pd.DataFrame(rows), "alignment_drop", n_perm=199)
    >>> out["combined"]["p"], out["combined"]["extra"]["n_arrangements"], round(out["combined"]["effect_size"], 3)
    (0.0142..., 70, 1.0)
    >>> out["combined"]["extra"]["ci_low"] <= 1.0 <= out["combined"]["extra"]["ci_high"]
    True
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    StatsInputError,
    TestResult,
    check_choice,
    check_positive_int,
    inverted_interval,
    permutation_p_greater,
    require_columns,
    require_constant_within,
    require_numeric,
    to_jsonable,
    without_structural_zeros,
)
from cemaps.analysis.stats.similarity import similarity_spearman

# similarity_spearman and inverted_interval were defined here before issue 21's split; they stay importable from here
__all__ = [
    "ALTERNATIVES",
    "domain_differences",
    "inverted_interval",
    "prompt_centred",
    "proximity_permutation",
    "semantic_proximity",
    "similarity_spearman",
    "subject_arrangements",
]

ALTERNATIVES = ("greater", "two-sided")


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


def prompt_centred(disruption: pd.DataFrame, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """[n_models x n_prompts] raw and prompt-centred grids over the prompts every model has.

    centred[m, p] = value[m, p] - mean over models of value[:, p]: the prompt's own fragility
    (and every domain main effect) cancels.
    """
    grid = disruption.pivot_table(index="model_id", columns="prompt_id", values=value, aggfunc="mean")
    grid = grid[grid.columns[grid.notna().all(axis=0)]]
    return grid, grid - grid.mean(axis=0)


READING = (
    "one-sided (in-domain more disrupted). p near 1: the in-domain difference fell below nearly every "
    "arrangement of subject domains, i.e. the subjects' models disrupted their own domain LESS than other "
    "models did; that is not evidence of no proximity effect: read the interval and the minimum detectable effect"
)
ENUMERATE_SUBJECTS = 8  # up to 8! = 40320 arrangements: enumerate them (exact p) instead of sampling


def domain_differences(centred: np.ndarray, prompt_codes: np.ndarray, n_domains: int) -> np.ndarray:
    """[..., n_models, n_domains] mean of centred values on the domain's prompts minus mean on the others.

    0 for a domain with no prompts or with every prompt (no difference to take).

    Args:
        centred: [..., n_models, n_prompts] prompt-centred values.
        prompt_codes: [n_prompts] domain code of each prompt.
    """
    one_hot = (prompt_codes[:, None] == np.arange(n_domains)).astype(np.float64)  # [P, D]
    n_in = one_hot.sum(axis=0)
    n_out = prompt_codes.size - n_in
    sum_in = centred @ one_hot
    total = centred.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = sum_in / n_in - (total - sum_in) / n_out
    return np.where((n_in > 0) & (n_out > 0), difference, 0.0)


def subject_arrangements(subject_codes: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Arrangements of the subjects' domain codes: all distinct ones (exact) when few, else ``n_perm`` random ones.

    Returns:
        ([n_arrangements, n_subjects] domain codes per subject, exact). With ``exact`` the observed
        arrangement is among the rows.
    """
    n = subject_codes.size
    distinct = math.factorial(n) // math.prod(math.factorial(int(c)) for c in np.bincount(subject_codes))
    if n <= ENUMERATE_SUBJECTS and distinct <= max(n_perm, 1):
        return np.array(sorted(set(itertools.permutations(subject_codes.tolist())))), True
    return rng.permuted(np.broadcast_to(subject_codes, (n_perm, n)), axis=1), False


def proximity_permutation(
    disruption: pd.DataFrame, value: str, n_perm: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, TestResult, list[dict[str, Any]]]:
    """Per-model differences and the combined one-sided test of the domain x subject interaction.

    Values are prompt-centred (:func:`prompt_centred`). The statistic is the sum over models of
    (mean on the subject's domain's prompts - mean on the others). Its null permutes the
    subjects' domains across subjects (a subject's models move together): under no proximity,
    which subject carries which domain does not matter, even when models have domain
    preferences of their own or domains differ in fragility. All distinct arrangements are
    used when there are few (exact p; with 3 subjects of 3 domains the smallest possible p is
    1/6, and the result says so), else ``n_perm`` random ones.

    Returns:
        (per_model table, combined TestResult, skipped models with reasons).
    """
    prompt_domain = require_constant_within(disruption, "prompt_id", "domain", "disruption").astype(str)
    model_domain = disruption.groupby("model_id", sort=True)["subject_domain"].first().astype(str)
    subject_column = "subject_id" if "subject_id" in disruption.columns else "model_id"  # else: own subject
    model_subject = disruption.groupby("model_id", sort=True)[subject_column].first().astype(str)
    raw, centred = prompt_centred(disruption, value)
    domains = prompt_domain.loc[centred.columns].to_numpy()
    text = (
        "interaction test on prompt-centred values (value minus the prompt's mean over all models, prompts seen "
        "by every model): statistic = sum over models of mean(own subject's domain) - mean(other prompts); "
        "one-sided p from arrangements of the subjects' domains across subjects (a subject's models move "
        "together; all distinct arrangements when few, exact), p = #(arrangements >= observed) / #arrangements, "
        f"else (1 + #) / (1 + {n_perm}); effect_size = the own-domain effect delta (added to a model's pairs of "
        "its subject's domain) that explains the statistic, T / (what delta = 1 adds to T); 95% interval by "
        "inverting the same test (unbounded when arrangements are too few to bound it)"
    )
    models = list(centred.index)
    subjects = model_subject.loc[models].to_numpy()
    n_subject_domains = int(model_domain.loc[models].nunique())
    if centred.shape[1] < 2 or n_subject_domains < 2:
        reason = (
            "needs models of >= 2 subject domains (with one, the prompt-centred in-domain difference is 0 by "
            f"construction); has {n_subject_domains}"
            if centred.shape[1] >= 2
            else f"needs >= 2 prompts seen by every model, has {centred.shape[1]}"
        )
        return _empty_per_model(), _not_computable(text, reason), []
    subject_names, subject_index = np.unique(subjects, return_inverse=True)
    subject_domain = model_domain.loc[models].groupby(subjects).first().loc[subject_names].to_numpy()
    names = np.unique(np.concatenate([domains, subject_domain]))
    prompt_codes = np.searchsorted(names, domains)
    subject_codes = np.searchsorted(names, subject_domain)
    differences = domain_differences(centred.to_numpy(dtype=np.float64), prompt_codes, names.size)  # [M, D]
    model_codes = subject_codes[subject_index]
    observed_per_model = differences[np.arange(len(models)), model_codes]
    arrangements, exact = subject_arrangements(subject_codes, n_perm, rng)
    arranged_codes = arrangements[:, subject_index]  # [B, M]
    null = differences[np.arange(len(models))[None, :], arranged_codes].sum(axis=1)
    observed = float(observed_per_model.sum())
    # what a unit own-domain effect adds to each arrangement's statistic (after prompt-centring)
    planted = (domains[None, :] == names[model_codes][:, None]).astype(np.float64)
    unit = domain_differences(planted - planted.mean(axis=0), prompt_codes, names.size)
    signal = float(unit[np.arange(len(models)), model_codes].sum())
    signal_null = unit[np.arange(len(models))[None, :], arranged_codes].sum(axis=1)
    tolerance = 1e-12 * max(1.0, abs(observed))
    if exact:
        p = float(np.mean(null >= observed - tolerance))
        smallest_p = 1.0 / len(arrangements)
    else:
        p = float(permutation_p_greater(observed, null))
        smallest_p = 1.0 / (1 + n_perm)
    rows, skipped = [], []
    for i, model_id in enumerate(models):
        labels = domains == subject_domain[subject_index[i]]
        n_in = int(labels.sum())
        if n_in == 0 or n_in == labels.size:
            reason = "no in-domain prompts" if n_in == 0 else "no out-of-domain prompts"
            skipped.append({"model_id": model_id, "subject_domain": str(model_domain.loc[model_id]), "reason": reason})
            continue
        values = raw.loc[model_id].to_numpy(dtype=np.float64)
        rows.append(
            dict(
                model_id=model_id,
                subject_domain=str(model_domain.loc[model_id]),
                n_in=n_in,
                n_out=int(labels.size - n_in),
                mean_in=float(values[labels].mean()),
                mean_out=float(values[~labels].mean()),
                difference=float(observed_per_model[i]),
            )
        )
    per_model = pd.DataFrame(rows, columns=_empty_per_model().columns)
    if per_model.empty or signal <= 0:
        return per_model, _not_computable(text, "no model has both in- and out-of-domain prompts"), skipped
    low, high = inverted_interval(observed, null, signal, signal_null, exact)
    combined = TestResult(
        test="proximity_interaction",
        statistic=observed,
        p=p,
        effect_size=observed / signal,
        effect_size_name="own_domain_effect",
        n=int(len(per_model)),
        method=text,
        extra={
            "computable": True,
            NULL_RATE_VALIDATED: True,
            "ci_low": low,
            "ci_high": high,
            # JSON holds an infinite end as null: these say it is unbounded, not missing
            "ci_low_unbounded": bool(np.isneginf(low)),
            "ci_high_unbounded": bool(np.isposinf(high)),
            "exact": exact,
            "n_arrangements": int(len(arrangements)),
            "smallest_possible_p": smallest_p,
            "n_subjects": int(subject_names.size),
            "n_models": int(len(per_model)),
            "n_models_skipped": len(skipped),
            "n_prompts": int(domains.size),
            "reading": READING,
        },
    )
    return per_model, combined, skipped


def _empty_per_model() -> pd.DataFrame:
    return pd.DataFrame(columns=["model_id", "subject_domain", "n_in", "n_out", "mean_in", "mean_out", "difference"])


def _not_computable(text: str, reason: str) -> TestResult:
    return TestResult(
        test="proximity_interaction",
        statistic=None,
        p=None,
        effect_size=None,
        effect_size_name="own_domain_effect",
        n=0,
        method=text,
        extra={"computable": False, "reason": reason},
    )


def semantic_proximity(
    disruption: pd.DataFrame,
    value: str,
    n_perm: int = 9999,
    seed: int = 0,
    similarity: pd.DataFrame | None = None,
    alternative: str = "greater",
) -> dict[str, Any]:
    """Family 3: do subjects' models disrupt their own domain more than other models disrupt it?

    Args:
        disruption: one row per (model_id, prompt_id) with columns model_id,
            prompt_id, subject_domain, domain and ``value``; subject_id when several models share
            a subject (else each model is its own subject).
        value: metric column.
        n_perm: permutation draws.
        seed: seeds numpy's Generator for all draws.
        similarity: optional (model_id, prompt_id, similarity) table.
        alternative: for the similarity test, ``"greater"`` (closer prompts
            more disrupted, matching the in-domain test) or ``"two-sided"``.

    Returns:
        JSON-able dict: ``per_model`` (records: raw mean_in / mean_out, prompt-centred
        difference and its p), ``combined`` (TestResult dict; extra ci_low / ci_high),
        ``skipped_models`` (records), ``similarity`` (TestResult dict or None),
        ``excluded_structural_zero_models``.
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
    disruption, excluded = without_structural_zeros(disruption)
    if disruption.empty:
        raise StatsInputError("disruption: every model's pairs are all structural zeros; nothing to test")
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
            "excluded_structural_zero_models": excluded,
        }
    )
