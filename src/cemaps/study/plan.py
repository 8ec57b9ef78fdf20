"""The study planner: what ``cemaps capture`` would do, before hours of GPU time.

For each capture process it counts the records of its share (already in the store, still
to make), the personalized models it will apply, and estimates the bytes the new records
add to the store and the time they take. Both estimates come from a short calibration
on this machine's device: one batch of the study's first prompts is generated at the
study's settings with capture on (after a 1-step warm-up of the same batch) and written to a scratch store
with the store's codec, and the first personalized model is applied and removed once.

- bytes: each layer's stored array has one row per prompt token (prompt tokens vary,
  the trailing axes are fixed by the layer's shape and the capture settings), so a record
  costs ``tokens x bytes per token row`` (compressed, measured on the calibration batch)
  ``+ its PNG image`` (the calibration batch's mean), and each part file of
  ``records_per_part`` records adds the part overhead measured on the scratch store;
  the manifest is scaled from the scratch store's by the number of parts.
- time: ``batches to make x seconds per batch + model switches x seconds per switch``;
  loading the base model and weight-delta tables are not included.

Example:
    >>> from cemaps.study.config import StudyConfig, GenerationSettings
    >>> import tempfile, pathlib
    >>> config = StudyConfig(prompts=["a red mug", "freedom"], seeds=(0,),
    ...                      generation=GenerationSettings(steps=2, batch_size=1))
    >>> plan = plan_study(config, pathlib.Path(tempfile.mkdtemp()) / "study.h5", processes=2)
    >>> [(p.rank, p.to_make) for p in plan.processes]
    [(0, 1), (1, 1)]
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cemaps.errors import ConfigError
from cemaps.models.families import labelling_tokenizer
from cemaps.study.config import StudyConfig
from cemaps.study.distributed import process_info, shard


@dataclass(frozen=True)
class Calibration:
    """What one timed batch on this device cost.

    Attributes:
        device: where it ran (e.g. "cuda:0", "cpu").
        batch_images: images in the calibration batch.
        seconds_per_batch: generation + capture + store write of one batch of batch_size images.
        seconds_per_switch: applying and removing one personalized model (0 with none).
        bytes_per_token_row: compressed bytes of all layers' arrays per prompt token.
        bytes_per_image: mean PNG size (0 when images are not stored).
        bytes_per_part: part-file overhead beyond arrays and images.
        manifest_bytes_per_part: manifest growth per part file.
        fixed_bytes: the scratch store's meta files (models, prompts).
    """

    device: str
    batch_images: int
    seconds_per_batch: float
    seconds_per_switch: float
    bytes_per_token_row: float
    bytes_per_image: float
    bytes_per_part: float
    manifest_bytes_per_part: float
    fixed_bytes: float


@dataclass(frozen=True)
class ProcessPlan:
    """One capture process's share: counts and estimates (bytes and seconds for what is left)."""

    rank: int
    share: int
    done: int
    to_make: int
    batches: int
    model_switches: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class StudyPlan:
    """Every process's share of a study, and the calibration the estimates come from."""

    store: Path
    models: int
    prompts: int
    seeds: int
    processes: list[ProcessPlan]
    calibration: Calibration
    store_bytes_now: int

    def to_text(self) -> str:
        """The plan as the table ``cemaps capture --dry-run`` prints."""
        c = self.calibration
        lines = [
            f"plan for {self.store}: {self.models} models x {self.prompts} prompts x {self.seeds} seeds = "
            f"{self.models * self.prompts * self.seeds} records over {len(self.processes)} process(es)",
            f"calibration on {c.device}: {c.batch_images} images in {c.seconds_per_batch:.2f} s per batch, "
            f"model switch {c.seconds_per_switch:.2f} s, {c.bytes_per_token_row / 1e3:.1f} KB per token row "
            f"+ {c.bytes_per_image / 1e3:.1f} KB image per record",
            f"{'process':>8} {'share':>7} {'done':>7} {'to make':>8} {'switches':>8} {'disk MB':>9} {'time':>10}",
        ]
        for p in self.processes:
            lines.append(
                f"{'rank' + str(p.rank):>8} {p.share:>7} {p.done:>7} {p.to_make:>8} {p.model_switches:>8} "
                f"{p.bytes / 1e6:>9.1f} {_duration(p.seconds):>10}"
            )
        total = sum(p.bytes for p in self.processes)
        wall = max((p.seconds for p in self.processes), default=0.0)
        lines.append(
            f"{'all':>8} {sum(p.share for p in self.processes):>7} {sum(p.done for p in self.processes):>7} "
            f"{sum(p.to_make for p in self.processes):>8} "
            f"{sum(p.model_switches for p in self.processes):>8} {total / 1e6:>9.1f} {_duration(wall):>10}"
        )
        lines.append(
            f"store after the run: ~{(self.store_bytes_now + total) / 1e9:.3f} GB "
            f"({self.store_bytes_now / 1e9:.3f} GB now); wall time is the slowest process's"
        )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_study(
    config: StudyConfig,
    store_path: str | Path,
    *,
    processes: int | None = None,
    records_per_part: int = 16,
    pipe: Any = None,
) -> StudyPlan:
    """Counts and estimates for every capture process of ``config`` (nothing is written to the store).

    Args:
        config: the study.
        store_path: the store ``cemaps capture`` would create or resume (read if it exists).
        processes: capture processes to plan for (default: the launcher's WORLD_SIZE, else 1).
        records_per_part: as given to ``cemaps capture`` (the part-file overhead depends on it).
        pipe: an already loaded base pipeline (otherwise ``config.base`` is loaded).

    Returns:
        A :class:`StudyPlan`; ``str(plan.to_text())`` is the printed table.

    Raises:
        ConfigError: ``processes`` below 1; every error :func:`cemaps.run_study` raises for a bad config.
    """
    from cemaps.models.loading import load_pipeline
    from cemaps.probes import CrossAttentionProbe
    from cemaps.study.runner import BASE_ID, _plan, _set_scheduler, _spec, prompt_table

    launcher = process_info()
    world = launcher.world_size if processes is None else processes
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ConfigError(f"processes={processes!r}: expected an integer >= 1")
    if pipe is None:
        from cemaps.study.distributed import capture_device

        pipe = load_pipeline(
            config.base, device=capture_device(launcher, config.device), dtype=config.dtype, config=config.base_config
        )
    _set_scheduler(pipe, config.generation.scheduler)
    probe = CrossAttentionProbe.from_settings(config.capture)
    prompts = prompt_table(config, labelling_tokenizer(pipe))
    specs = {entry.id: _spec(entry) for entry in config.personalized}
    store_path = Path(store_path)
    done, store_bytes = _stored(store_path)
    batches = _plan(config, list(prompts["prompt_id"]), [BASE_ID, *specs])
    tokens = dict(zip(prompts["prompt_id"], (len(t) for t in prompts["tokens"]), strict=True))
    calibration = calibrate(
        pipe, config, probe, prompts, batches[0].items, [specs[m] for m in list(specs)[:1]], records_per_part
    )
    plans = []
    for rank in range(world):
        mine = shard(batches, rank, world)
        todo = [(w.model_id, p, s) for w in mine for p, s in w.items if (w.model_id, p, s) not in done]
        todo_batches = sum(any((w.model_id, p, s) not in done for p, s in w.items) for w in mine)
        switches = len({m for m, _, _ in todo if m != BASE_ID})
        parts = math.ceil(len(todo) / records_per_part)
        size = (
            sum(tokens[p] for _, p, _ in todo) * calibration.bytes_per_token_row
            + len(todo) * calibration.bytes_per_image
            + parts * (calibration.bytes_per_part + calibration.manifest_bytes_per_part)
        )
        if not store_path.exists() and rank == 0:
            size += calibration.fixed_bytes
        seconds = todo_batches * calibration.seconds_per_batch + switches * calibration.seconds_per_switch
        plans.append(
            ProcessPlan(
                rank,
                sum(len(w.items) for w in mine),
                sum(len(w.items) for w in mine) - len(todo),
                len(todo),
                todo_batches,
                switches,
                int(size),
                seconds,
            )
        )
    return StudyPlan(store_path, 1 + len(specs), len(prompts), len(config.seeds), plans, calibration, store_bytes)


