"""Throughput and memory of the attention-shift pass over a synthetic SD v1.5-shaped store.

The store has SD v1.5's 16 ``attn2`` layers at cemaps' default capture settings: maps
pooled to at most 16x16 (the 8x8 mid block stays 8x8), 8-12 prompt tokens, 5 captured steps (the capture default),
the "cond" half, heads averaged, float16. Maps are softmaxes over 77 tokens of smooth
random logits (so they compress like real maps); each personalized model rescales
them by its own smooth random gain per layer.

Two store sizes are measured: ``--models`` x ``--prompts`` x ``--seeds`` records (default
46 x 200 x 1 = 9200) and a ``--small-models`` one; flat memory means their peak RSS values
are about equal. Each size is written once per codec (``--codecs``: schema v1's gzip and
schema v2's Blosc2-Zstd, the same maps), and the passes over them alternate codecs
(``--rounds`` times), each in a fresh process so that peak RSS is the pass's own. The
printed ratio is per round (the same moment's machine load on both sides), then the median.

Usage:
    python benchmarks/analysis_throughput.py --cpus 0,1            # default sizes, both codecs
    python benchmarks/analysis_throughput.py --models 8 --small-models 2 --prompts 50
    taskset -c 0,1 python benchmarks/analysis_throughput.py --measure STORE   # one measurement
    python benchmarks/analysis_throughput.py --compare-compute STORE --baseline-src OLD/src --rounds 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_TEXT_TOKENS = 77  # CLIP's context: the softmax runs over all 77 positions
STORE_SETTINGS_TEMPLATE = {"capture": {"halves": ["cond"], "heads": "mean", "spatial": 16}}


def sd15_attn2_layers(latent: int = 64, pooled: int = 16) -> dict[str, tuple[int, int]]:
    """SD v1.5's cross-attention module paths and their (pooled) map sizes at 512x512.

    Down blocks 0-2 (two attentions each) at 64, 32, 16; the mid block at 8; up blocks 1-3
    (three attentions each) at 16, 32, 64; spatial pooling caps each side at ``pooled``.
    """
    layers: dict[str, tuple[int, int]] = {}
    for block, side in enumerate((latent, latent // 2, latent // 4)):
        for attention in range(2):
            layers[f"down_blocks.{block}.attentions.{attention}.transformer_blocks.0.attn2"] = (side, side)
    layers["mid_block.attentions.0.transformer_blocks.0.attn2"] = (latent // 8, latent // 8)
    for block, side in zip((1, 2, 3), (latent // 4, latent // 2, latent), strict=False):
        for attention in range(3):
            layers[f"up_blocks.{block}.attentions.{attention}.transformer_blocks.0.attn2"] = (side, side)
    return {name: (min(h, pooled), min(w, pooled)) for name, (h, w) in layers.items()}


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], side: tuple[int, int], scale: float) -> np.ndarray:
    """Low-frequency noise: a 4x4 grid per map, repeated up to ``side``, float32 [*shape, h, w]."""
    coarse = rng.standard_normal((*shape, 4, 4)).astype(np.float32) * scale
    h, w = side
    return np.repeat(np.repeat(coarse, -(-h // 4), axis=-2), -(-w // 4), axis=-1)[..., :h, :w]


def base_maps(
    prompt_index: int, seed: int, tokens: int, steps: int, layers: dict[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """The base model's maps for one prompt: float32 [token, step, half=1, head=1, y, x] per layer."""
    rng = np.random.default_rng([prompt_index, seed])
    maps = {}
    for name, side in layers.items():
        logits = smooth_field(rng, (DEFAULT_TEXT_TOKENS, steps), side, 2.0)
        logits += 0.3 * rng.standard_normal(logits.shape).astype(np.float32)
        probabilities = np.exp(logits - logits.max(axis=0, keepdims=True))
        probabilities /= probabilities.sum(axis=0, keepdims=True)
        maps[name] = probabilities[:tokens, :, None, None]
    return maps


