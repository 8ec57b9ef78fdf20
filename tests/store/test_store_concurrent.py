"""Several writers on one store at once, and merging stores written separately."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import cemaps.store
from cemaps.errors import StoreError
from cemaps.store import StoreWriter, merge_stores, open_store

SETTINGS = {"capture": {"spatial": 4}}
BASE = {"model_id": "tiny-sd"}
AXES = {"attn": ("token", "y", "x")}

# The child imports only cemaps.store, not the cemaps package (whose __init__ pulls in torch and
# diffusers, ~15-40 s on a loaded 2-core machine): the store itself needs neither.
ONLY_STORE = textwrap.dedent(f"""
    import sys, types
    _package = types.ModuleType("cemaps")
    _package.__path__ = [{str(Path(cemaps.store.__file__).parent.parent)!r}]
    sys.modules["cemaps"] = _package
""")

CHILD = ONLY_STORE + textwrap.dedent("""
    import sys
    import numpy as np
    from cemaps.store import StoreWriter

    path, tag, model = sys.argv[1], sys.argv[2], sys.argv[3]
    with StoreWriter(path, settings={"capture": {"spatial": 4}}, base={"model_id": "tiny-sd"},
                     writer_tag=tag, records_per_part=2) as writer:
        writer.add_models([{"model_id": model, "writer": tag}])
        for i in range(7):
            attn = np.full((3, 4, 4), i, dtype=np.float16) + np.float16(0.5 if model == "a" else 0)
            writer.write_record(model, f"p{i}", 0, {"attn": attn}, {"attn": ("token", "y", "x")})
""")


def attn(i: int, model: str) -> np.ndarray:
    return np.full((3, 4, 4), i, dtype=np.float16) + np.float16(0.5 if model == "a" else 0)


def test_two_writer_processes_at_once(tmp_path):
    path = tmp_path / "study.h5"
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(path), f"gpu{k}", model], stderr=subprocess.PIPE, text=True)
        for k, model in enumerate("ab")
    ]
    for child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
    with open_store(path) as store:
        assert len(store.records) == 14
        assert sorted(store.models.index) == ["a", "b"]
        for row in store.records.itertuples():
            expected = attn(int(row.prompt_id[1:]), row.model_id)
            np.testing.assert_array_equal(store.read_one("attn", row.record), expected)
    with h5py.File(path, "r") as manifest:  # the last manifest rewrite holds the union of both writers
        assert len(manifest["records"]) == 14
        assert manifest["arrays/attn"].shape == (42, 4, 4)
        assert len(manifest["models/model_id"]) == 2


def write_store(path, model: str, prompts: range, *, settings=SETTINGS, offset: float = 0.0) -> None:
    with StoreWriter(path, settings=settings, base=BASE, records_per_part=2) as writer:
        writer.add_models([{"model_id": model, "method": "lora"}])
        writer.write_table("weight_deltas", pd.DataFrame({"model_id": [model], "norm": [1.0]}))
        for i in prompts:
            writer.write_record(model, f"p{i}", 0, {"attn": attn(i, model) + np.float16(offset)}, AXES)


def test_merge_links_parts_and_combines(tmp_path):
    write_store(tmp_path / "a.h5", "a", range(3))
    write_store(tmp_path / "b.h5", "b", range(4))
    out = tmp_path / "merged.h5"
    merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], out)
    with open_store(out) as store:
        assert len(store.records) == 7
        assert sorted(store.models.index) == ["a", "b"]
        assert sorted(store.table("weight_deltas")["model_id"]) == ["a", "b"]
        for row in store.records.itertuples():
            expected = attn(int(row.prompt_id[1:]), row.model_id)
            np.testing.assert_array_equal(store.read_one("attn", row.record), expected)
    # same writer tag in both sources: b's parts are renamed, and all are hard links, not copies
    with h5py.File(out, "r") as manifest:  # the merged manifest's virtual dataset spans both sources
        assert manifest["arrays/attn"].shape == (7 * 3, 4, 4)
        assert sorted(set(manifest["arrays/attn"][:, 0, 0].tolist())) == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    merged_parts = sorted(p.name for p in (tmp_path / "merged.h5.parts").glob("part-*.h5"))
    assert "part-w0+m1-00000.h5" in merged_parts and len(merged_parts) == 2 + 2
    assert os.path.samefile(tmp_path / "merged.h5.parts/part-w0-00000.h5", tmp_path / "a.h5.parts/part-w0-00000.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-merging finds hard links, not duplicates
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], out)  # merging again adds nothing
    assert len(list((tmp_path / "merged.h5.parts").glob("part-*.h5"))) == 4
    with open_store(out) as store:
        assert len(store.records) == 7


def test_merge_keeps_identical_duplicates_once_and_warns(tmp_path):
    write_store(tmp_path / "a.h5", "a", range(3))
    write_store(tmp_path / "b.h5", "a", range(2, 4))  # ("a", "p2", 0) in both, same content
    with pytest.warns(UserWarning, match="1 records were in several sources with identical content"):
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")
    with open_store(tmp_path / "merged.h5") as store:
        assert sorted(store.records["prompt_id"]) == ["p0", "p1", "p2", "p3"]


def test_merge_refuses_differing_duplicates(tmp_path):
    write_store(tmp_path / "a.h5", "a", range(3))
    write_store(tmp_path / "b.h5", "a", range(2, 4), offset=1.0)
    with pytest.raises(StoreError) as err:
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")
    assert str(err.value) == (
        f"{tmp_path / 'b.h5'}: record ('a', 'p2', 0) differs from the one in "
        f"{tmp_path / 'a.h5'}; remove one of them before merging"
    )
    assert not (tmp_path / "merged.h5").exists()  # nothing half-written


def test_merge_refuses_different_settings(tmp_path):
    write_store(tmp_path / "a.h5", "a", range(1))
    write_store(tmp_path / "b.h5", "b", range(1), settings={"capture": {"spatial": 8}})
    with pytest.raises(StoreError) as err:
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")
    assert str(err.value) == (
        f"{tmp_path / 'b.h5'}: capture setting 'capture.spatial' is 8 in the store but 4 "
        f"in {tmp_path / 'a.h5'}; use a new --store path"
    )


def test_merge_refuses_conflicting_models(tmp_path):
    write_store(tmp_path / "a.h5", "a", range(1))
    with StoreWriter(tmp_path / "b.h5", settings=SETTINGS, base=BASE) as writer:
        writer.add_models([{"model_id": "a", "method": "dreambooth"}])
    with pytest.raises(StoreError) as err:
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")
    assert str(err.value) == (
        f"{tmp_path / 'b.h5'}: model_id 'a' has 'method' = 'dreambooth' but "
        f"{tmp_path / 'a.h5'} has 'lora'; stores with conflicting rows cannot be merged"
    )


def test_merge_refuses_no_sources(tmp_path):
    with pytest.raises(StoreError) as err:
        merge_stores([], tmp_path / "merged.h5")
    assert str(err.value) == f"{tmp_path / 'merged.h5'}: merge_stores got no sources; expected at least one store path"