def _stored(path: Path) -> tuple[set[tuple[str, str, int]], int]:
    """Record keys already in the store and its size on disk (empty and 0 when it does not exist)."""
    if not path.exists():
        return set(), 0
    from cemaps.store import open_store

    with open_store(path) as store:
        keys = {(r.model_id, r.prompt_id, int(r.seed)) for r in store.records.itertuples()}
        return keys, store.size_on_disk()


def calibrate(
    pipe: Any,
    config: StudyConfig,
    probe: Any,
    prompts: Any,
    items: Sequence[tuple[str, int]],
    specs: Sequence[Any],
    records_per_part: int,
) -> Calibration:
    """Times one batch (``items``: (prompt_id, seed) pairs) and one model switch; measures stored bytes.

    The batch is written to a scratch store, one record per part, so that array bytes,
    image bytes and part overhead can be told apart.
    """
    from cemaps.hooks import capture
    from cemaps.models.personalized import BaseWeights, applied
    from cemaps.store import StoreWriter, open_store
    from cemaps.study.runner import _generate

    texts = dict(zip(prompts["prompt_id"], prompts["text"], strict=True))
    token_rows = dict(zip(prompts["prompt_id"], (len(t) for t in prompts["tokens"]), strict=True))
    batch_texts = [texts[p] for p, _ in items]
    seeds = [s for _, s in items]
    warm_up = dataclasses.replace(config, generation=dataclasses.replace(config.generation, steps=1))
    with capture(pipe, [probe]):  # first calls pay one-time costs (allocations, kernel selection, hook set-up)
        _generate(pipe, warm_up, batch_texts, seeds)
    with tempfile.TemporaryDirectory(prefix="cemaps-plan-") as scratch:
        path = Path(scratch) / "calibration.h5"
        start = time.perf_counter()
        with capture(pipe, [probe]) as run:
            images = _generate(pipe, config, batch_texts, seeds)
        with StoreWriter(
            path, settings={"calibration": True}, base={"model_id": "calibration"}, records_per_part=1
        ) as writer:
            batch_prompts = {p for p, _ in items}
            writer.add_prompts([row for row in prompts.to_dict("records") if row["prompt_id"] in batch_prompts])
            for (prompt_id, seed), arrays, image in zip(items, run.records(), images, strict=True):
                writer.write_record(
                    "base",
                    prompt_id,
                    seed,
                    arrays={k: v.values for k, v in arrays.items()},
                    axes={k: v.axes for k, v in arrays.items()},
                    image=image if config.images else None,
                )
        seconds_per_batch = time.perf_counter() - start
        array_bytes, image_bytes, part_bytes = _part_sizes(path)
        with open_store(path) as store:
            meta_bytes = store.size_on_disk() - sum(part_bytes) - path.stat().st_size
        manifest_bytes = path.stat().st_size
    switch_seconds = 0.0
    if specs:
        base = BaseWeights(pipe)
        start = time.perf_counter()
        with applied(pipe, specs[0], base):
            pass
        switch_seconds = time.perf_counter() - start
    n = len(items)
    return Calibration(
        device=str(pipe.device),
        batch_images=n,
        seconds_per_batch=seconds_per_batch,
        seconds_per_switch=switch_seconds,
        bytes_per_token_row=sum(array_bytes) / sum(token_rows[p] for p, _ in items),
        bytes_per_image=sum(image_bytes) / n,
        bytes_per_part=float(
            np.mean([p - a - i for p, a, i in zip(part_bytes, array_bytes, image_bytes, strict=True)])
        ),
        manifest_bytes_per_part=manifest_bytes / n,
        fixed_bytes=float(meta_bytes),
    )


def _part_sizes(path: Path) -> tuple[list[int], list[int], list[int]]:
    """Per sealed part of a scratch store: compressed array bytes, image bytes, file size."""
    import h5py

    from cemaps.store.layout import parts_dir, sealed_files

    arrays, images, files = [], [], []
    for part in sealed_files(parts_dir(path), "part"):
        stored: list[int] = []
        with h5py.File(part, "r") as handle:
            handle["arrays"].visititems(
                lambda _, obj, sizes=stored: (
                    sizes.append(obj.id.get_storage_size()) if isinstance(obj, h5py.Dataset) else None
                )
            )
            images.append(int(sum(len(v) for v in handle["images"][()])))
        arrays.append(sum(stored))
        files.append(part.stat().st_size)
    return arrays, images, files