def write_part_of_store(job: dict) -> int:
    """One writer process: writes its share of (model, prompt, seed) records; returns how many."""
    from cemaps.store import StoreWriter

    layers = {name: tuple(side) for name, side in job["layers"].items()}
    axes = ("token", "step", "half", "head", "y", "x")
    names = {layer: f"cross_attention/{layer}" for layer in layers}
    written = 0
    with StoreWriter(
        job["path"],
        settings=job["settings"],
        base={"model_id": "synthetic-sd15"},
        writer_tag=f"w{job['worker']}",
        records_per_part=job["records_per_part"],
        schema_version=job["schema_version"],
    ) as writer:
        if job["worker"] == 0:
            writer.add_models(job["models"])
            writer.add_prompts(job["prompts"])
        gains: dict[int, dict[str, np.ndarray]] = {}
        for prompt_index, prompt in enumerate(job["prompts"]):
            if prompt_index % job["workers"] != job["worker"]:
                continue
            tokens = len(prompt["tokens"])
            for seed in job["seeds"]:
                maps = base_maps(prompt_index, seed, tokens, job["steps"], layers)
                for model_index, model in enumerate(job["models"]):
                    if model_index == 0:
                        arrays = maps
                    else:
                        if model_index not in gains:
                            rng = np.random.default_rng([10_000, model_index])
                            gains[model_index] = {
                                name: np.exp(smooth_field(rng, (1, job["steps"]), side, 0.3))[:, :, None, None]
                                for name, side in layers.items()
                            }
                        arrays = {name: value * gains[model_index][name] for name, value in maps.items()}
                    writer.write_record(
                        model["model_id"],
                        prompt["prompt_id"],
                        seed,
                        {names[layer]: value.astype(np.float16) for layer, value in arrays.items()},
                        axes={names[layer]: axes for layer in layers},
                    )
                    written += 1
    return written


def build_store(
    path: Path,
    *,
    models: int,
    prompts: int,
    seeds: int,
    steps: int,
    writers: int,
    records_per_part: int,
    schema_version: int,
) -> dict:
    """Writes a synthetic store with ``writers`` processes; returns what was built and how long it took."""
    rng = np.random.default_rng(0)
    model_rows = [{"model_id": "base", "method": "base", "subject_id": None}] + [
        {
            "model_id": f"{('dreambooth', 'lora', 'ti')[m % 3]}-s{m:02d}",
            "method": ("dreambooth", "lora", "ti")[m % 3],
            "subject_id": f"s{m:02d}",
        }
        for m in range(models)
    ]
    prompt_rows = []
    for p in range(prompts):
        words = [f"w{p}_{i}</w>" for i in range(int(rng.integers(6, 11)))]  # 8-12 tokens with start/end
        prompt_rows.append(
            {
                "prompt_id": f"p{p:03d}",
                "text": " ".join(words),
                "tokens": ["<|startoftext|>", *words, "<|endoftext|>"],
                "token_ids": list(range(len(words) + 2)),
                "abstractness": ("concrete", "abstract", "compositional")[p % 3],
                "domain": "synthetic",
            }
        )
    settings = json.loads(json.dumps(STORE_SETTINGS_TEMPLATE))
    settings["capture"]["steps"] = steps
    layers = sd15_attn2_layers()
    jobs = [
        {
            "path": str(path),
            "worker": w,
            "workers": writers,
            "models": model_rows,
            "prompts": prompt_rows,
            "seeds": list(range(seeds)),
            "steps": steps,
            "layers": layers,
            "settings": settings,
            "records_per_part": records_per_part,
            "schema_version": schema_version,
        }
        for w in range(writers)
    ]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        written = sum(pool.map(write_part_of_store, jobs))
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file())
    return {
        "records": written,
        "personalized_records": models * prompts * seeds,
        "layers": len(layers),
        "build_seconds": round(seconds, 1),
        "store_bytes": size,
    }


def use_reference_kernel() -> None:
    """Makes the store pass use the previous arithmetic: normalise q, then ``_js_divergence`` (log2,
    fresh temporaries), so the fused kernel can be timed against it on the same store and load."""
    import cemaps.analysis.shift.attention_shift as shift

    def reference(p, maps, permutation, half_index, workspace):
        n_halves = maps.permute(*permutation).shape[2]
        return shift._js_divergence(p, shift._spatial(maps, permutation, half_index, n_halves))

    shift._shift_block = reference


