"""Concept Entanglement Maps: layout, labels, averaging over seeds, CSV + HDF5 round trip."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from cemaps.analysis.entanglement import entanglement_map, read_entanglement_maps, write_entanglement_maps
from cemaps.errors import ConfigError, StoreError

MODELS = {
    "ti-mug": ("ti", "mug"),
    "lora-face1": ("lora", "face1"),
    "lora-mug": ("lora", "mug"),
    "dreambooth-style1": ("dreambooth", "style1"),
}
PROMPTS = {
    "p003": ("concrete", "object"),
    "p000": ("abstract", "concept"),
    "p002": ("concrete", "animal"),
    "p001": ("compositional", "object"),
}


def disruption_rows(seeds=(0,)) -> pd.DataFrame:
    rows = []
    for m, (model_id, (method, subject)) in enumerate(MODELS.items()):
        for p, (prompt_id, (abstractness, domain)) in enumerate(PROMPTS.items()):
            for seed in seeds:
                rows.append(
                    {
                        "model_id": model_id,
                        "method": method,
                        "subject_id": subject,
                        "prompt_id": prompt_id,
                        "abstractness": abstractness,
                        "domain": domain,
                        "seed": seed,
                        "alignment_drop": 10.0 * m + p + seed,
                        "image_drift": 0.01 * (m + p),
                    }
                )
    return pd.DataFrame(rows)


def test_map_shape_labels_and_order():
    table = disruption_rows()
    cem = entanglement_map(table, "alignment_drop")
    assert cem.shape == (len(MODELS), len(PROMPTS))
    assert list(cem.index.names) == ["method", "subject_id", "model_id"]
    assert list(cem.columns.names) == ["abstractness", "domain", "prompt_id"]
    assert list(cem.index) == [
        ("dreambooth", "style1", "dreambooth-style1"),
        ("lora", "face1", "lora-face1"),
        ("lora", "mug", "lora-mug"),
        ("ti", "mug", "ti-mug"),
    ]
    assert list(cem.columns) == [
        ("abstract", "concept", "p000"),
        ("compositional", "object", "p001"),
        ("concrete", "animal", "p002"),
        ("concrete", "object", "p003"),
    ]
    assert cem.dtypes.eq(np.float64).all()
    for row in table.itertuples():
        assert (
            cem.loc[(row.method, row.subject_id, row.model_id), (row.abstractness, row.domain, row.prompt_id)]
            == row.alignment_drop
        )


def test_seeds_are_averaged_and_missing_pairs_are_nan():
    table = disruption_rows(seeds=(0, 1, 2))
    table = table[~((table.model_id == "ti-mug") & (table.prompt_id == "p002"))]
    cem = entanglement_map(table, "alignment_drop")
    expected = table[(table.model_id == "lora-mug") & (table.prompt_id == "p001")]["alignment_drop"].mean()
    assert cem.loc[("lora", "mug", "lora-mug"), ("compositional", "object", "p001")] == pytest.approx(expected)
    assert np.isnan(cem.loc[("ti", "mug", "ti-mug"), ("concrete", "animal", "p002")])
    assert cem.shape == (len(MODELS), len(PROMPTS))


def test_missing_labels_become_na_instead_of_dropping_rows():
    table = disruption_rows()
    table.loc[table.prompt_id == "p000", "domain"] = None
    cem = entanglement_map(table, "alignment_drop")
    assert ("abstract", "n/a", "p000") in cem.columns and cem.shape == (len(MODELS), len(PROMPTS))


@pytest.mark.parametrize(
    ("change", "metric", "message"),
    [
        (lambda t: t, "clip_drop", "not a column"),
        (lambda t: t.drop(columns="abstractness"), "alignment_drop", "abstractness"),
        (lambda t: t.assign(alignment_drop="big"), "alignment_drop", "expected numbers"),
        (lambda t: t.assign(method=np.where(t.index == 0, "dreambooth", t.method)), "alignment_drop", "more than one"),
    ],
)
def test_bad_tables_raise_config_error(change, metric, message):
    with pytest.raises(ConfigError, match=message):
        entanglement_map(change(disruption_rows()), metric)


def test_write_and_read_roundtrip(tmp_path):
    table = disruption_rows(seeds=(0, 1))
    table.loc[table.model_id == "ti-mug", "subject_id"] = None
    maps = {
        "alignment_drop": entanglement_map(table, "alignment_drop"),
        "image_drift": entanglement_map(table, "image_drift"),
    }
    maps["image_drift"].iloc[0, 0] = np.nan
    paths = write_entanglement_maps(maps, tmp_path / "out")
    assert paths["alignment_drop"].name == "cem_alignment_drop.csv"
    assert paths["image_drift"].name == "cem_image_drift.csv"
    assert paths["h5"].name == "entanglement_maps.h5"
    back = read_entanglement_maps(paths["h5"])
    assert set(back) == set(maps)
    for metric, cem in maps.items():
        pd.testing.assert_frame_equal(back[metric], cem)
    from_csv = pd.read_csv(paths["alignment_drop"], header=[0, 1, 2], index_col=[0, 1, 2])
    np.testing.assert_allclose(from_csv.to_numpy(), maps["alignment_drop"].to_numpy())
    assert list(from_csv.index.get_level_values("model_id")) == list(maps["alignment_drop"].index.get_level_values(2))
    with h5py.File(paths["h5"], "r") as file:
        assert file["alignment_drop/values"].shape == (len(MODELS), len(PROMPTS))
        assert list(file["alignment_drop/rows"].attrs["levels"]) == ["method", "subject_id", "model_id"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cem_alignment_drop.csv",
        "cem_image_drift.csv",
        "entanglement_maps.h5",
    ]


@pytest.mark.parametrize(
    ("maps", "message"),
    [({}, "empty"), ({"a/b": None}, "without '/'"), ({"drop": pd.DataFrame({"x": [1.0]})}, "3-level")],
)
def test_write_bad_input(tmp_path, maps, message):
    with pytest.raises(ConfigError, match=message):
        write_entanglement_maps(maps, tmp_path)


def test_read_bad_files(tmp_path):
    with pytest.raises(StoreError, match="no such"):
        read_entanglement_maps(tmp_path / "absent.h5")
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        read_entanglement_maps(not_h5)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as file:
        file.attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="format"):
        read_entanglement_maps(foreign)
