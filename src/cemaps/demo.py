"""``cemaps demo``: a complete small study on the trained toy world (or the tiny model), end to end.

By default it loads the shipped toy-world pipeline (:mod:`cemaps.toyworld`) and its three toy
subjects, 24 toy prompts and toy CLIP; with ``world="tiny"`` it builds the random-weight tiny
SD pipeline and two synthetic subjects. It trains LoRA, Textual Inversion and
DreamBooth personalizations of each subject with cemaps' own trainers, captures the
24-prompt demo suite and the in-context prompt set (each subject in
``IN_CONTEXT_PER_KIND`` contexts) with two seeds for the base and every personalized
model, analyses the stores and writes the HTML report.

The tiny model has random weights: on it the demo validates the pipeline end to
end; its numbers are not evidence about Stable Diffusion v1.5 (nor are the toy world's).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from cemaps.data import load_subjects, synthetic_subject_images
from cemaps.errors import ConfigError
from cemaps.models import tiny_pipeline
from cemaps.models.aliases import TINY_MODEL_ID
from cemaps.models.methods import METADATA_NAME
from cemaps.models.train import TrainSettings
from cemaps.outputs import claim_output_folder
from cemaps.study.config_files import write_config
from cemaps.toyworld.assets import TOYWORLD_MODEL_ID as TOYWORLD_BASE

if TYPE_CHECKING:
    from cemaps.toyworld.demo_inputs import DemoInputs

DEMO_SUBJECTS = ("face1", "object1")
# The trainers' defaults follow diffusers' scripts (hundreds to thousands of steps); the demo
# trains briefly with larger learning rates so that each model visibly moves from the base.
DEMO_TRAINING = {
    "lora": TrainSettings(method="lora", steps=40, learning_rate=1e-3),
    "textual_inversion": TrainSettings(method="textual_inversion", steps=40, learning_rate=5e-2),
    "dreambooth": TrainSettings(method="dreambooth", steps=40, learning_rate=1e-4),
}
# On the toy world each method trains with the prompt the in-context set gives it ("a sks face"; Textual
# Inversion: its token alone). Settings from a sweep on the face subject (docs/toyworld.md): batch 8 made
# DreamBooth learn (batch 4: 0.46 of images show the face, batch 8: 0.88 at 150 steps); LoRA learns only on
# all attention projections (diffusers' script's targets; 600 steps: 0.67, cross-attention k/v: 0.12);
# Textual Inversion learned none of the subjects (the frozen base draws none of them from any description
# tried). The step counts are what the 5-minute budget on 2 cores leaves (docs/front-door.md: 4 min 21 s
# quiet with 2 workers); the demo's judge then finds the face in 8/8 in-context images for DreamBooth,
# 2/8 for LoRA, 0 for TI (at LoRA 200 / TI 100 / DreamBooth 150 steps it was 11/16, 5/16, 0/16).
TOY_DEMO_TRAINING = {
    "lora": TrainSettings(
        method="lora",
        steps=150,
        learning_rate=3e-3,
        batch_size=4,
        rank=8,
        lora_targets="attention",
        instance_template="a {token} {class_word}",
    ),
    "textual_inversion": TrainSettings(
        method="textual_inversion", steps=40, learning_rate=0.2, batch_size=4, instance_template="{token}"
    ),
    "dreambooth": TrainSettings(
        method="dreambooth", steps=100, learning_rate=5e-4, batch_size=8, instance_template="a {token} {class_word}"
    ),
}
IN_CONTEXT_PER_KIND = 4
# The toy world is judged at guidance 5 (benchmarks/toyworld_quality.py); at the demo's 10 steps its
# colour accuracy is 0.426 at guidance 5 and 0.352 at SD's usual 7.5 (README "The toy world").
TOY_GUIDANCE_SCALE = 5.0
SHORT = {"lora": "lora", "textual_inversion": "ti", "dreambooth": "db"}
RANDOM_WEIGHTS_NOTICE = (
    "The embedded tiny model has random weights: this demo validates the pipeline end to end; "
    "its numbers are not evidence about Stable Diffusion v1.5."
)
TOY_WORLD_NOTICE = (
    "The toy world is a small model trained here on rendered 32x32 scenes (README: 'The toy world'); "
    "its numbers are about the toy world, not Stable Diffusion v1.5."
)


def _toy_inputs(world: str, out: Path):
    """The toy world's demo inputs (written into ``out``), or None for the tiny model."""
    if world == "tiny":
        return None
    from cemaps.toyworld.demo_inputs import write_demo_inputs

    return write_demo_inputs(out)


