"""bytes/record and write throughput of the store: 16 layers x float16 [10 tok, 10 steps, 1, 1, 16, 16]."""

import pathlib
import tempfile
import time

import numpy as np
from scipy.ndimage import gaussian_filter

from cemaps.store import StoreWriter, open_store

N = 48
rng = np.random.default_rng(0)


def random_softmax():
    x = rng.standard_normal((10, 10, 1, 1, 16, 16)) * 2
    e = np.exp(x)
    return (e / e.sum(0, keepdims=True)).astype(np.float16)  # softmax over tokens


def smooth_softmax():
    x = gaussian_filter(rng.standard_normal((10, 10, 1, 1, 16, 16)), sigma=(0, 1, 0, 0, 2, 2)) * 6
    x[0] += 5  # <sot> sink, as in real SD cross-attention
    e = np.exp(x)
    return (e / e.sum(0, keepdims=True)).astype(np.float16)


layers = [f"cross_attention/down_blocks.{i // 2}.attentions.{i % 2}.transformer_blocks.0.attn2" for i in range(16)]
axes = {n: ("token", "step", "half", "head", "y", "x") for n in layers}
for kind, make in (("random", random_softmax), ("smooth", smooth_softmax)):
    records = [{n: make() for n in layers} for _ in range(N)]
    raw = sum(a.nbytes for a in records[0].values())
    for label, version in (("gzip4+shuffle", 1), ("blosc2-zstd5", 2)):  # the codecs of schema v1 and v2
        path = pathlib.Path(tempfile.mkdtemp()) / "study.h5"
        t0 = time.perf_counter()
        with StoreWriter(path, settings={}, base={"m": 1}, schema_version=version) as w:
            for i, arrays in enumerate(records):
                w.write_record("base", f"p{i}", 0, arrays, axes)
        wt = time.perf_counter() - t0
        store = open_store(path)
        parts = sum(p.stat().st_size for p in path.with_name("study.h5.parts").iterdir())
        t0 = time.perf_counter()
        for r in range(N):
            for n in layers:
                store.read_one(n, r)
        rt = time.perf_counter() - t0
        print(
            f"{kind:7s} {label:14s} raw {raw} B/rec  parts {parts / N:9.0f} B/rec ({parts / N / raw:.2f}x)  "
            f"total incl. manifest {store.size_on_disk() / N:9.0f} B/rec  write {N / wt:6.1f} rec/s  read {N / rt:6.1f} rec/s"
        )