def measure(path: Path, chunk_size: int, threads: int, cpus: set[int] | None, kernel: str = "fused") -> dict:
    """Times one attention-shift pass over every personalized record and layer; peak RSS of this process."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # e.g. {0, 1}: the "2 cores" the target is stated for
    import torch

    from cemaps.analysis.shift.attention_shift import attention_shift_table
    from cemaps.store import open_store

    torch.set_num_threads(threads)
    if kernel == "reference":
        use_reference_kernel()  # "baseline" and "fused" run the imported package as it is
    with open_store(path) as store:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start, cpu_start = time.perf_counter(), time.process_time()
        table = attention_shift_table(store, chunk_size=chunk_size)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    records = table[["model_id", "prompt_id", "seed"]].drop_duplicates().shape[0]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    load = os.getloadavg()[0]
    return {
        "records": records,
        "rows": len(table),
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds, 1),
        "kernel": kernel,
        "cpu_seconds": round(cpu_seconds, 2),
        "records_per_cpu_s": round(records / cpu_seconds, 1),
        "layer_records_per_s": round(len(table) / seconds, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_rss_before_pass_mib": round(rss_before / 1024, 1),
        "cemaps_src": str(Path(sys.modules["cemaps"].__file__).parent.parent),
        "torch_threads": threads,
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "load_1min": round(load, 1),
        "mean_shift": float(table["attention_shift"].mean()),
    }


def compare_compute(path: Path, baseline_src: Path, records: int, repeats: int, cpus: set[int] | None) -> dict:
    """CPU seconds of the computing side alone (no reading): the first ``records`` personalized
    records of every layer are decoded once, then this version's ``_layer_table`` and the one in
    ``baseline_src`` run on the same decoded chunks, alternating ``repeats`` times. Thread CPU
    time is what other jobs on the machine disturb least; both tables must agree."""
    import importlib.util

    if cpus:
        os.sched_setaffinity(0, cpus)
    import torch

    import cemaps.analysis.shift.attention_shift as shift
    from cemaps.store import open_store

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location(
        "baseline_attention_shift", baseline_src / "cemaps" / "analysis" / "attention_shift.py"
    )
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    with open_store(path) as store:
        names = shift.select_layers(store)
        halves = shift._capture_halves(store)
        paired = shift.paired_records(store).iloc[:records]
        items = [
            (name, [item[1:] for item in chunks])
            for name, chunks in itertools.groupby(shift._read_ahead(store, names, paired, 64), key=lambda item: item[0])
        ]
        seconds: dict[str, list[float]] = {"baseline": [], "fused": []}
        tables = {}
        for _ in range(repeats):
            for label, module in (("baseline", baseline), ("fused", shift)):
                start = time.thread_time()
                tables[label] = [
                    module._layer_table(store, name, iter(chunks), paired, halves, "cond", ("token", "step"), {})
                    for name, chunks in items
                ]
                seconds[label].append(time.thread_time() - start)
    difference = max(
        float(np.max(np.abs(a["attention_shift"].to_numpy() - b["attention_shift"].to_numpy())))
        for a, b in zip(tables["baseline"], tables["fused"], strict=True)
    )
    ratios = [b / f for b, f in zip(seconds["baseline"], seconds["fused"], strict=True)]
    return {
        "records": len(paired),
        "layers": len(names),
        "baseline_cpu_s": seconds["baseline"],
        "fused_cpu_s": seconds["fused"],
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(float(np.median(ratios)), 3),
        "fused_records_per_cpu_s": round(len(paired) / float(np.median(seconds["fused"])), 1),
        "baseline_records_per_cpu_s": round(len(paired) / float(np.median(seconds["baseline"])), 1),
        "max_abs_difference": difference,
        "load_1min": round(os.getloadavg()[0], 1),
    }


CODECS = {"gzip": 1, "blosc2-zstd": 2}  # codec -> the store schema version that writes it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=46, help="personalized models in the large store")
    parser.add_argument("--small-models", type=int, default=4, help="personalized models in the small store (0: none)")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="captured steps per record (cemaps default: 5)")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the measured process (2 ran 9-34x slower on a loaded 2-CPU machine)",
    )
    parser.add_argument("--cpus", type=str, default="", help="pin the measured process to these CPUs, e.g. 0,1")
    parser.add_argument(
        "--codecs",
        type=str,
        default="gzip,blosc2-zstd",
        help=f"of {sorted(CODECS)}; the first is the reference of the printed ratios",
    )
    parser.add_argument(
        "--kernels",
        type=str,
        default="fused",
        help="of fused (the library's) and reference (the previous arithmetic), e.g. "
        "'reference,fused' to time both on each store; the first is the reference of the ratios",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a cemaps source folder (e.g. an older checkout's src/) whose pass is timed as kernel "
        "'baseline' beside the others (whole pass as that version runs it)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating passes per codec and size")
    parser.add_argument("--writers", type=int, default=2, help="processes that build each store")
    parser.add_argument("--records-per-part", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="where stores go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare-compute",
        type=Path,
        default=None,
        metavar="STORE",
        help="time only the computing side of this version against --baseline-src on the same "
        "decoded chunks of STORE (--compare-records records, --rounds repeats), then exit",
    )
    parser.add_argument("--compare-records", type=int, default=1024)
    args = parser.parse_args()

    if args.compare_compute is not None:
        if args.baseline_src is None:
            parser.error("--compare-compute needs --baseline-src")
        cpus = {int(c) for c in args.cpus.split(",") if c.strip()}
        print(
            json.dumps(
                compare_compute(args.compare_compute, args.baseline_src, args.compare_records, args.rounds, cpus)
            )
        )
        return
    if args.measure is not None:
        cpus = {int(c) for c in args.cpus.split(",") if c.strip()}
        print(json.dumps(measure(args.measure, args.chunk_size, args.threads, cpus, args.kernels)))
        return

    codecs = list(dict.fromkeys(c.strip() for c in args.codecs.split(",") if c.strip()))
    if not codecs or any(c not in CODECS for c in codecs):
        parser.error(f"--codecs {args.codecs!r}: expected some of {sorted(CODECS)}")
    kernels = list(dict.fromkeys(k.strip() for k in args.kernels.split(",") if k.strip()))
    if args.baseline_src is not None and "baseline" not in kernels:
        kernels.insert(0, "baseline")
    if not kernels or any(k not in ("fused", "reference", "baseline") for k in kernels):
        parser.error(f"--kernels {args.kernels!r}: expected some of ['fused', 'reference', 'baseline']")
    if "baseline" in kernels and (args.baseline_src is None or not (args.baseline_src / "cemaps").is_dir()):
        parser.error(f"--baseline-src {args.baseline_src}: expected a folder holding the cemaps package")
    variants = [(codec, kernel) for codec in codecs for kernel in kernels]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cemaps-bench-"))
    results = []
    try:
        for models in [m for m in (args.small_models, args.models) if m > 0]:  # 0: skip that size
            paths, built = {}, {}
            for codec in codecs:
                path = workdir / f"synthetic-{models}x{args.prompts}x{args.seeds}-s{args.steps}-{codec}" / "study.h5"
                if path.exists():
                    built[codec] = {
                        "records": None,
                        "build_seconds": None,
                        "reused": True,
                        "store_bytes": sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file()),
                    }
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    built[codec] = build_store(
                        path,
                        models=models,
                        prompts=args.prompts,
                        seeds=args.seeds,
                        steps=args.steps,
                        writers=args.writers,
                        records_per_part=args.records_per_part,
                        schema_version=CODECS[codec],
                    )
                paths[codec] = path
                print(f"built {path}: {built[codec]}", flush=True)
            for round_index in range(args.rounds):
                for codec, kernel in variants if round_index % 2 == 0 else variants[::-1]:
                    command = [
                        sys.executable,
                        __file__,
                        "--measure",
                        str(paths[codec]),
                        "--chunk-size",
                        str(args.chunk_size),
                        "--threads",
                        str(args.threads),
                        "--cpus",
                        args.cpus,
                        "--kernels",
                        kernel,
                    ]
                    env = dict(os.environ)
                    if kernel == "baseline":  # that version's package first on the path
                        env["PYTHONPATH"] = os.pathsep.join(
                            [str(args.baseline_src.resolve()), env.get("PYTHONPATH", "")]
                        )
                    measured = json.loads(
                        subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
                    )
                    results.append(
                        {
                            "models": models,
                            "codec": codec,
                            "round": round_index,
                            "prompts": args.prompts,
                            "seeds": args.seeds,
                            "steps": args.steps,
                            **built[codec],
                            **measured,
                        }
                    )
                    print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    _print_table(results, [f"{codec}/{kernel}" for codec, kernel in variants])
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


def _print_table(results: list[dict], codecs: list[str]) -> None:
    """``codecs``: the variants as 'codec/kernel'; ratios are against the first."""
    print(
        f"\n{'models':>6} {'round':>5} {'codec/kernel':>22} {'records':>7} {'seconds':>7} {'records/s':>9} "
        f"{'rec/CPU-s':>9} {'peak RSS MiB':>12} {'KB/record':>9} {'load':>5}"
    )
    for row in results:
        per_record = row["store_bytes"] / (row["records"] + row["records"] // max(1, row["models"])) / 1e3
        print(
            f"{row['models']:>6} {row['round']:>5} {row['codec'] + '/' + row['kernel']:>22} {row['records']:>7} "
            f"{row['seconds']:>7} {row['records_per_s']:>9} {row['records_per_cpu_s']:>9} {row['peak_rss_mib']:>12} "
            f"{per_record:>9.1f} {row['load_1min']:>5}"
        )
    reference = codecs[0]
    for models in sorted({row["models"] for row in results}):
        rates = {
            (row["round"], f"{row['codec']}/{row['kernel']}"): row["records_per_s"]
            for row in results
            if row["models"] == models
        }
        rounds = sorted({key[0] for key in rates})
        for codec in codecs[1:]:
            ratios = [
                rates[(r, codec)] / rates[(r, reference)]
                for r in rounds
                if (r, codec) in rates and (r, reference) in rates
            ]
            if ratios:
                print(
                    f"{models} models: records/s {codec} / {reference} per round: "
                    f"{', '.join(f'{x:.2f}' for x in ratios)}; median {float(np.median(ratios)):.2f}x"
                )


if __name__ == "__main__":
    main()