def _in_context_subset(out: Path, source: str) -> Path:
    """The first ``IN_CONTEXT_PER_KIND`` templates of each subject kind of ``source``, written into ``out``.

    The full SD list (25 per kind) would more than double the demo's capture time.
    """
    from cemaps.data.in_context import load_in_context_prompts

    templates = load_in_context_prompts(source)
    path = out / "in_context_demo.csv"
    templates.groupby("kind", sort=False).head(IN_CONTEXT_PER_KIND).to_csv(path, index=False)
    return path


def _say_subject_check(results: Path, console: Console) -> None:
    """One line per personalization: how often the pixel judge finds its subject in its in-context images."""
    import pandas as pd

    from cemaps.toyworld.ground_truth import FILES

    path = results / FILES["subjects"]
    if not path.is_file():
        return
    for row in pd.read_csv(path).itertuples(index=False):
        verdict = "[green]learned[/]" if row.learned else "[yellow]not learned[/]"
        console.print(
            f"subject check {row.model_id}: {row.shows_subject}/{row.images} images show {row.subject_id} "
            f"(base {row.base_rate:.2f}) {verdict}",
            highlight=False,
        )


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its store, results and report, and how long each phase took.

    Attributes:
        seconds: wall time of the whole run.
        phases: ``(phase, seconds)`` in order: ``train <model id>`` for each model trained in this
            run (its own time, in finishing order; an earlier run's models are reused and not listed),
            ``training`` (the wall time of all of them, less than their sum with several workers),
            ``capture``, ``analyze``, ``report``.
        workers: the processes that trained and captured.
    """

    out: Path
    store: Path
    results: Path
    report: Path
    seconds: float
    phases: tuple[tuple[str, float], ...] = ()
    workers: int = 1

    def timing_line(self) -> str:
        """The phases in one line, e.g. ``training 151 s on 2 processes (db-toyface 24 s, ...), capture 80 s, ...``."""
        training = [(name.removeprefix("train "), s) for name, s in self.phases if name.startswith("train ")]
        wall = dict(self.phases).get("training", sum(s for _, s in training))
        parts = []
        if training:
            each = ", ".join(f"{name} {s:.0f} s" for name, s in training)
            where = f" on {self.workers} processes" if self.workers > 1 else ""
            parts.append(f"training {wall:.0f} s{where} ({each})")
        parts += [
            f"{name} {s:.0f} s" for name, s in self.phases if not name.startswith("train ") and name != "training"
        ]
        return ", ".join(parts)


@contextlib.contextmanager
def _timed(phases: list[tuple[str, float]], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    phases.append((name, time.perf_counter() - started))


def run_demo(
    out: str | Path = "demo-out",
    *,
    seeds: tuple[int, ...] = (0, 1),
    prompts: str = "demo24",
    steps: int = 10,
    progress: bool = True,
    console: Console | None = None,
    world: str = "toy",
    threads: int | None = None,
    workers: int = 1,
) -> DemoResult:
    """Train, capture, analyse and report a small study into ``out``; returns the paths and phase times.

    ``world="toy"`` (default) runs it on the trained toy world (:mod:`cemaps.toyworld`): its shipped
    pipeline, toy prompt suite (24), toy subjects and toy CLIP; ``world="tiny"`` on the random tiny model.
    ``threads``: torch's intra-op threads in each process (``torch.set_num_threads``); None keeps torch's
    setting (``OMP_NUM_THREADS`` or the number of cores). ``workers``: processes that train the models
    (one model each at a time) and then capture the study (one rank each,
    :mod:`cemaps.demo_workers`); 1 runs everything in this process. ``cemaps demo`` picks both
    with :func:`cemaps.cli.demo.demo_threads` and :func:`cemaps.demo_workers.default_workers`.
    The results do not depend on ``workers`` (each model trains from the same base with its own
    seed; each record is generated from its own seed).

    Raises:
        ConfigError: an unknown ``world``, ``threads < 1`` or ``workers < 1``, before anything is written.
    """
    from cemaps.analysis.pipeline import run_analysis
    from cemaps.demo_workers import DemoPool, TrainJob
    from cemaps.report import write_report
    from cemaps.toyworld import register

    if world not in ("tiny", "toy"):
        raise ConfigError(f"demo world {world!r} is unknown; expected 'tiny' or 'toy'")
    register()  # the toy world's alias, CLIP scorer, result tables and report section
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"demo threads={threads!r}: expected an integer >= 1")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"demo workers={workers!r}: expected an integer >= 1")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    console = console or Console(stderr=True)
    phases: list[tuple[str, float]] = []
    started = time.perf_counter()
    out = claim_output_folder(out, "demo")  # refuses a folder holding files the demo did not write
    toy = _toy_inputs(world, out)
    console.print(f"[bold yellow]note[/]: {RANDOM_WEIGHTS_NOTICE if toy is None else TOY_WORLD_NOTICE}")
    base = TINY_MODEL_ID if toy is None else TOYWORLD_BASE
    subjects = load_subjects(toy.subjects if toy else "subjects15").set_index("subject_id")
    personalized, subject_images, jobs = [], {}, []
    for subject_id in DEMO_SUBJECTS if toy is None else tuple(toy.subject_images):
        subject = subjects.loc[subject_id]
        images = synthetic_subject_images(subject_id, n=4, size=64) if toy is None else toy.subject_images[subject_id]
        # The training images, kept for subject fidelity (CLIP-I) of the in-context prompt set.
        subject_images[subject_id] = out / "subjects" / subject_id
        (out / "subjects" / subject_id).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            image.save(out / "subjects" / subject_id / f"{index}.png")
        for method, settings in (DEMO_TRAINING if toy is None else TOY_DEMO_TRAINING).items():
            model_id = f"{SHORT[method]}-{subject_id}"
            model_dir = out / "models" / model_id
            token = subject["token"] if method == "textual_inversion" else "sks"
            if not (model_dir / METADATA_NAME).exists():
                jobs.append(
                    TrainJob(model_id, method, tuple(images), token, subject["class_word"], model_dir, settings)
                )
            entry = {"id": model_id, "method": method, "subject": subject_id, "path": model_dir}
            if method == "textual_inversion":
                entry["token"] = token
            personalized.append(entry)
    config_path = write_demo_config(
        out,
        toy,
        personalized,
        subject_images,
        seeds=seeds,
        prompts=prompts,
        steps=steps,
    )
    store = out / "study.h5"
    pipe = tiny_pipeline(seed=0) if toy is None and workers == 1 else None
    with DemoPool(base, threads or 1, workers, pipe) as pool:
        if jobs:
            _train_models(pool, jobs, phases, progress, console)
        with _timed(phases, "capture"):
            pool.capture(config_path, store, progress)
    results = out / "results"
    with _timed(phases, "analyze"):
        run_analysis(
            store, results, progress=progress, console=console, **({} if toy is None else {"subjects": toy.subjects})
        )
    if toy is not None:
        _say_subject_check(results, console)
    with _timed(phases, "report"):
        report = write_report(results, out / "report")
    return DemoResult(
        out=out,
        store=store,
        results=results,
        report=Path(report),
        seconds=time.perf_counter() - started,
        phases=tuple(phases),
        workers=workers,
    )


def _train_models(pool, jobs, phases: list[tuple[str, float]], progress: bool, console: Console) -> None:
    """Trains ``jobs`` in ``pool``; appends ``train <id>`` (each model's own time) and ``training`` (wall)."""
    for job in jobs:
        console.print(f"train {job.model_id} ({job.method}, {job.settings.steps} steps)")
    if pool.workers > 1:
        console.print(f"training {len(jobs)} models on {min(pool.workers, len(jobs))} processes")

    def done(model_id: str, seconds: float) -> None:
        phases.append((f"train {model_id}", seconds))
        if pool.workers > 1:
            console.print(f"trained {model_id} in {seconds:.0f} s", highlight=False)

    with _timed(phases, "training"):
        pool.train(jobs, progress, done)


def write_demo_config(
    out: Path,
    toy: DemoInputs | None,
    personalized: list[dict],
    subject_images: dict[str, Path],
    *,
    seeds: tuple[int, ...] = (0, 1),
    prompts: str = "demo24",
    steps: int = 10,
) -> Path:
    """Writes the demo's ``out/study.yaml``; returns its path.

    Every file is named relative to ``out`` (:func:`cemaps.study.config_files.write_config`), so the
    config reads the same whatever the current directory and wherever ``out`` is (issue 25: a relative
    ``--out`` once doubled the prompt list's path). ``personalized`` entries and ``subject_images`` hold
    :class:`~pathlib.Path` values for their files.
    """
    raw = {
        "base": TINY_MODEL_ID if toy is None else TOYWORLD_BASE,
        "prompts": prompts if toy is None else toy.prompts,
        "seeds": list(seeds),
        "store": out / "study.h5",
        "generation": {
            "steps": steps,
            "guidance_scale": 7.5 if toy is None else TOY_GUIDANCE_SCALE,
            "height": 64 if toy is None else toy.size,
            "width": 64 if toy is None else toy.size,
            "batch_size": 8,
        },
        "capture": {"timesteps": 5},
        "personalized": personalized,
        "prompt_sets": ["unrelated", "in_context"],
        "in_context": {
            "prompts": _in_context_subset(out, "in_context75" if toy is None else "toyworld30"),
            "subjects": "subjects15" if toy is None else toy.subjects,
            "subject_images": subject_images,
        },
    }
    return write_config(out / "study.yaml", raw)
