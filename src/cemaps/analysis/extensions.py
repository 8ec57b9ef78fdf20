"""What a bundled world adds to an analysis: the CLIP scorer for its base model, and result tables.

``run_analysis`` reads two small tables here. A scorer provider names the base model ids
whose stores it scores (used when the caller gives no scorer and no CLIP weights); a
result-table writer adds files to the results folder from the store (``{}`` when the
store is not its kind). The core declares the tiny model's scorer; a bundled world adds
its own when it is registered (:func:`cemaps.toyworld.register`); nothing is registered
at import time and the core never imports a world.

Example:
    >>> provider = scorer_provider("cemaps/tiny-sd")
    >>> provider.description
    'tiny random-weight open_clip model (cemaps ClipScorer.tiny, seed 0)'
    >>> scorer_provider("my/sd15") is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cemaps.errors import ConfigError
from cemaps.models.aliases import TINY, TINY_DIT_MODEL_IDS, TINY_SDXL


@dataclass(frozen=True)
class ScorerProvider:
    """The CLIP scorer for the stores of some base models.

    Attributes:
        bases: the base model ids (a store's ``base["model_id"]``) it scores.
        build: makes the scorer (a :class:`cemaps.analysis.clip_scorer.ClipScorer`).
        description: the scorer's name in the results manifest.
        notice: what the console says when the analysis picks it.
    """

    bases: frozenset[str]
    build: Callable[[], Any]
    description: str
    notice: str


@dataclass(frozen=True)
class ResultTables:
    """Extra result files an analysis writes.

    Attributes:
        name: a short name (unique).
        status: what the console shows while it runs.
        write: ``write(store_path, out_dir)`` writes its files into ``out_dir`` and returns
            {results-manifest name: file name}; ``{}`` when the store is not its kind.
    """

    name: str
    status: str
    write: Callable[[Path, Path], dict[str, str]]


def _tiny_scorer() -> Any:
    from cemaps.analysis.clip_scorer import ClipScorer

    return ClipScorer.tiny(seed=0)


TINY_SCORER = ScorerProvider(
    TINY.names | TINY_SDXL.names | frozenset(TINY_DIT_MODEL_IDS),
    _tiny_scorer,
    "tiny random-weight open_clip model (cemaps ClipScorer.tiny, seed 0)",
    "the tiny random-weight open_clip model (the store's base is the embedded tiny model); "
    "pass --clip-weights for a real one",
)
_SCORERS: dict[str, ScorerProvider] = dict.fromkeys(TINY_SCORER.bases, TINY_SCORER)
_TABLES: dict[str, ResultTables] = {}


def register_scorer_provider(provider: ScorerProvider) -> None:
    """Adds ``provider`` for each of its bases; registering the same provider again changes nothing.

    Raises:
        ConfigError: one of its bases already has another provider.
    """
    for base in provider.bases:
        taken = _SCORERS.get(base)
        if taken is not None and taken != provider:
            raise ConfigError(f"CLIP scorer for base {base!r} is taken by {taken.description!r}; expected one")
    _SCORERS.update(dict.fromkeys(provider.bases, provider))


def scorer_provider(base_id: str | None) -> ScorerProvider | None:
    """The provider for stores whose base model is ``base_id``, or None."""
    return _SCORERS.get(base_id) if isinstance(base_id, str) else None


def register_result_tables(tables: ResultTables) -> None:
    """Adds a result-table writer; registering the same writer again changes nothing.

    Raises:
        ConfigError: its name is taken by another writer.
    """
    taken = _TABLES.get(tables.name)
    if taken is not None and taken != tables:
        raise ConfigError(f"result tables {tables.name!r} are registered already; expected a new name")
    _TABLES[tables.name] = tables


def result_tables() -> list[ResultTables]:
    """The registered writers, in registration order."""
    return list(_TABLES.values())
