"""Spearman's rho of text similarity (subject vs prompt) with disruption, both centred on their prompt.

The optional part of family 3 (:mod:`cemaps.analysis.stats.semantic`): do prompts whose text is
closer to the personalized subject get disrupted more? A prompt similar to every subject and
fragile under every model (a domain main effect) would make raw values correlate with no
proximity at all, so both variables are centred on their prompt first, and the p-value comes
from permuting prompts of the similarity grid, one permutation for every model.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> pairs = pd.DataFrame([dict(model_id=m, prompt_id=p, similarity=rng.normal()) for m in range(3) for p in range(8)])
    >>> pairs["drop"] = pairs["similarity"] + 0.1 * rng.normal(size=len(pairs))
    >>> result = similarity_spearman(pairs, "drop", 199, np.random.default_rng(0), "greater")
    >>> result.statistic > 0.9, result.p < 0.05
    (True, True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats.common import (
    NULL_RATE_VALIDATED,
    TestResult,
    permutation_p_greater,
    permutation_p_two_sided,
)

PERMUTATION_BATCH = 500


def similarity_spearman(
    pairs: pd.DataFrame, value: str, n_perm: int, rng: np.random.Generator, alternative: str
) -> TestResult:
    """Spearman rho of prompt-centred similarity and prompt-centred disruption, with a prompt-permutation p.

    Only prompts seen by every model are used (a complete models x prompts grid). Both
    variables are centred on their prompt (minus the prompt's mean over models): a prompt that
    is similar to every subject and fragile under every model (a domain main effect) carries
    no weight. Each draw permutes the prompts of the similarity grid once, for all models alike.
    Ranks are taken once over all pairs, so each draw's rho is the Pearson correlation of
    permuted ranks.
    """
    similarity_grid = pairs.pivot(index="model_id", columns="prompt_id", values="similarity")
    complete_prompts = similarity_grid.columns[similarity_grid.notna().all(axis=0)]
    similarity_grid = similarity_grid[complete_prompts]
    disruption_grid = pairs.pivot(index="model_id", columns="prompt_id", values=value)[complete_prompts]
    n_pairs = int(similarity_grid.size)
    text = (
        f"Spearman rho (scipy.stats.spearmanr) over all (model, prompt) pairs of prompts seen by every model, both "
        f"variables prompt-centred (minus the prompt's mean over models); p from {n_perm} draws that permute "
        f"prompts of the similarity grid, the same permutation for every model ({alternative}); "
        "p = (1 + #null >= observed) / (1 + draws)"
    )
    similarity = similarity_grid.to_numpy(dtype=np.float64)
    disruption = disruption_grid.to_numpy(dtype=np.float64)
    similarity = similarity - similarity.mean(axis=0)
    disruption = disruption - disruption.mean(axis=0)
    if len(complete_prompts) < 3 or similarity.shape[0] < 2 or np.ptp(similarity) == 0 or np.ptp(disruption) == 0:
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
                "reason": "needs >= 2 models, >= 3 prompts seen by every model and non-constant centred values",
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
