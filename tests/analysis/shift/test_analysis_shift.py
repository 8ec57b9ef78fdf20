"""Attention shift: the JS divergence itself, its reductions, and streaming it over a store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from cemaps.analysis.shift.attention_shift import (
    attention_shift,
    attention_shift_table,
    js_divergence,
    paired_records,
    select_layers,
    spatial_distributions,
)
from cemaps.errors import ConfigError, LayerNotFoundError, StoreError
from cemaps.store import StoreWriter, open_store

AXES = ("token", "step", "half", "head", "y", "x")
LAYERS = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2": (4, 4),
    "mid_block.attentions.0.transformer_blocks.0.attn2": (2, 2),
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2": (4, 4),
}
PROMPTS = {
    "p000": ["<|startoftext|>", "a</w>", "mug</w>", "<|endoftext|>"],
    "p001": ["<|startoftext|>", "freedom</w>", "<|endoftext|>"],
}
SEEDS = (0, 1)
STEPS = 3


def random_maps(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.random(shape) + 0.05


# ---- the divergence ------------------------------------------------------------------------------
def test_identical_maps_have_zero_shift():
    maps = random_maps(np.random.default_rng(0), (4, 3, 1, 1, 5, 5))
    assert attention_shift(maps, maps, AXES, ["cond"]) == 0.0
    assert np.all(attention_shift(maps, maps, AXES, ["cond"], reduce=()) == 0.0)


def test_shift_is_symmetric_and_bounded():
    rng = np.random.default_rng(1)
    a, b = random_maps(rng, (4, 3, 1, 1, 5, 5)), random_maps(rng, (4, 3, 1, 1, 5, 5))
    ab = attention_shift(a, b, AXES, ["cond"], reduce=())
    ba = attention_shift(b, a, AXES, ["cond"], reduce=())
    np.testing.assert_allclose(ab, ba, rtol=1e-6, atol=1e-9)
    assert np.all(ab > 0) and np.all(ab <= 1)


def test_two_pixel_known_values():
    # base 2: disjoint support is 1; p=[1,0] vs q=[1/2,1/2] is H(3/4,1/4) - 1/2 = 0.311278 bits
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(0.3112781, abs=1e-6)
    # a 1x2 map as stored (token, step, half, head, y, x): unnormalised counts are normalised over space
    base = np.array([2.0, 0.0]).reshape(1, 1, 1, 1, 1, 2)
    personalized = np.array([0.3, 0.3]).reshape(1, 1, 1, 1, 1, 2)
    assert float(attention_shift(base, personalized, AXES, ["cond"])) == pytest.approx(0.3112781, abs=1e-6)


def test_matches_scipy_distance_squared():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(64), size=200)
    q = rng.dirichlet(np.ones(64), size=200)
    expected = jensenshannon(p, q, base=2, axis=-1) ** 2
    np.testing.assert_allclose(js_divergence(p, q), expected, rtol=1e-4, atol=1e-7)


def test_nearly_identical_maps_give_small_finite_shift_where_scipy_gives_nan():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(256), size=500)
    q = p * (1 + 1e-6 * rng.standard_normal(p.shape))
    q /= q.sum(axis=-1, keepdims=True)
    ours = js_divergence(p, q)
    assert np.all(np.isfinite(ours)) and np.all(ours >= 0) and ours.max() < 1e-6


def test_zero_probabilities_contribute_nothing():
    p = np.array([0.0, 0.5, 0.5, 0.0])
    q = np.array([0.0, 0.5, 0.5, 0.0])
    assert js_divergence(p, q) == 0.0
    assert js_divergence(p, np.array([0.0, 0.25, 0.75, 0.0])) == pytest.approx(
        jensenshannon(p, [0.0, 0.25, 0.75, 0.0], base=2) ** 2, abs=1e-6
    )


def test_heads_are_averaged_before_normalising():
    rng = np.random.default_rng(4)
    maps = random_maps(rng, (2, 2, 1, 3, 4, 4))
    averaged = maps.mean(axis=3, keepdims=True)
    np.testing.assert_allclose(
        spatial_distributions(maps, AXES, ["cond"]),
        spatial_distributions(averaged, AXES, ["cond"]),
        rtol=1e-5,
    )


def test_only_the_chosen_cfg_half_is_compared():
    rng = np.random.default_rng(5)
    base = random_maps(rng, (3, 2, 2, 1, 4, 4))
    personalized = base.copy()
    personalized[:, :, 0] = random_maps(rng, (3, 2, 4, 4))[:, :, None]  # change uncond only
    assert attention_shift(base, personalized, AXES, ["uncond", "cond"], half="cond") == 0.0
    assert attention_shift(base, personalized, AXES, ["uncond", "cond"], half="uncond") > 0.0


def test_axis_order_does_not_matter():
    rng = np.random.default_rng(6)
    a, b = random_maps(rng, (3, 2, 1, 1, 4, 4)), random_maps(rng, (3, 2, 1, 1, 4, 4))
    order = (4, 0, 5, 2, 1, 3)
    permuted_axes = tuple(AXES[i] for i in order)
    np.testing.assert_allclose(
        attention_shift(a.transpose(order), b.transpose(order), permuted_axes, ["cond"], reduce=()),
        attention_shift(a, b, AXES, ["cond"], reduce=()),
        rtol=1e-6,
    )


def test_reductions_have_the_documented_shapes():
    rng = np.random.default_rng(7)
    a, b = random_maps(rng, (5, 3, 1, 1, 4, 4)), random_maps(rng, (5, 3, 1, 1, 4, 4))
    full = attention_shift(a, b, AXES, ["cond"], reduce=())
    assert full.shape == (5, 3)
    np.testing.assert_allclose(attention_shift(a, b, AXES, ["cond"], reduce=("step",)), full.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(attention_shift(a, b, AXES, ["cond"], reduce=("token",)), full.mean(axis=0), rtol=1e-6)
    assert attention_shift(a, b, AXES, ["cond"]).shape == ()
    assert float(attention_shift(a, b, AXES, ["cond"])) == pytest.approx(full.mean(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axes": ("token", "step", "half", "head", "y", "z")}, "permutation"),
        ({"halves": ["uncond", "cond"]}, "halves"),
        ({"half": "uncond"}, "uncond"),
        ({"reduce": ("pixel",)}, "reduce"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    maps = random_maps(np.random.default_rng(8), (2, 2, 1, 1, 3, 3))
    arguments = {"axes": AXES, "halves": ["cond"]} | kwargs
    with pytest.raises(ConfigError, match=message):
        attention_shift(maps, maps, **arguments)


def test_shape_mismatch_raises_config_error():
    rng = np.random.default_rng(9)
    with pytest.raises(ConfigError, match="twins"):
        attention_shift(random_maps(rng, (2, 2, 1, 1, 3, 3)), random_maps(rng, (3, 2, 1, 1, 3, 3)), AXES, ["cond"])


# ---- streaming over a synthetic store ------------------------------------------------------------
def build_store(
    path,
    *,
    models=("lora-mug", "dreambooth-face"),
    planted_layer=None,
    with_base_for=None,
    halves=("cond",),
    base_method="base",
):
    """Base maps are random; personalized maps are copies, except in ``planted_layer`` (reshuffled)."""
    rng = np.random.default_rng(0)
    settings = {"capture": {"halves": list(halves), "steps": STEPS}}
    with StoreWriter(path, settings=settings, base={"model_id": "tiny"}, records_per_part=5) as writer:
        writer.add_models(
            [{"model_id": "base", "method": base_method, "subject_id": None}]
            + [{"model_id": m, "method": m.split("-")[0], "subject_id": m.split("-")[1]} for m in models]
        )
        writer.add_prompts(
            [
                {"prompt_id": pid, "text": " ".join(t[1:-1]), "tokens": t, "token_ids": list(range(len(t)))}
                for pid, t in PROMPTS.items()
            ]
        )
        base_maps = {}
        for prompt_id, tokens in PROMPTS.items():
            for seed in SEEDS:
                if with_base_for is not None and (prompt_id, seed) not in with_base_for:
                    continue
                arrays = {
                    f"cross_attention/{layer}": random_maps(rng, (len(tokens), STEPS, len(halves), 1, *hw)).astype(
                        np.float16
                    )
                    for layer, hw in LAYERS.items()
                }
                base_maps[prompt_id, seed] = arrays
                writer.write_record("base", prompt_id, seed, arrays, axes={name: AXES for name in arrays})
        for model in models:
            for prompt_id, tokens in PROMPTS.items():
                for seed in SEEDS:
                    arrays = {
                        name: (
                            value
                            if planted_layer is None or not name.endswith(planted_layer)
                            else random_maps(rng, value.shape).astype(np.float16)
                        )
                        for name, value in base_maps.get((prompt_id, seed), {}).items()
                    }
                    if not arrays:
                        arrays = {
                            f"cross_attention/{layer}": random_maps(
                                rng, (len(tokens), STEPS, len(halves), 1, *hw)
                            ).astype(np.float16)
                            for layer, hw in LAYERS.items()
                        }
                    writer.write_record(model, prompt_id, seed, arrays, axes={name: AXES for name in arrays})
    return open_store(path)


def test_identical_personalized_model_has_zero_shift_everywhere(tmp_path):
    with build_store(tmp_path / "same.h5") as store:
        table = attention_shift_table(store, chunk_size=3)
    assert len(table) == 2 * len(PROMPTS) * len(SEEDS) * len(LAYERS)
    assert list(table.columns) == ["model_id", "prompt_id", "seed", "layer", "attention_shift"]
    assert set(table["layer"]) == set(LAYERS)
    assert (table["attention_shift"] == 0.0).all()


def test_planted_shift_in_one_layer_shows_only_there(tmp_path):
    planted = "mid_block.attentions.0.transformer_blocks.0.attn2"
    with build_store(tmp_path / "planted.h5", planted_layer=planted) as store:
        table = attention_shift_table(store, chunk_size=4)
    by_layer = table.groupby("layer")["attention_shift"]
    assert (by_layer.min()[planted] > 0.0) and (by_layer.max().drop(planted) == 0.0).all()


def test_store_table_matches_the_pure_function(tmp_path):
    planted = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    with build_store(tmp_path / "check.h5", planted_layer=planted) as store:
        table = attention_shift_table(store, layers=[planted], chunk_size=2)
        pairs = paired_records(store)
        row = pairs.iloc[5]
        name = f"cross_attention/{planted}"
        expected = attention_shift(
            store.read_one(name, int(row.base_record)),
            store.read_one(name, int(row.record)),
            store.axes(name),
            ["cond"],
        )
    found = table[(table.model_id == row.model_id) & (table.prompt_id == row.prompt_id) & (table.seed == row.seed)]
    assert found["attention_shift"].item() == pytest.approx(float(expected), rel=1e-6)


def test_per_token_and_per_step_tables(tmp_path):
    planted = "up_blocks.2.attentions.1.transformer_blocks.0.attn2"
    with build_store(tmp_path / "per.h5", planted_layer=planted) as store:
        per_token = attention_shift_table(store, layers=planted, per="token")
        per_step = attention_shift_table(store, layers=planted, per="step")
        per_record = attention_shift_table(store, layers=planted)
    n_tokens = sum(len(t) for t in PROMPTS.values())
    assert len(per_token) == 2 * len(SEEDS) * n_tokens
    assert list(per_token.columns) == [
        "model_id",
        "prompt_id",
        "seed",
        "layer",
        "token_index",
        "token",
        "attention_shift",
    ]
    mug = per_token[(per_token.prompt_id == "p000") & (per_token.model_id == "lora-mug") & (per_token.seed == 0)]
    assert mug["token"].tolist() == PROMPTS["p000"]
    assert len(per_step) == 2 * len(PROMPTS) * len(SEEDS) * STEPS
    assert sorted(per_step["step_index"].unique()) == list(range(STEPS))
    # the record value is the mean over its token x step grid, which both finer tables also average to
    keys = ["model_id", "prompt_id", "seed"]
    from_steps = per_step.groupby(keys)["attention_shift"].mean()
    np.testing.assert_allclose(
        per_record.set_index(keys)["attention_shift"].loc[from_steps.index], from_steps, rtol=1e-5
    )


def test_layer_selection(tmp_path):
    with build_store(tmp_path / "layers.h5") as store:
        assert select_layers(store, "up_blocks.*") == [
            "cross_attention/up_blocks.2.attentions.1.transformer_blocks.0.attn2"
        ]
        assert len(select_layers(store, lambda path: "blocks" in path)) == 3
        with pytest.raises(LayerNotFoundError, match="down_blocks.9"):
            attention_shift_table(store, layers=["down_blocks.9.attentions.0.transformer_blocks.0.attn2"])
        with pytest.raises(LayerNotFoundError, match="glob"):
            select_layers(store, "*attn1")


def test_bad_table_arguments(tmp_path):
    with build_store(tmp_path / "args.h5") as store:
        with pytest.raises(ConfigError, match="per="):
            attention_shift_table(store, per="pixel")
        with pytest.raises(ConfigError, match="chunk_size"):
            attention_shift_table(store, chunk_size=0)
        with pytest.raises(ConfigError, match="'uncond' is not among"):
            attention_shift_table(store, half="uncond")


def test_missing_base_twin_is_a_store_error(tmp_path):
    with build_store(tmp_path / "orphans.h5", with_base_for={("p000", 0)}) as store:
        with pytest.raises(StoreError, match="no base twin"):
            attention_shift_table(store)


def test_store_without_base_model_is_a_store_error(tmp_path):
    with build_store(tmp_path / "nobase.h5", base_method="lora") as store:
        with pytest.raises(StoreError, match="method 'base'"):
            attention_shift_table(store)


def test_empty_selection_returns_typed_empty_frame(tmp_path):
    with build_store(tmp_path / "empty.h5", models=()) as store:
        table = attention_shift_table(store)
    assert table.empty and "attention_shift" in table.columns
    assert isinstance(table, pd.DataFrame)


def test_records_whose_tokens_differ_from_their_twin_are_set_aside_by_name(tmp_path):
    """Issue 22: one prompt that holds a Textual Inversion token (other tokens under the TI model)
    no longer stops the whole analysis: its records are named and the rest is analysed."""
    layer = "cross_attention/mid_block.attentions.0.transformer_blocks.0.attn2"
    rng = np.random.default_rng(0)
    with StoreWriter(
        tmp_path / "tokens.h5", settings={"capture": {"halves": ["cond"]}}, base={"model_id": "t"}
    ) as writer:
        writer.add_models(
            [{"model_id": "base", "method": "base"}, {"model_id": "ti-mug", "method": "textual_inversion"}]
        )
        for model_id, prompt_id, tokens in (
            ("base", "p000", 4),
            ("ti-mug", "p000", 5),
            ("base", "p001", 3),
            ("ti-mug", "p001", 3),
        ):
            writer.write_record(
                model_id, prompt_id, 0, {layer: random_maps(rng, (tokens, 2, 1, 1, 2, 2))}, axes={layer: AXES}
            )
    with open_store(tmp_path / "tokens.h5") as store, pytest.warns(UserWarning) as caught:
        table = attention_shift_table(store)
    messages = [str(w.message) for w in caught]
    assert (
        len(messages) == 1
        and "1 personalized record(s) set aside from the attention shift: (ti-mug, p000, seed 0)" in messages[0]
    )
    assert table[["model_id", "prompt_id"]].values.tolist() == [["ti-mug", "p001"]]
    assert np.isfinite(table["attention_shift"]).all()


def test_blocked_computation_matches_one_block(tmp_path, monkeypatch):
    import cemaps.analysis.shift.attention_shift as attention_shift_module

    with build_store(
        tmp_path / "blocks.h5", planted_layer="up_blocks.2.attentions.1.transformer_blocks.0.attn2"
    ) as store:
        whole = attention_shift_table(store, per="token")
        monkeypatch.setattr(attention_shift_module, "_BLOCK_VALUES", 40)  # a few token rows per block
        blocked = attention_shift_table(store, per="token")
    pd.testing.assert_frame_equal(blocked, whole)
