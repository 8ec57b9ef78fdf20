"""The study config (``study.yaml``): what to generate, from which models, and what to capture.

Example ``study.yaml``::

    base: cemaps/tiny-sd          # a diffusers folder, a cached hub id, or a .safetensors file
    prompts: demo24               # suite200 | demo24 | a CSV/YAML file | an inline list of strings
    seeds: [0, 1]
    generation: {steps: 20, guidance_scale: 7.5, height: 64, width: 64, scheduler: pndm, batch_size: 4}
    capture: {layers: "*attn2", timesteps: 5, heads: mean, tokens: prompt, spatial: 16,
              dtype: float16, halves: cond}
    personalized:
      - {id: lora-mug, method: lora, subject: object1, path: out/lora-mug}
      - {id: ti-face1, method: textual_inversion, subject: face1, path: out/ti-face1, token: "<sks-face1>"}
    prompt_sets: [unrelated, in_context]  # the suite above, and each subject in context (cemaps.study.prompt_sets)

Every key is checked: an unknown key, a duplicated key, a value of the wrong type
(``allow_pickle: "false"`` is a string, not a boolean), an unknown device, an empty or
malformed file is a :class:`~cemaps.errors.ConfigError` that names the file, the key
and, for YAML errors, the line.

Paths: every path in the file (``base``, ``base_config``, ``prompts``, ``store``,
``personalized[].path``) is relative to the folder that holds the config file, not to
the current directory. A ``base`` that is neither on disk there nor written as a path
(``./x``, ``a/b/c``, ``x.safetensors``) is a Hugging Face hub id.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cemaps.errors import ConfigError
from cemaps.models.aliases import TINY_MODEL_ID, pipeline_alias
from cemaps.models.methods import METHODS
from cemaps.probes.cross_attention import CrossAttentionSettings
from cemaps.study.config_checks import (
    StrictLoader,
    check_device,
    check_mapping_types,
    check_types,
)
from cemaps.study.prompt_sets import InContextSettings, check_prompt_sets, prompt_set_values
from cemaps.study.value_checks import check_model_id, check_number, check_seeds, check_text

BASE_ID = "base"  # the base model's model_id in a study's store (records, models table)
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}
DTYPES = ("float16", "fp16", "half", "bfloat16", "bf16", "float32", "fp32", "float")


@dataclass(frozen=True)
class GenerationSettings:
    """How every image of the study is generated (identical for base and personalized models)."""

    steps: int = 20
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    negative_prompt: str = ""
    batch_size: int = 4

    def __post_init__(self) -> None:
        _require_int("generation.steps", self.steps, minimum=1)
        _require_int("generation.batch_size", self.batch_size, minimum=1)
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None:
                _require_int(f"generation.{key}", value, minimum=8)
                if value % 8:
                    raise ConfigError(f"generation.{key}={value}: expected a multiple of 8 (the VAE downsamples by 8)")
        check_number(self.guidance_scale, "generation.guidance_scale", minimum=0)
        check_text(self.negative_prompt, "generation.negative_prompt")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ConfigError(f"generation.scheduler={self.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PersonalizedEntry:
    """One personalized model of the study, as listed under ``personalized:``."""

    id: str
    method: str
    path: str
    subject: str | None = None
    token: str | None = None
    scale: float = 1.0
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        check_model_id(self.id, "personalized id")
        if self.method not in METHODS:
            raise ConfigError(f"personalized '{self.id}': method={self.method!r}, expected one of {', '.join(METHODS)}")
        if self.method == "textual_inversion" and not self.token:
            raise ConfigError(f"personalized '{self.id}': textual_inversion needs a token, e.g. token: \"<sks>\"")
        if self.id == BASE_ID:
            raise ConfigError(f"personalized id '{BASE_ID}' is reserved for the base model")
        check_types(self, f"personalized '{self.id}': ")
        check_number(self.scale, f"personalized '{self.id}': scale")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: base model, prompts, seeds, generation and capture settings, personalized models."""

    base: str = TINY_MODEL_ID
    base_config: str | None = None
    prompts: Any = "demo24"
    seeds: tuple[int, ...] = (0,)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    capture: CrossAttentionSettings = field(default_factory=CrossAttentionSettings)
    images: bool = True
    personalized: tuple[PersonalizedEntry, ...] = ()
    prompt_sets: tuple[str, ...] = ("unrelated",)
    in_context: InContextSettings = field(default_factory=InContextSettings)
    store: str | None = None
    device: str | None = None
    dtype: str | None = None
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError(f"{self.source}: seeds is empty; give at least one integer seed")
        check_seeds(self.seeds, f"{self.source}: seeds")
        ids = [p.id for p in self.personalized]
        duplicated = {i for i in ids if ids.count(i) > 1}
        if duplicated:
            raise ConfigError(f"{self.source}: personalized id {sorted(duplicated)[0]!r} is listed twice")
        check_types(self, f"{self.source}: ")
        if isinstance(self.prompts, (list, tuple)) and not all(isinstance(p, str) for p in self.prompts):
            bad = next(p for p in self.prompts if not isinstance(p, str))
            raise ConfigError(f"{self.source}: prompts: inline prompt {bad!r} is not a string; quote it")
        if isinstance(self.prompts, (list, tuple)):
            for index, text in enumerate(self.prompts):
                check_text(text, f"{self.source}: prompts[{index}]")
        elif isinstance(self.prompts, str) and self.prompts.endswith((".csv", ".yaml", ".yml")):
            _check_prompt_file(self.prompts, self.source)
        if not isinstance(self.prompts, (str, list, tuple)):
            raise ConfigError(
                f"{self.source}: prompts={self.prompts!r}: expected suite200, demo24, toyworld72, toyworld-demo24, a CSV/YAML file "
                "or a list of strings"
            )
        if self.dtype is not None and self.dtype.lower() not in DTYPES:
            raise ConfigError(f"{self.source}: dtype={self.dtype!r}: expected one of float16, bfloat16, float32")
        if self.device is not None:
            check_device(self.device, f"{self.source}: device")
        check_prompt_sets(self)

    def with_overrides(self, **overrides: Any) -> StudyConfig:
        """A copy with top-level fields replaced (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate ``study.yaml``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a study.yaml file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: malformed YAML ({exc.problem or exc.context})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; expected a study (base, prompts, seeds, personalized, ...)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    return config_from_dict(raw, source=str(path), root=path.parent)


def config_from_dict(raw: dict[str, Any], *, source: str = "<config>", root: Path | None = None) -> StudyConfig:
    """Build a :class:`StudyConfig` from a parsed mapping, naming any unknown key."""
    top = {f.name for f in dataclasses.fields(StudyConfig)} - {"source"}
    _no_unknown(raw, top, source, "")
    values: dict[str, Any] = {
        k: v
        for k, v in raw.items()
        if k not in ("generation", "capture", "personalized", "seeds", "prompt_sets", "in_context")
    }
    values.update(prompt_set_values(raw, source, root))
    if "seeds" in raw:
        seeds = raw["seeds"]
        seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if not isinstance(seeds, list):
            raise ConfigError(f"{source}: seeds={seeds!r}: expected a list of non-negative integers")
        values["seeds"] = check_seeds(seeds, f"{source}: seeds")
    values["generation"] = _section(raw, "generation", GenerationSettings, source)
    values["capture"] = _section(raw, "capture", CrossAttentionSettings, source)
    personalized = raw.get("personalized") or []
    if not isinstance(personalized, list):
        raise ConfigError(f"{source}: personalized: expected a list of models (id, method, path, ...)")
    entries = []
    for i, item in enumerate(personalized):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: personalized[{i}]: expected a mapping with id, method, path")
        _no_unknown(item, {f.name for f in dataclasses.fields(PersonalizedEntry)}, source, f"personalized[{i}].")
        missing = [k for k in ("id", "method", "path") if k not in item]
        if missing:
            raise ConfigError(f"{source}: personalized[{i}]: missing key {missing[0]!r}")
        item = dict(item, id=str(item["id"]))
        if not isinstance(item["path"], str):
            raise ConfigError(f"{source}: personalized[{i}].path={item['path']!r}: expected a string")
        item["path"] = _resolve(item["path"], root)
        try:
            entries.append(PersonalizedEntry(**item))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    values["personalized"] = tuple(entries)
    for key in ("base", "store", "base_config", "device", "dtype"):
        if key in values and values[key] is not None and not isinstance(values[key], str):
            raise ConfigError(f"{source}: {key}={values[key]!r}: expected a string")
    prompts = values.get("prompts")
    if isinstance(prompts, str) and prompts.endswith((".csv", ".yaml", ".yml")):
        values["prompts"] = _resolve(prompts, root)
    for key in ("store", "base_config"):
        if values.get(key) is not None:
            values[key] = _resolve(values[key], root)
    if isinstance(values.get("base"), str) and _is_local_path(values["base"], root):
        values["base"] = _resolve(values["base"], root)
    try:
        return StudyConfig(source=source, **values)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(source) else f"{source}: {message}") from None


def _check_prompt_file(path: str, source: str) -> None:
    """Every text of a prompt file is checked when the config is read (not mid-run); a missing or
    malformed file is reported by the runner, which reads it again."""
    from cemaps.data import load_prompts

    if not Path(path).is_file():
        return
    prompts = load_prompts(path)
    for prompt_id, text in zip(prompts["prompt_id"], prompts["text"], strict=True):
        check_text(text, f"{path}: prompt {prompt_id!r} text")


def _section(raw: dict[str, Any], key: str, cls: type, source: str) -> Any:
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping of settings")
    _no_unknown(section, {f.name for f in dataclasses.fields(cls)}, source, f"{key}.")
    try:
        check_mapping_types(cls, section, f"{key}.")
        return cls(**section)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _no_unknown(mapping: dict[str, Any], known: set[str], source: str, prefix: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'; expected one of {', '.join(sorted(known))}")


def _require_int(name: str, value: Any, *, minimum: int, source: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{name}: {value!r} is not an integer >= {minimum}")


def _resolve(value: str, root: Path | None) -> str:
    """A path from the config file, relative to the config's folder (``~`` expanded)."""
    path = Path(value).expanduser()
    return str(path if root is None or path.is_absolute() else root / path)


def _is_local_path(base: str, root: Path | None) -> bool:
    """Whether ``base:`` names a file or folder (resolved against ``root``) rather than a hub id or alias."""
    if pipeline_alias(base) is not None:
        return False
    path = Path(base).expanduser()
    if path.is_absolute() or (root is not None and (root / path).exists()):
        return True
    return (
        base.startswith((".", "~"))
        or base.count("/") > 1
        or (os.altsep is not None and os.altsep in base)
        or path.suffix.lower() in (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
    )
