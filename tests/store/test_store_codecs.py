"""Schema v2 (Blosc2-Zstd arrays) beside schema v1 (gzip): old stores open, append and analyse the same."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pandas as pd

from cemaps.analysis.shift.attention_shift import attention_shift_table
from cemaps.store import SCHEMA_VERSION, StoreWriter, merge_stores, open_store
from cemaps.store.layout import parts_dir, sealed_files

V1_STORE = Path(__file__).parent / "data" / "v1_store" / "study.h5"
_spec = importlib.util.spec_from_file_location("make_v1_store", V1_STORE.parent.parent / "make_v1_store.py")
v1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v1)


def _copy_v1(tmp_path: Path) -> Path:
    target = tmp_path / "v1"
    shutil.copytree(V1_STORE.parent, target)
    return target / "study.h5"


def _filters(path: Path) -> set[str]:
    """HDF5 filter ids of every array dataset of one part file."""
    found: set[str] = set()
    with h5py.File(path, "r") as part:
        part["arrays"].visititems(
            lambda name, obj: found.update(obj._filters) if isinstance(obj, h5py.Dataset) else None
        )
    return found


def _write_like_v1(path: Path) -> None:
    """The v1 fixture's records, written by this cemaps (schema v2)."""
    with StoreWriter(path, settings=v1.SETTINGS, base=v1.BASE, records_per_part=3) as writer:
        writer.add_models(list(v1.MODELS))
        writer.add_prompts(list(v1.PROMPTS))
        for m, model in enumerate(v1.MODELS):
            for p, prompt in enumerate(v1.PROMPTS):
                arrays = {f"cross_attention/{layer}": v1.maps(m, p, i) for i, layer in enumerate(v1.LAYERS)}
                writer.write_record(
                    model["model_id"],
                    prompt["prompt_id"],
                    0,
                    arrays,
                    axes={name: v1.AXES for name in arrays},
                    image=np.full((8, 8, 3), 40 * m + p, dtype=np.uint8),
                )


def test_a_v1_store_opens_and_reads_what_was_written():
    with open_store(V1_STORE) as store:
        assert store.schema_version == 1
        assert list(store.models.index) == ["base", "lora-a"]
        for row in store.records.itertuples():
            m = [model["model_id"] for model in v1.MODELS].index(row.model_id)
            p = [prompt["prompt_id"] for prompt in v1.PROMPTS].index(row.prompt_id)
            for i, layer in enumerate(v1.LAYERS):
                np.testing.assert_array_equal(store.read_one(f"cross_attention/{layer}", row.record), v1.maps(m, p, i))
            assert (store.images([row.record])[0] == 40 * m + p).all()
    assert _filters(sealed_files(parts_dir(V1_STORE), "part")[0]) == {"gzip", "shuffle"}


def test_v1_and_v2_stores_analyse_the_same(tmp_path):
    v2_path = tmp_path / "v2.h5"
    _write_like_v1(v2_path)
    with open_store(v2_path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
    assert _filters(sealed_files(parts_dir(v2_path), "part")[0]) == {str(hdf5plugin.BLOSC2_ID), "fletcher32"}
    with open_store(V1_STORE) as old, open_store(v2_path) as new:
        for per in ("record", "token", "step"):
            pd.testing.assert_frame_equal(attention_shift_table(old, per=per), attention_shift_table(new, per=per))


def test_appending_to_a_v1_store_keeps_it_v1_and_gzip(tmp_path):
    path = _copy_v1(tmp_path)
    with StoreWriter(path, settings=v1.SETTINGS, base=v1.BASE) as writer:
        writer.write_record(
            "base",
            "p0",
            1,
            {f"cross_attention/{v1.LAYERS[0]}": v1.maps(0, 0, 0)},
            axes={f"cross_attention/{v1.LAYERS[0]}": v1.AXES},
        )
    newest = sealed_files(parts_dir(path), "part")[-1]
    with h5py.File(newest, "r") as part, h5py.File(path, "r") as manifest:
        assert part.attrs["schema_version"] == 1 and manifest.attrs["schema_version"] == 1
    assert _filters(newest) == {"gzip", "shuffle", "fletcher32"}
    with open_store(path) as store:
        assert store.schema_version == 1 and len(store.records) == 5


def test_merging_v1_and_v2_gives_v2(tmp_path):
    v2_path = tmp_path / "v2.h5"
    with StoreWriter(v2_path, settings=v1.SETTINGS, base=v1.BASE) as writer:
        writer.write_record(
            "base",
            "p0",
            7,
            {f"cross_attention/{v1.LAYERS[0]}": v1.maps(0, 0, 0)},
            axes={f"cross_attention/{v1.LAYERS[0]}": v1.AXES},
        )
    merged = tmp_path / "merged.h5"
    merge_stores([V1_STORE, v2_path], merged)
    with open_store(merged) as store:
        assert store.schema_version == 2 and len(store.records) == 5


def test_plain_h5py_with_hdf5plugin_reads_v2_arrays(tmp_path):
    path = tmp_path / "v2.h5"
    _write_like_v1(path)
    name = f"arrays/cross_attention/{v1.LAYERS[1]}"
    with open_store(path) as store:
        expected = np.concatenate([store.read_one(f"cross_attention/{v1.LAYERS[1]}", r) for r in store.records.record])
    script = textwrap.dedent(f"""
        import sys, h5py, hdf5plugin, numpy as np
        with h5py.File({str(path)!r}, "r") as f:
            np.save(sys.stdout.buffer, f[{name!r}][()])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(done.stdout)), expected)
