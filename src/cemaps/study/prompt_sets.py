"""Which prompt sets a study runs (``prompt_sets:`` in study.yaml) and the in-context settings.

``unrelated`` is the prompt suite of ``prompts:`` (what personalization breaks
elsewhere); ``in_context`` is the subject placed in new contexts
(:mod:`cemaps.data.in_context`), captured into its own store beside the main one
(:func:`in_context_store_path`), so the unrelated analysis never sees its records.

Example ``study.yaml``::

    prompt_sets: [unrelated, in_context]
    in_context:
      prompts: in_context75            # or a CSV/YAML file of templates
      subjects: subjects15             # class words and kinds of the subjects
      subject_images: {face1: photos/face1}   # training images, for CLIP-I (optional)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cemaps.errors import ConfigError

PROMPT_SETS = ("unrelated", "in_context")
IN_CONTEXT_SUFFIX = ".in_context"


@dataclass(frozen=True)
class InContextSettings:
    """The ``in_context:`` section: templates, subject table, and each subject's training images.

    Attributes:
        prompts: ``"in_context75"`` or a CSV/YAML file of templates.
        subjects: ``"subjects15"`` or a CSV/YAML subject file (class words, kinds).
        subject_images: subject_id -> folder of that subject's training images (PNG/JPEG),
            used for subject fidelity (CLIP-I); subjects not listed get no CLIP-I.
    """

    prompts: str = "in_context75"
    subjects: str = "subjects15"
    subject_images: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("prompts", "subjects"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"in_context.{key}={value!r}: expected a list name or a file path")
        if not isinstance(self.subject_images, dict):
            raise ConfigError(
                f"in_context.subject_images={self.subject_images!r}: expected a mapping subject_id: folder"
            )
        for subject, folder in self.subject_images.items():
            if not isinstance(subject, str) or not isinstance(folder, str):
                raise ConfigError(f"in_context.subject_images.{subject}={folder!r}: expected a folder path string")
            if not Path(folder).is_dir():
                raise ConfigError(f"in_context.subject_images.{subject}: folder {folder!r} does not exist")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prompt_set_values(raw: dict[str, Any], source: str, root: Path | None) -> dict[str, Any]:
    """``prompt_sets`` and ``in_context`` of a parsed study.yaml as StudyConfig field values.

    Relative paths in ``in_context`` are resolved against ``root`` (the config's folder).

    Raises:
        ConfigError: naming the file and key: not a list, unknown or repeated set, an
            ``in_context:`` section without ``in_context`` in ``prompt_sets``, an unknown key.
    """
    values: dict[str, Any] = {}
    if "prompt_sets" in raw:
        sets = raw["prompt_sets"]
        sets = [sets] if isinstance(sets, str) else sets
        if not isinstance(sets, list):
            raise ConfigError(f"{source}: prompt_sets={sets!r}: expected a list drawn from {', '.join(PROMPT_SETS)}")
        values["prompt_sets"] = tuple(sets)
    section = raw.get("in_context")
    if section is not None:
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: in_context: expected a mapping with prompts, subjects, subject_images")
        known = {f.name for f in dataclasses.fields(InContextSettings)}
        for key in section:
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key 'in_context.{key}'; expected one of {', '.join(sorted(known))}"
                )
        section = dict(section)
        if root is not None:
            for key in ("prompts", "subjects"):
                value = section.get(key)
                if (
                    isinstance(value, str)
                    and value.endswith((".csv", ".yaml", ".yml"))
                    and not Path(value).is_absolute()
                ):
                    section[key] = str(root / value)
            images = section.get("subject_images")
            if isinstance(images, dict):
                section["subject_images"] = {
                    k: str(root / v) if isinstance(v, str) and not Path(v).is_absolute() else v
                    for k, v in images.items()
                }
        try:
            values["in_context"] = InContextSettings(**section)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if "in_context" not in values.get("prompt_sets", ()):
            raise ConfigError(
                f"{source}: an in_context: section is given but prompt_sets does not list "
                "in_context; add prompt_sets: [unrelated, in_context]"
            )
    return values


def check_prompt_sets(config: Any) -> None:
    """Validates ``config.prompt_sets`` against the rest of a StudyConfig (raises ConfigError)."""
    sets = config.prompt_sets
    if not isinstance(sets, tuple) or not sets:
        raise ConfigError(
            f"{config.source}: prompt_sets={sets!r}: expected a non-empty list drawn from {', '.join(PROMPT_SETS)}"
        )
    for name in sets:
        if name not in PROMPT_SETS:
            raise ConfigError(
                f"{config.source}: prompt_sets: unknown set {name!r}; expected one of {', '.join(PROMPT_SETS)}"
            )
    if len(set(sets)) != len(sets):
        raise ConfigError(f"{config.source}: prompt_sets={list(sets)} lists a set twice")
    if not isinstance(config.in_context, InContextSettings):
        raise ConfigError(f"{config.source}: in_context={config.in_context!r}: expected InContextSettings")
    if "in_context" in sets:
        for entry in config.personalized:
            if not entry.subject:
                raise ConfigError(
                    f"{config.source}: personalized '{entry.id}' has no subject; the in_context "
                    "prompt set places each model's subject in context, so give subject: <id>"
                )


def in_context_store_path(store_path: str | Path) -> Path:
    """The in-context set's store beside the main one: ``study.h5`` -> ``study.in_context.h5``."""
    path = Path(store_path)
    return path.with_name(f"{path.stem}{IN_CONTEXT_SUFFIX}{path.suffix or '.h5'}")
