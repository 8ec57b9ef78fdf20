"""The toy world's entries in the core's registries, added by :func:`register`.

The core never imports the toy world: it reads four small tables, and this module fills them.

- a pipeline alias (:mod:`cemaps.models.aliases`): ``"cemaps/toyworld"`` / ``"toyworld"``,
  the shipped diffusers folder;
- a CLIP scorer provider (:mod:`cemaps.analysis.extensions`): stores whose base is the toy
  world are scored by its trained CLIP;
- result tables (:mod:`cemaps.analysis.extensions`): ``toyworld_localisation.csv`` and
  ``toyworld_subjects.csv`` (:func:`cemaps.toyworld.ground_truth.analyse_toy_world`);
- a report section (:mod:`cemaps.report.sections`): the banner and "Toy-world ground truth".

Every entry loads its heavy parts on use, so registering costs no torch import. The CLI,
the demo and the toy-world benchmarks call :func:`register`; a notebook calls it once
before ``cemaps.load_pipeline("cemaps/toyworld")``.

Example:
    >>> register()
    >>> from cemaps.models.aliases import pipeline_alias
    >>> pipeline_alias("toyworld").model_id
    'cemaps/toyworld'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cemaps.analysis.extensions import (
    ResultTables,
    ScorerProvider,
    register_result_tables,
    register_scorer_provider,
)
from cemaps.models.aliases import PipelineAlias, register_pipeline_alias
from cemaps.report.sections import ReportSection, register_report_section
from cemaps.toyworld.assets import TOYWORLD_ALIASES, TOYWORLD_MODEL_ID


def _pipeline() -> Any:
    from cemaps.models.loading import load_pipeline
    from cemaps.toyworld.assets import shipped_pipeline_folder

    pipe = load_pipeline(str(shipped_pipeline_folder()), device="cpu", dtype="float32")
    pipe.register_to_config(_name_or_path=TOYWORLD_MODEL_ID)
    return pipe


def _scorer() -> Any:
    from cemaps.toyworld.scorer import toy_clip_scorer

    return toy_clip_scorer()


def _ground_truth(store_path: Path, out: Path) -> dict[str, str]:
    from cemaps.toyworld.ground_truth import analyse_toy_world

    return analyse_toy_world(store_path, out)


def _banner(results: Any) -> str:
    from cemaps.toyworld.report_section import toy_world_banner

    return toy_world_banner(results)


def _section(results: Any) -> str:
    from cemaps.toyworld.report_section import toy_world_section

    return toy_world_section(results)


PIPELINE = PipelineAlias(TOYWORLD_MODEL_ID, TOYWORLD_ALIASES, _pipeline, "the trained toy world shipped in the package")
SCORER = ScorerProvider(
    TOYWORLD_ALIASES,
    _scorer,
    "the toy world's trained CLIP (cemaps-toyclip, shipped in cemaps/toyworld/weights/clip)",
    "the toy world's trained CLIP (the store's base is the toy world)",
)
GROUND_TRUTH = ResultTables("toyworld", "toy-world ground truth", _ground_truth)
SECTION = ReportSection("toy_world", _banner, _section)


def register() -> None:
    """Adds the toy world's alias, scorer, result tables and report section; a second call changes nothing.

    Raises:
        ConfigError: another entry already holds one of the toy world's names.
    """
    register_pipeline_alias(PIPELINE)
    register_scorer_provider(SCORER)
    register_result_tables(GROUND_TRUTH)
    register_report_section(SECTION)
