"""Pipeline aliases: short names that :func:`cemaps.load_pipeline` builds without a path or hub id.

The core declares two aliases, the embedded random-weight tiny pipelines (``"cemaps/tiny-sd"`` /
``"tiny"``, and the tiny SDXL ``"cemaps/tiny-sdxl"`` / ``"tiny-sdxl"``). A bundled world adds its own with :func:`register_pipeline_alias` when it is
registered (the toy world: :func:`cemaps.toyworld.register`, which the CLI and the demo call);
nothing is registered when a module is imported, and the core never imports a world. This is
the pattern of timm's ``register_model`` and of diffusers' ``AutoPipelineForText2Image`` table:
an entry says what it is, the loader reads the table.

Example:
    >>> alias = pipeline_alias("tiny")
    >>> alias.model_id, sorted(alias.names)
    ('cemaps/tiny-sd', ['cemaps/tiny-sd', 'tiny'])
    >>> pipeline_alias("runwayml/stable-diffusion-v1-5") is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cemaps.errors import ConfigError

TINY_MODEL_ID = "cemaps/tiny-sd"
TINY_SDXL_MODEL_ID = "cemaps/tiny-sdxl"
# The tiny transformer (DiT) pipelines at diffusers' dummy sizes (cemaps.models.tiny_dit builds them).
TINY_DIT_MODEL_IDS = ("cemaps/tiny-sd3", "cemaps/tiny-sd3.5", "cemaps/tiny-flux", "cemaps/tiny-pixart-sigma")


@dataclass(frozen=True)
class PipelineAlias:
    """One model that :func:`cemaps.load_pipeline` builds by name.

    Attributes:
        model_id: the canonical id, recorded as the pipeline's ``name_or_path`` and as a store's base.
        names: every name that selects it (``model_id`` included).
        load: builds the pipeline, CPU float32, no safety checker; the loader then moves and casts it.
            None for the core's own entries, the embedded tiny pipelines, which :func:`cemaps.load_pipeline`
            builds itself (so this table stays free of torch and diffusers imports).
        description: what it is, for messages.
    """

    model_id: str
    names: frozenset[str]
    load: Callable[[], Any] | None
    description: str


TINY = PipelineAlias(
    TINY_MODEL_ID, frozenset({TINY_MODEL_ID, "tiny"}), None, "the embedded random-weight tiny pipeline"
)
TINY_SDXL = PipelineAlias(
    TINY_SDXL_MODEL_ID,
    frozenset({TINY_SDXL_MODEL_ID, "tiny-sdxl"}),
    None,
    "the embedded random-weight tiny SDXL pipeline (diffusers' dummy sizes)",
)
TINY_DITS = tuple(
    PipelineAlias(model_id, frozenset({model_id}), None, f"the embedded random-weight {model_id.split('tiny-')[1]}")
    for model_id in TINY_DIT_MODEL_IDS
)
_ALIASES: dict[str, PipelineAlias] = {
    **dict.fromkeys(TINY.names, TINY),
    **dict.fromkeys(TINY_SDXL.names, TINY_SDXL),
    **{alias.model_id: alias for alias in TINY_DITS},
}


def register_pipeline_alias(alias: PipelineAlias) -> None:
    """Adds ``alias`` under each of its names; registering the same alias again changes nothing.

    Raises:
        ConfigError: one of its names already selects another alias.
    """
    if alias.model_id not in alias.names:
        raise ConfigError(f"pipeline alias {alias.model_id!r}: names {sorted(alias.names)} must include the model_id")
    for name in alias.names:
        taken = _ALIASES.get(name)
        if taken is not None and taken != alias:
            raise ConfigError(f"pipeline alias name {name!r} is taken by {taken.model_id!r}; expected a new name")
    _ALIASES.update(dict.fromkeys(alias.names, alias))


def pipeline_alias(name: str) -> PipelineAlias | None:
    """The alias that ``name`` selects, or None (then ``name`` is a path or a hub id)."""
    return _ALIASES.get(name)


def alias_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_ALIASES)
