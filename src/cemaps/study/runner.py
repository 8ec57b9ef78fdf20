"""The study runner: the one place where models/, probes/ and store/ meet.

For the base model and then each personalized model, it generates every
(prompt, seed) of the study with the same settings and the same seeds, captures
cross-attention maps while it generates, and appends the records to the store.
Records already in the store are skipped, so an interrupted run resumes where it
stopped, and several processes (one per GPU under ``torchrun`` or ``accelerate
launch``) share the work: each takes a disjoint contiguous block of the batches
(:func:`cemaps.study.distributed.shard`) and writes its own part files.

Example:
    >>> from cemaps.study.config import StudyConfig, GenerationSettings
    >>> import tempfile, pathlib
    >>> config = StudyConfig(prompts=["a red mug", "freedom"], seeds=(0,),
    ...                      generation=GenerationSettings(steps=2))
    >>> store = pathlib.Path(tempfile.mkdtemp()) / "study.h5"
    >>> run_study(config, store, progress=False).written
    2
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cemaps.errors import StoreError
from cemaps.hooks import capture
from cemaps.models.families import family_of, labelling_tokenizer
from cemaps.models.hashing import source_sha256
from cemaps.models.loading import weights_fingerprint
from cemaps.models.personalized import BaseWeights, PersonalizedSpec, applied, check_all
from cemaps.models.weight_deltas import weight_delta_for
from cemaps.probes import CrossAttentionProbe
from cemaps.store import StoreWriter
from cemaps.store.manifest import read_header
from cemaps.store.provenance import default_provenance
from cemaps.study.config import BASE_ID, StudyConfig
from cemaps.study.distributed import process_info, shard
from cemaps.study.prompt_sets import in_context_store_path
from cemaps.study.sets import InContextSet, UnrelatedSet
from cemaps.study.steps import Work, base_pipeline, batch_plan, generate_images, personalized_spec


@dataclass(frozen=True)
class StudyResult:
    """What a run did: records written now, records found already done, the store path."""

    store: Path
    written: int
    skipped: int
    total: int
    in_context: StudyResult | None = None  # the in-context set's run, when the study has both sets


def run_study(
    config: StudyConfig,
    store_path: str | Path,
    *,
    progress: bool = True,
    records_per_part: int = 16,
    pipe: Any = None,
    probes: Sequence[Any] = (),
    set_aside_damaged: bool = False,
) -> StudyResult:
    """Generate and capture every (model, prompt, seed) of ``config`` into ``store_path``.

    Runs each set of ``config.prompt_sets`` with :func:`run_prompt_set`: the unrelated set into
    ``store_path``, the in-context set into its own store beside it
    (:func:`cemaps.study.prompt_sets.in_context_store_path`). Every set is built, and its input
    checked, before the first image.

    Args:
        config: the study.
        store_path: the store's manifest file (``.h5``); created or resumed.
        progress: show a rich progress bar with records/s and ETA.
        records_per_part: records per part file (a crash loses at most this many per process).
        pipe: an already loaded base pipeline (otherwise ``config.base`` is loaded).
        probes: user probes captured beside the cross-attention probe and stored under
            their ``name`` (see :class:`cemaps.Probe`).
        set_aside_damaged: verify the store first and move damaged part files aside, so that their
            records are made again (see :class:`cemaps.store.StoreWriter`).

    Returns:
        The unrelated set's result, carrying the in-context set's as ``in_context``; the in-context
        set's result when the study has only that set.
    """
    pipe = base_pipeline(config, process_info(), pipe)
    store_path = Path(store_path)
    sets = {name: InContextSet(config) if name == "in_context" else UnrelatedSet(config) for name in config.prompt_sets}
    results = {
        name: run_prompt_set(
            config,
            in_context_store_path(store_path) if name == "in_context" else store_path,
            prompt_set,
            pipe=pipe,
            progress=progress,
            records_per_part=records_per_part,
            probes=probes,
            set_aside_damaged=set_aside_damaged,
        )
        for name, prompt_set in sets.items()
    }
    if "unrelated" not in results:
        return results["in_context"]
    return dataclasses.replace(results["unrelated"], in_context=results.get("in_context"))


def run_prompt_set(
    config: StudyConfig,
    store_path: str | Path,
    prompt_set: UnrelatedSet | InContextSet,
    *,
    pipe: Any,
    progress: bool = True,
    records_per_part: int = 16,
    probes: Sequence[Any] = (),
    set_aside_damaged: bool = False,
) -> StudyResult:
    """Generate and capture one prompt set of ``config`` into ``store_path``, resuming what is stored.

    Args:
        config: the study.
        store_path: the store's manifest file (``.h5``); created or resumed.
        prompt_set: the set: which prompts each model generates, and with which text.
        pipe: the base pipeline, as :func:`cemaps.study.steps.base_pipeline` prepares it.
        progress: show a rich progress bar with records/s and ETA.
        records_per_part: records per part file (a crash loses at most this many per process).
        probes: user probes captured beside the cross-attention probe.
        set_aside_damaged: move damaged part files aside first, so that their records are made again.

    Raises:
        ConfigError, ModelLoadError: a personalized model cannot be read or does not fit the base
            (all are checked before the store is touched).
    """
    process = process_info()
    probe = CrossAttentionProbe.from_settings(config.capture)
    family = family_of(pipe)
    layers = probe.layer_names(family.denoiser_of(pipe))
    prompts = prompt_set.table(labelling_tokenizer(pipe))
    specs = {entry.id: personalized_spec(entry) for entry in config.personalized}
    # Every personalized model is read and checked before the store is touched or an image generated.
    check_all(pipe, specs.values())
    settings = {
        "generation": config.generation.to_dict(),
        "capture": {**config.capture.to_dict(), **_captured_axes(pipe, config, probe), "layers_selected": layers},
        "images": config.images,
        "seeds": list(config.seeds),
        "probes": [probe.name, *(p.name for p in probes)],
        **prompt_set.settings,
    }
    base_identity = {
        "model_id": config.base,
        "weights_sha256": weights_fingerprint(family.denoiser_of(pipe)),
        # one digest per text encoder of the family ("text_encoder_sha256", "text_encoder_2_sha256", ...)
        **{f"{encoder}_sha256": weights_fingerprint(getattr(pipe, encoder)) for encoder in family.encoders},
    }
    provenance = {
        **default_provenance(),
        "command": " ".join(sys.argv),
        "config_source": config.source,
        "device": str(pipe.device),
        "dtype": str(family.denoiser_of(pipe).dtype),
        "model_family": family.key,
    }
    store_path = Path(store_path)
    settings["capture"]["layers"] = _stored_layer_pattern(store_path, settings["capture"])
    writer = StoreWriter(
        store_path,
        settings=settings,
        base=base_identity,
        provenance=provenance,
        writer_tag=process.writer_tag,
        records_per_part=records_per_part,
        set_aside_damaged=set_aside_damaged,
    )
    with writer:
        writer.add_prompts(prompts.to_dict("records"))
        model_rows = [
            {
                "model_id": BASE_ID,
                "method": "base",
                "subject_id": None,
                "source": config.base,
                "sha256": base_identity["weights_sha256"],
                "token": None,
                "scale": None,
            }
        ]
        for entry in config.personalized:
            source = Path(entry.path)
            model_rows.append(
                {
                    "model_id": entry.id,
                    "method": entry.method,
                    "subject_id": entry.subject,
                    "source": str(source),
                    "sha256": source_sha256(source),
                    "token": entry.token,
                    "scale": entry.scale,
                }
            )
        writer.add_models(model_rows)
        done = writer.completed()
        deltas_done = _models_with_weight_deltas(store_path)
        model_ids = [BASE_ID, *specs]
        plan = [w for m in model_ids for w in batch_plan(config, prompt_set.prompt_ids(m), [m])]
        mine = shard(plan, process.rank, process.world_size)
        total = sum(len(w.items) for w in mine)
        todo = [w for w in mine if any((w.model_id, p, s) not in done for p, s in w.items)]
        pending = sum(sum((w.model_id, p, s) not in done for p, s in w.items) for w in todo)
        written = 0
        # One CPU copy of the base weights, taken once: DreamBooth restores and every weight delta use it.
        base_weights = BaseWeights(pipe, family.swappable_components) if specs else None
        with _progress(progress, pending) as advance:
            for model_id, works in _by_model(todo):
                if model_id != BASE_ID and model_id not in deltas_done and prompt_set.weight_deltas:
                    _write_weight_deltas(writer, pipe, specs[model_id], base_weights)
                with ExitStack() as stack:
                    if model_id != BASE_ID:
                        stack.enter_context(applied(pipe, specs[model_id], base_weights))
                    prompt_set.record_texts(writer, pipe, model_id)
                    for work in works:
                        prompt_ids = [p for p, _ in work.items]
                        seeds = [s for _, s in work.items]
                        with capture(pipe, [probe, *probes]) as run:
                            images = generate_images(
                                pipe, config, [prompt_set.text(model_id, p) for p in prompt_ids], seeds
                            )
                        for (prompt_id, seed), arrays, image in zip(work.items, run.records(), images, strict=False):
                            if (model_id, prompt_id, seed) in done:
                                continue
                            writer.write_record(
                                model_id,
                                prompt_id,
                                seed,
                                arrays={k: v.values for k, v in arrays.items()},
                                axes={k: v.axes for k, v in arrays.items()},
                                image=image if config.images else None,
                            )
                            written += 1
                            advance(model_id)
    return StudyResult(store=store_path, written=written, skipped=total - pending, total=total)


def _stored_layer_pattern(store_path: Path, capture_settings: dict) -> Any:
    """The ``layers`` pattern to record: the stored store's when it selected the same layers.

    The default pattern changed from ``"*attn2"`` to ``"all"`` (DiT support); on a UNet both select
    every ``attn2``. A store is resumable when the *selected layers* are equal, so a pattern that
    selects what the stored one selected is recorded as the stored one; a different selection is
    still refused by the store (:func:`cemaps.store.manifest.check_compatible`).
    """
    if not store_path.is_file():
        return capture_settings["layers"]
    try:
        stored = read_header(store_path).settings.get("capture", {})
    except StoreError:
        return capture_settings["layers"]  # the writer names what is wrong with the store
    if isinstance(stored, dict) and stored.get("layers_selected") == list(capture_settings["layers_selected"]):
        return stored.get("layers", capture_settings["layers"])
    return capture_settings["layers"]


def _captured_axes(pipe: Any, config: StudyConfig, probe: CrossAttentionProbe) -> dict[str, Any]:
    """The labels of the stored step and half axes, known before generating anything."""
    from cemaps.hooks import Generation, selected_steps

    scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(config.generation.steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    steps = selected_steps(config.capture.timesteps, len(timesteps))
    # a guidance-distilled family (Flux) takes the scale as an input: its batch has no uncond half
    guidance = config.generation.guidance_scale > 1 and family_of(pipe).guidance != "embedded_scale"
    halves = Generation(0, 1, guidance, (1, 1), len(timesteps)).halves
    return {
        "step_indices": list(steps),
        "timesteps_captured": [timesteps[i] for i in steps],
        "half_labels": list(probe.kept_halves(halves)),
    }


def _write_weight_deltas(writer: StoreWriter, pipe: Any, spec: PersonalizedSpec, base: BaseWeights | None) -> None:
    """Per-parameter weight deltas of one personalized model (an empty table is not written)."""
    table_name = "textual_inversion" if spec.method == "textual_inversion" else "weight_deltas"
    base_state = (base or BaseWeights(pipe, family_of(pipe).swappable_components)).state_dict()
    table = weight_delta_for(pipe, spec, base_state)
    if not table.empty:
        writer.write_table(table_name, _json_friendly(table))


def _models_with_weight_deltas(path: Path) -> set[str]:
    """Models whose weight deltas an earlier (interrupted) run already stored."""
    from cemaps.errors import StoreError
    from cemaps.store import open_store

    if not path.exists():
        return set()
    found: set[str] = set()
    with open_store(path) as store:
        for name in ("weight_deltas", "textual_inversion"):
            try:
                found |= set(store.table(name)["model_id"])
            except StoreError:  # no such table yet
                pass
    return found


def _json_friendly(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in table.columns:
        if table[column].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            table[column] = table[column].map(lambda v: [float(x) if not isinstance(x, str) else x for x in v])
    return table


def _by_model(works: list[Work]) -> Iterator[tuple[str, list[Work]]]:
    current: list[Work] = []
    for work in works:
        if current and current[0].model_id != work.model_id:
            yield current[0].model_id, current
            current = []
        current.append(work)
    if current:
        yield current[0].model_id, current


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield lambda model_id: None
        return
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class RateColumn(TextColumn):
        def render(self, task):  # records per second, measured by rich over the recent window
            speed = task.finished_speed or task.speed
            return super().render(task) if speed is None else f"{speed:.2f} rec/s"

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn("- rec/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("capture", total=total)
        yield lambda model_id: bar.update(task, advance=1, description=f"capture {escape(model_id)}")  # ids are literal
