"""Write -> read round trips: ragged arrays, dtypes, axes, images, tables, reopen, rotation, VDS."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pytest

from cemaps.errors import StoreError
from cemaps.store import SCHEMA_VERSION, StoreWriter, open_store

SETTINGS = {"generation": {"steps": 4, "guidance": 7.5}, "capture": {"spatial": 16}}
BASE = {"model_id": "tiny-sd", "weight_hash": "abc123"}
ATTN = "cross_attention/down_blocks.0.attentions.0.transformer_blocks.0.attn2"
ATTN_AXES = ("token", "step", "half", "head", "y", "x")


def make_record(rng: np.random.Generator, tokens: int) -> tuple[dict[str, np.ndarray], dict, np.ndarray]:
    arrays = {
        ATTN: rng.random((tokens, 3, 2, 1, 4, 4)).astype(np.float16),
        "delta/norm": rng.standard_normal((tokens + 1, 5)).astype(np.float32),
    }
    axes = {ATTN: ATTN_AXES, "delta/norm": ("row", "col")}
    image = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    return arrays, axes, image


def write_records(path, keys, rng, *, records_per_part=16, writer_tag="w0"):
    written = {}
    with StoreWriter(
        path, settings=SETTINGS, base=BASE, writer_tag=writer_tag, records_per_part=records_per_part
    ) as writer:
        for index, key in enumerate(keys):
            arrays, axes, image = make_record(rng, tokens=2 + index % 3)
            writer.write_record(*key, arrays, axes, image=image)
            written[key] = (arrays, image)
    return written


def test_roundtrip_arrays_axes_images(tmp_path):
    path = tmp_path / "study.h5"
    keys = [("base", f"p{i}", s) for i in range(3) for s in (0, 1)]
    written = write_records(path, keys, np.random.default_rng(0))
    with open_store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert store.settings == SETTINGS and store.base == BASE
        assert "packages" in store.provenance
        assert store.array_names == sorted([ATTN, "delta/norm"])
        assert store.axes(ATTN) == ATTN_AXES
        assert store.trailing_shape(ATTN) == (3, 2, 1, 4, 4)
        assert store.dtype(ATTN) == np.float16 and store.dtype("delta/norm") == np.float32
        records = store.records
        assert list(records.columns) == ["record", "model_id", "prompt_id", "seed"]
        assert records["record"].tolist() == list(range(len(keys)))
        for row in records.itertuples():
            arrays, image = written[(row.model_id, row.prompt_id, row.seed)]
            for name, expected in arrays.items():
                got = store.read_one(name, row.record)
                assert got.dtype == expected.dtype
                np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(store.images([row.record])[0], image)
        subset = records.iloc[[4, 1]]
        got = store.read(ATTN, subset)
        np.testing.assert_array_equal(got[0], written[keys[4]][0][ATTN])
        np.testing.assert_array_equal(got[1], written[keys[1]][0][ATTN])
        assert store.images(subset).shape == (2, 8, 6, 3)
        chunks = list(store.iter_records(chunk_size=4))
        assert [len(c) for c in chunks] == [4, 2]
        assert store.size_on_disk() > os.path.getsize(path)


def test_models_prompts_tables_roundtrip(tmp_path):
    path = tmp_path / "study.h5"
    models = [
        {"model_id": "base", "method": "none"},
        {"model_id": "dog_lora", "method": "lora", "subject": "dog", "sha256": "ff00"},
    ]
    prompts = [
        {
            "prompt_id": "p0",
            "text": "a red cube",
            "tokens": ["<|startoftext|>", "a", "red", "cube"],
            "token_ids": [49406, 320, 736, 11353],
            "abstractness": 0.1,
            "domain": "object",
        },
        {
            "prompt_id": "p1",
            "text": "freedom",
            "tokens": ["<|startoftext|>", "freedom"],
            "token_ids": [49406, 4511],
            "abstractness": 0.9,
            "domain": "abstract",
        },
    ]
    deltas = pd.DataFrame(
        {"model_id": ["dog_lora", "dog_lora"], "layer": ["attn2.to_k", "attn2.to_v"], "relative_norm": [0.01, 0.02]}
    )
    with StoreWriter(path, settings=SETTINGS, base=BASE) as writer:
        writer.add_models(models)
        writer.add_models(models)  # idempotent
        writer.add_prompts(prompts)
        writer.write_table("weight_deltas", deltas)
        writer.write_table("weight_deltas", deltas)  # a resumed run re-appending is a no-op
        writer.write_table("weight_deltas", deltas.assign(model_id="cat_lora"))
    with open_store(path) as store:
        assert store.models.index.name == "model_id"
        assert store.models.loc["dog_lora", "subject"] == "dog"
        assert store.prompts.loc["p1", "tokens"] == ["<|startoftext|>", "freedom"]
        assert store.prompts.loc["p0", "token_ids"] == [49406, 320, 736, 11353]
        assert store.prompts.loc["p1", "abstractness"] == pytest.approx(0.9)
        table = store.table("weight_deltas")
        assert len(table) == 4
        pd.testing.assert_frame_equal(table.iloc[:2].reset_index(drop=True), deltas)
        assert table["relative_norm"].dtype == np.float64
        with pytest.raises(StoreError, match=r"no table 'clip_scores'; available: weight_deltas$"):
            store.table("clip_scores")
    with h5py.File(path, "r") as manifest:  # plain-h5py view of the tables
        assert list(manifest["models/model_id"].asstr()[()]) == ["base", "dog_lora"]
        np.testing.assert_allclose(manifest["tables/weight_deltas/relative_norm"][()], [0.01, 0.02, 0.01, 0.02])


def test_reopen_appends_and_rotates_parts(tmp_path):
    path = tmp_path / "study.h5"
    rng = np.random.default_rng(1)
    first = write_records(path, [("base", f"p{i}", 0) for i in range(5)], rng, records_per_part=2)
    parts = sorted(p.name for p in (tmp_path / "study.h5.parts").iterdir())
    assert parts == ["part-w0-00000.h5", "part-w0-00001.h5", "part-w0-00002.h5"]  # 2 + 2 + 1 on close
    with StoreWriter(path, settings=SETTINGS, base=BASE, records_per_part=2) as writer:
        assert writer.completed() == set(first)
        arrays, axes, image = make_record(rng, tokens=7)
        writer.write_record("dog_lora", "p0", 0, arrays, axes, image=image)
        assert ("dog_lora", "p0", 0) not in writer.completed()  # open part is not sealed yet
        arrays2, _, _ = make_record(rng, tokens=1)
        writer.write_record("dog_lora", "p1", 0, arrays2, axes)
        assert ("dog_lora", "p1", 0) in writer.completed()  # 2 records -> sealed
    with open_store(path) as store:
        assert len(store.records) == 7
        last = store.records.iloc[-1]
        assert (last.model_id, last.prompt_id) == ("dog_lora", "p1")
        np.testing.assert_array_equal(store.read_one(ATTN, 6), arrays2[ATTN])
        with pytest.raises(StoreError, match=r"record 6 has no image$"):
            store.images([6])


def test_manifest_virtual_datasets_concatenate_parts(tmp_path):
    path = tmp_path / "study.h5"
    keys = [("base", f"p{i}", 0) for i in range(5)]
    written = write_records(path, keys, np.random.default_rng(2), records_per_part=2)
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(path, moved / "study.h5")
    os.replace(tmp_path / "study.h5.parts", moved / "study.h5.parts")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative VDS sources must resolve against the manifest's folder, not the cwd
    try:
        with h5py.File(moved / "study.h5", "r") as manifest:
            concatenated = manifest[f"arrays/{ATTN}"][()]
            expected = np.concatenate([written[k][0][ATTN] for k in keys])
            np.testing.assert_array_equal(concatenated, expected)
            assert manifest[f"arrays/{ATTN}"].is_virtual
            records = manifest["records"][()]
            offsets = manifest[f"offsets/{ATTN}"][()]
            for i, row in enumerate(records):
                start, count = offsets[i]
                key = (row["model_id"].decode(), row["prompt_id"].decode(), int(row["seed"]))
                np.testing.assert_array_equal(concatenated[start : start + count], written[key][0][ATTN])
            assert manifest.attrs["format"] == "cemaps-store"
    finally:
        os.chdir(cwd)


def test_empty_store_opens(tmp_path):
    path = tmp_path / "study.h5"
    StoreWriter(path, settings=SETTINGS, base=BASE).close()
    with open_store(path) as store:
        assert store.records.empty and list(store.records.columns) == ["record", "model_id", "prompt_id", "seed"]
        assert store.array_names == [] and store.models.empty and store.prompts.empty
        assert list(store.iter_records()) == []
    assert sorted(p.name for p in (tmp_path / "study.h5.parts").iterdir()) == []


def test_exception_inside_context_seals_complete_records(tmp_path):
    path = tmp_path / "study.h5"
    rng = np.random.default_rng(3)
    arrays, axes, _ = make_record(rng, tokens=2)
    with pytest.raises(RuntimeError), StoreWriter(path, settings=SETTINGS, base=BASE) as writer:
        writer.write_record("base", "p0", 0, arrays, axes)
        raise RuntimeError("generation failed")
    with open_store(path) as store:
        assert store.records[["model_id", "prompt_id", "seed"]].values.tolist() == [["base", "p0", 0]]
    assert not list((tmp_path / "study.h5.parts").glob("*.tmp"))


def test_failed_record_leaves_no_trace(tmp_path):
    path = tmp_path / "study.h5"
    rng = np.random.default_rng(4)
    arrays, axes, _ = make_record(rng, tokens=2)
    with StoreWriter(path, settings=SETTINGS, base=BASE) as writer:
        writer.write_record("base", "p0", 0, arrays, axes)
        bad = dict(arrays, **{"extra": np.zeros((2, 2), np.float32)})
        with pytest.raises(StoreError):
            writer.write_record("base", "p1", 0, bad, dict(axes, extra=("a",)))  # wrong axes count
        writer.write_record("base", "p2", 0, arrays, axes)
    with open_store(path) as store:
        assert store.records["prompt_id"].tolist() == ["p0", "p2"]
        assert "extra" not in store.array_names


def test_read_many_records_equals_one_at_a_time(tmp_path, monkeypatch):
    # read() merges neighbouring rows of a part into one slice; any order, repeats, gaps and
    # part boundaries must give exactly the arrays read_one gives, in the order asked.
    import cemaps.store.reader as reader_module

    path = tmp_path / "study.h5"
    keys = [("base", f"p{i}", s) for i in range(20) for s in (0, 1)]
    write_records(path, keys, np.random.default_rng(1), records_per_part=7)
    monkeypatch.setattr(reader_module, "_MAX_OPEN_DATASETS", 3)  # eviction happens mid-read
    with open_store(path) as store:
        order = [39, 0, 1, 2, 5, 6, 7, 8, 2, 20, 13, 14, 30, 31, 32, 33, 34, 35, 36, 37, 38, 0]
        for name in (ATTN, "delta/norm"):
            got = store.read(name, order)
            assert len(got) == len(order)
            for record, array in zip(order, got, strict=True):
                np.testing.assert_array_equal(array, store.read_one(name, record))
        assert len(store._datasets) <= 3
        assert store.read(ATTN, []) == []
        with pytest.raises(StoreError, match="record 40"):
            store.read(ATTN, [0, 40])
