"""A writer killed with SIGKILL loses only its open part; the store stays readable and resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cemaps.store
from cemaps.store import StoreWriter, open_store

SETTINGS = {"capture": {"spatial": 4}}
BASE = {"model_id": "tiny-sd"}

# The child imports only cemaps.store, not the cemaps package (whose __init__ pulls in torch and
# diffusers, ~15-40 s on a loaded 2-core machine): the store itself needs neither.
ONLY_STORE = textwrap.dedent(f"""
    import sys, types
    _package = types.ModuleType("cemaps")
    _package.__path__ = [{str(Path(cemaps.store.__file__).parent.parent)!r}]
    sys.modules["cemaps"] = _package
""")

# the child and the test derive each record's content from its index, so both know what was written
CHILD = ONLY_STORE + textwrap.dedent("""
    import sys, time
    import numpy as np
    from cemaps.store import StoreWriter

    def record(i):
        rng = np.random.default_rng(i)
        arrays = {"attn/layer.0": rng.random((2 + i % 3, 3, 4, 4)).astype(np.float16),
                  "attn/layer.1": rng.random((2 + i % 3, 3, 4, 4)).astype(np.float16)}
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return arrays, image

    path, pause_after = sys.argv[1], int(sys.argv[2])
    writer = StoreWriter(path, settings={"capture": {"spatial": 4}}, base={"model_id": "tiny-sd"},
                         records_per_part=2)
    axes = {"attn/layer.0": ("token", "step", "y", "x"), "attn/layer.1": ("token", "step", "y", "x")}
    for i in range(100000):
        arrays, image = record(i)
        writer.write_record("base", f"p{i}", 0, arrays, axes, image=image)
        print(i, flush=True)
        if i + 1 == pause_after:
            time.sleep(600)
""")


def expected_record(i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(i)
    arrays = {
        "attn/layer.0": rng.random((2 + i % 3, 3, 4, 4)).astype(np.float16),
        "attn/layer.1": rng.random((2 + i % 3, 3, 4, 4)).astype(np.float16),
    }
    return arrays, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)


def run_and_kill(path, *, lines_before_kill: int, pause_after: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(pause_after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(lines_before_kill):
            line = child.stdout.readline()
            assert line, child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def check_store_intact(path) -> set[tuple[str, str, int]]:
    with open_store(path) as store:
        records = store.records
        for row in records.itertuples():
            arrays, image = expected_record(int(row.prompt_id[1:]))
            for name, expected in arrays.items():
                np.testing.assert_array_equal(store.read_one(name, row.record), expected)
            np.testing.assert_array_equal(store.images([row.record])[0], image)
        return {(r.model_id, r.prompt_id, r.seed) for r in records.itertuples()}


def resume(path, keys_done, total: int) -> None:
    with StoreWriter(path, settings=SETTINGS, base=BASE, records_per_part=2) as writer:
        assert not list(path.parent.glob("study.h5.parts/*.tmp"))
        assert writer.completed() == keys_done
        for i in range(total):
            if ("base", f"p{i}", 0) in writer.completed():
                continue
            arrays, image = expected_record(i)
            writer.write_record(
                "base", f"p{i}", 0, arrays, {n: ("token", "step", "y", "x") for n in arrays}, image=image
            )


def test_sigkill_with_open_part_loses_only_it(tmp_path):
    path = tmp_path / "study.h5"
    run_and_kill(path, lines_before_kill=7, pause_after=7)  # 3 sealed parts + 1 record in the open part
    # the open part lived in memory: nothing of it is on disk (issue 22: a full disk cannot half-flush it)
    assert not list((tmp_path / "study.h5.parts").glob("*.tmp"))
    assert len(list((tmp_path / "study.h5.parts").glob("part-*.h5"))) == 3
    done = check_store_intact(path)
    assert done == {("base", f"p{i}", 0) for i in range(6)}
    resume(path, done, total=9)
    assert check_store_intact(path) == {("base", f"p{i}", 0) for i in range(9)}


@pytest.mark.parametrize("lines", [9, 14])
def test_sigkill_mid_run(tmp_path, lines):
    path = tmp_path / "study.h5"
    run_and_kill(path, lines_before_kill=lines, pause_after=-1)  # the child keeps writing until killed
    done = check_store_intact(path)
    assert len(done) >= lines - lines % 2  # every announced record whose part was sealed is kept
    resume(path, done, total=len(done) + 3)
    assert len(check_store_intact(path)) == len(done) + 3
