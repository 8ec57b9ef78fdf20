"""cluster: linkage, leaf orders, agreement with labels, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist

from cemaps.analysis.stats.clustering import cluster
from cemaps.analysis.stats.common import StatsInputError


def planted_cem(seed: int = 0, noise: float = 0.1, planted: str = "prompts"):
    """6 models (2 methods) x 12 prompts (2 abstractness classes, 3 domains unrelated to the data).

    ``planted="prompts"``: abstract prompts share one random profile over models and
    concrete prompts its negative. ``planted="models"``: the same for the two methods
    over prompts. (A rank-2 CEM cannot make both axes cluster cleanly under correlation
    distance, so each structure gets its own map.)
    """
    rng = np.random.default_rng(seed)
    n_models, n_prompts = 6, 12
    method = np.array(["lora", "dreambooth"] * 3)
    abstractness = np.array(["concrete"] * 6 + ["abstract"] * 6)
    if planted == "prompts":
        signal = np.where(abstractness == "abstract", 1.0, -1.0)[None, :] * rng.normal(size=n_models)[:, None]
    else:
        signal = np.where(method == "lora", 1.0, -1.0)[:, None] * rng.normal(size=n_prompts)[None, :]
    values = 3 * signal + noise * rng.normal(size=(n_models, n_prompts))
    cem = pd.DataFrame(values, index=[f"m{i}" for i in range(n_models)], columns=[f"p{j}" for j in range(n_prompts)])
    prompts = pd.DataFrame(
        {
            "prompt_id": cem.columns,
            "abstractness": abstractness,
            "domain": rng.permutation(["faces", "objects", "styles"] * 4),
        }
    )
    models = pd.DataFrame({"model_id": cem.index, "method": method})
    return cem, prompts, models


def test_linkage_and_leaf_order_match_scipy():
    cem, prompts, models = planted_cem()
    out = cluster(cem, prompts, models, n_perm=99)
    expected = hierarchy.linkage(pdist(cem.to_numpy().T, "correlation"), "average", optimal_ordering=True)
    np.testing.assert_allclose(np.asarray(out["prompts"]["linkage"]), expected)
    assert out["prompts"]["leaf_order"] == [cem.columns[i] for i in hierarchy.leaves_list(expected)]
    assert sorted(out["models"]["leaf_order"]) == sorted(cem.index)
    assert np.asarray(out["models"]["linkage"]).shape == (5, 4)
    json.dumps(out, allow_nan=False)


def test_planted_structure_is_recovered_with_permutation_p():
    cem, prompts, models = planted_cem(planted="prompts")
    out = cluster(cem, prompts, models, n_perm=199, seed=1)
    prompt_rows = {r["label"]: r for r in out["prompts"]["agreement"]}
    assert prompt_rows["abstractness"]["ari"] == pytest.approx(1.0) and prompt_rows["abstractness"]["nmi"] == 1.0
    assert prompt_rows["abstractness"]["p_ari"] < 0.02
    assert prompt_rows["domain"]["k"] == 3 and prompt_rows["domain"]["ari"] < 0.5
    cem, prompts, models = planted_cem(planted="models")
    method_row = cluster(cem, prompts, models, n_perm=199, seed=1)["models"]["agreement"][0]
    assert method_row["label"] == "method" and method_row["ari"] == pytest.approx(1.0)
    assert method_row["p_ari"] < 0.2  # 6 models: only 10 distinct 3/3 splits, so p cannot go far below 0.1


def test_labels_may_come_as_index_and_euclidean_ward_works():
    cem, prompts, models = planted_cem()
    out = cluster(
        cem, prompts.set_index("prompt_id"), models.set_index("model_id"), method="ward", metric="euclidean", n_perm=49
    )
    assert out["method"] == "ward" and out["metric"] == "euclidean"


def test_single_class_label_is_reported_not_computable():
    cem, prompts, models = planted_cem()
    out = cluster(cem, prompts, models.assign(method="lora"), n_perm=49)
    row = out["models"]["agreement"][0]
    assert row["computable"] is False and row["ari"] is None


@pytest.mark.parametrize(
    "mutate, kwargs, message",
    [
        (lambda c, p, m: (c.assign(p0=np.nan), p, m), {}, "cem: expected finite numeric"),
        (lambda c, p, m: (c.iloc[:1], p, m), {}, r"expected >= 2 models and >= 2 prompts"),
        (lambda c, p, m: (c, p.iloc[1:], m), {}, r"prompt_labels: no labels for prompt_id \['p0'\]"),
        (lambda c, p, m: (c, p.drop(columns=["abstractness", "domain"]), m), {}, "needs at least one of the columns"),
        (lambda c, p, m: (c, pd.concat([p, p.iloc[:1]]), m), {}, "prompt_labels: prompt_id must be unique"),
        (lambda c, p, m: (c, p, m), {"method": "ward"}, "method='ward': needs metric='euclidean'"),
        (lambda c, p, m: (c, p, m), {"metric": "cosine"}, "metric='cosine'"),
        (lambda c, p, m: (c.to_numpy(), p, m), {}, "cem: expected a pandas DataFrame"),
    ],
)
def test_bad_input_raises_one_line_error(mutate, kwargs, message):
    cem, prompts, models = mutate(*planted_cem())
    with pytest.raises(StatsInputError, match=message) as info:
        cluster(cem, prompts, models, n_perm=9, **kwargs)
    assert "\n" not in str(info.value)


def test_constant_profiles_are_set_apart_and_the_rest_is_clustered():
    rng = np.random.default_rng(0)
    cem = pd.DataFrame(
        rng.normal(size=(5, 8)) + [0, 0, 0, 0, 4, 4, 4, 4],
        index=[f"m{i}" for i in range(5)],
        columns=[f"p{j}" for j in range(8)],
    )
    cem.loc["m4"] = 0.0  # all structural zeros: no correlation distance
    prompts = pd.DataFrame({"prompt_id": cem.columns, "abstractness": ["concrete"] * 4 + ["abstract"] * 4})
    models = pd.DataFrame({"model_id": cem.index, "method": ["lora", "lora", "db", "db", "ti"]})
    out = cluster(cem, prompts, models, metric="correlation", n_perm=99)
    assert [r["id"] for r in out["models"]["set_apart"]] == ["m4"] and out["models"]["ids"] == ["m0", "m1", "m2", "m3"]
    assert len(out["models"]["linkage"]) == 3 and out["models"]["agreement"][0]["computable"]
    assert out["prompts"]["set_apart"] == [] and len(out["prompts"]["ids"]) == 8
