"""link_layers: layer ordering, per-layer Spearman + BH, grouped ridge CV, ablation, weight deltas, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.model_selection import GroupKFold

from cemaps.analysis.stats.common import StatsInputError
from cemaps.analysis.stats.layers import asymptotic_layer_table, layer_block, link_layers, order_layers

LAYERS = [
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.10.attentions.0.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
]


def tables(seed: int = 0, n_models: int = 4, n_prompts: int = 20, linked: str | None = LAYERS[3]):
    rng = np.random.default_rng(seed)
    shift = pd.DataFrame(
        [
            dict(model_id=f"m{m}", prompt_id=f"p{p}", layer=layer, attention_shift=rng.normal())
            for m in range(n_models)
            for p in range(n_prompts)
            for layer in LAYERS
        ]
    )
    pairs = shift[shift["layer"] == (linked or LAYERS[0])][["model_id", "prompt_id", "attention_shift"]]
    noise = rng.normal(size=len(pairs))
    disruption = pairs.assign(alignment_drop=(pairs["attention_shift"] if linked else 0.0) + noise)
    return shift, disruption.drop(columns="attention_shift").reset_index(drop=True)


def test_blocks_and_default_order_are_down_mid_up_with_numeric_sorting():
    assert [layer_block(layer) for layer in LAYERS] == ["up", "down", "mid", "down"]
    assert layer_block("text_model.encoder.layers.0") == "other"
    assert order_layers(LAYERS, None) == [LAYERS[3], LAYERS[1], LAYERS[2], LAYERS[0]]
    assert order_layers(LAYERS, list(reversed(LAYERS))) == list(reversed(LAYERS))


def test_layer_correlations_match_scipy_and_bh_finds_the_linked_layer():
    shift, disruption = tables()
    out = link_layers(shift, disruption, "alignment_drop", ridge=False)
    rows = {r["layer"]: r for r in out["layers"]}
    asymptotic = asymptotic_layer_table(shift, disruption, "alignment_drop").set_index("layer")
    for layer in LAYERS:
        x = shift[shift["layer"] == layer].set_index(["model_id", "prompt_id"])["attention_shift"]
        y = disruption.set_index(["model_id", "prompt_id"])["alignment_drop"].loc[x.index]
        expected = stats.spearmanr(x, y)
        assert rows[layer]["rho"] == pytest.approx(expected.statistic)
        assert asymptotic.loc[layer, "p_asymptotic"] == pytest.approx(expected.pvalue)
        assert "p_asymptotic" not in rows[layer]  # not validated: CSV only, never in the summary
    assert not asymptotic["null_rate_validated"].any()
    assert asymptotic["q_bh_asymptotic"].idxmin() == LAYERS[3]
    assert [r["layer"] for r in out["layers"]] == order_layers(LAYERS, None)
    assert out["ridge"] is None and out["pairs"]["pairs_used"] == 80
    json.dumps(out, allow_nan=False)


def test_prompt_permutation_p_tracks_scipy_on_independent_pairs_and_flags_the_link():
    shift, disruption = tables(n_prompts=30)
    rows = link_layers(shift, disruption, "alignment_drop", ridge=False, n_perm=999, seed=2)["layers"]
    asymptotic = asymptotic_layer_table(shift, disruption, "alignment_drop").set_index("layer")["p_asymptotic"]
    for row in rows:
        assert 0 < row["p_perm"] <= 1 and row["q_bh_perm"] >= row["p_perm"]
        if row["layer"] != LAYERS[3]:
            assert abs(row["p_perm"] - asymptotic[row["layer"]]) < 0.1  # same null when pairs are independent
    linked = next(r for r in rows if r["layer"] == LAYERS[3])
    assert linked["p_perm"] == pytest.approx(1 / 1000) and linked["q_bh_perm"] < 0.01


def test_prompt_permutation_is_skipped_with_zero_draws_or_too_few_shared_prompts():
    shift, disruption = tables()
    assert all(
        r["p_perm"] is None for r in link_layers(shift, disruption, "alignment_drop", ridge=False, n_perm=0)["layers"]
    )
    shift, disruption = tables(n_prompts=2, n_models=5)
    assert all(r["p_perm"] is None for r in link_layers(shift, disruption, "alignment_drop", ridge=False)["layers"])


def test_ridge_cv_groups_by_prompt_and_ablation_blames_the_right_block():
    shift, disruption = tables(n_prompts=30)
    out = link_layers(shift, disruption, "alignment_drop", cv_folds=5, seed=0)
    ridge = out["ridge"]["full"]
    assert ridge["statistic"] > 0.2 and len(ridge["extra"]["fold_r2"]) == 5
    ablation = {r["block"]: r for r in out["ridge"]["ablation"]}
    assert ablation["down"]["n_layers_dropped"] == 2 and ablation["down"]["delta_r2"] < -0.2
    assert abs(ablation["up"]["delta_r2"]) < 0.1
    json.dumps(out, allow_nan=False)


def test_group_k_fold_never_splits_a_prompt():
    # the property link_layers relies on, with the exact splitter settings it uses
    groups = np.repeat([f"p{p}" for p in range(12)], 3)
    for train, test in GroupKFold(n_splits=5, shuffle=True, random_state=0).split(groups, groups=groups):
        assert not set(groups[train]) & set(groups[test])


def test_too_few_prompts_for_cv_is_reported_not_raised():
    shift, disruption = tables(n_prompts=1, n_models=5)
    out = link_layers(shift, disruption, "alignment_drop")
    assert out["ridge"]["full"]["extra"]["computable"] is False


def test_weight_delta_spearman_across_models_and_not_computable_cases():
    shift, disruption = tables(n_models=5)
    mean_shift = shift.groupby(["model_id", "layer"])["attention_shift"].mean().reset_index()
    weight_delta = mean_shift.assign(delta_norm=mean_shift["attention_shift"] * 3 + 1).drop(columns="attention_shift")
    weight_delta = weight_delta[~((weight_delta["layer"] == LAYERS[0]) & (weight_delta["model_id"] != "m0"))]
    out = link_layers(shift, disruption, "alignment_drop", weight_delta=weight_delta, ridge=False)
    rows = {r["layer"]: r for r in out["weight_delta"]}
    assert rows[LAYERS[1]]["rho"] == pytest.approx(1.0) and rows[LAYERS[1]]["n_models"] == 5
    assert rows[LAYERS[0]]["computable"] is False and "needs >= 3 models" in rows[LAYERS[0]]["reason"]
    assert rows[LAYERS[0]]["rho"] is None


def test_pairs_missing_a_layer_or_disruption_are_dropped_and_counted():
    shift, disruption = tables()
    shift = shift.drop(index=0)
    disruption = disruption.drop(index=len(disruption) - 1)
    counts = link_layers(shift, disruption, "alignment_drop", ridge=False)["pairs"]
    assert counts == {
        "pairs_structural_zero_dropped": 0,
        "pairs_in_shift": 80,
        "pairs_missing_a_layer": 1,
        "pairs_without_disruption": 1,
        "pairs_used": 78,
    }


def test_structural_zero_pairs_leave_every_layer_correlation():
    # zeros in both shift and disruption make every layer look linked; without them the rho is the measured one
    shift, disruption = tables()
    zero_model = disruption["model_id"].iloc[0]
    disruption = disruption.assign(structural_zero=disruption["model_id"] == zero_model)
    disruption.loc[disruption["structural_zero"], "alignment_drop"] = 0.0
    shift.loc[shift["model_id"] == zero_model, "attention_shift"] = 0.0
    out = link_layers(shift, disruption, "alignment_drop", ridge=False, n_perm=0)
    kept = disruption[~disruption["structural_zero"]]
    measured = link_layers(shift, kept.drop(columns="structural_zero"), "alignment_drop", ridge=False, n_perm=0)
    assert [r["rho"] for r in out["layers"]] == [r["rho"] for r in measured["layers"]]
    assert out["pairs"]["pairs_structural_zero_dropped"] == int(disruption["structural_zero"].sum())


@pytest.mark.parametrize(
    "mutate_shift, mutate_disruption, kwargs, message",
    [
        (lambda s: s.drop(columns="layer"), lambda d: d, {}, r"shift: missing column\(s\) \['layer'\]"),
        (
            lambda s: pd.concat([s, s.iloc[:1]]),
            lambda d: d,
            {},
            r"shift: \(model_id, prompt_id, layer\) must be unique",
        ),
        (lambda s: s, lambda d: pd.concat([d, d.iloc[:1]]), {}, r"disruption: \(model_id, prompt_id\) must be unique"),
        (lambda s: s, lambda d: d.assign(model_id="other-" + d["model_id"]), {}, "only 0 complete"),
        (lambda s: s, lambda d: d, {"layer_order": LAYERS[:2]}, "layer_order: lacks layer"),
        (lambda s: s, lambda d: d, {"cv_folds": 1}, "cv_folds=1"),
        (lambda s: s, lambda d: d, {"n_perm": -5}, "n_perm=-5"),
        (lambda s: s.assign(attention_shift=np.inf), lambda d: d, {}, "NaN or infinite"),
        (
            lambda s: s,
            lambda d: d,
            {"weight_delta": pd.DataFrame({"model_id": ["m0"], "layer": [LAYERS[0]]})},
            r"weight_delta: missing column",
        ),
    ],
)
def test_bad_input_raises_one_line_error(mutate_shift, mutate_disruption, kwargs, message):
    shift, disruption = tables()
    with pytest.raises(StatsInputError, match=message) as info:
        link_layers(mutate_shift(shift), mutate_disruption(disruption), "alignment_drop", ridge=False, **kwargs)
    assert "\n" not in str(info.value)
