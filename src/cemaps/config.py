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

import collections.abc
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cemaps.errors import ConfigError
from cemaps.probes.cross_attention import CrossAttentionSettings

SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}
METHODS = ("lora", "textual_inversion", "dreambooth")
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
        if not isinstance(self.guidance_scale, (int, float)) or isinstance(self.guidance_scale, bool):
            raise ConfigError(f"generation.guidance_scale={self.guidance_scale!r}: expected a number")
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
        if self.method not in METHODS:
            raise ConfigError(f"personalized '{self.id}': method={self.method!r}, expected one of {', '.join(METHODS)}")
        if self.method == "textual_inversion" and not self.token:
            raise ConfigError(f"personalized '{self.id}': textual_inversion needs a token, e.g. token: \"<sks>\"")
        if self.id == "base":
            raise ConfigError("personalized id 'base' is reserved for the base model")
        _check_types(self, f"personalized '{self.id}': ")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: base model, prompts, seeds, generation and capture settings, personalized models."""

    base: str = "cemaps/tiny-sd"
    base_config: str | None = None
    prompts: Any = "demo24"
    seeds: tuple[int, ...] = (0,)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    capture: CrossAttentionSettings = field(default_factory=CrossAttentionSettings)
    images: bool = True
    personalized: tuple[PersonalizedEntry, ...] = ()
    store: str | None = None
    device: str | None = None
    dtype: str | None = None
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError(f"{self.source}: seeds is empty; give at least one integer seed")
        for seed in self.seeds:
            _require_int("seeds", seed, minimum=0, source=self.source)
        ids = [p.id for p in self.personalized]
        duplicated = {i for i in ids if ids.count(i) > 1}
        if duplicated:
            raise ConfigError(f"{self.source}: personalized id {sorted(duplicated)[0]!r} is listed twice")
        _check_types(self, f"{self.source}: ")
        if isinstance(self.prompts, (list, tuple)) and not all(isinstance(p, str) for p in self.prompts):
            bad = next(p for p in self.prompts if not isinstance(p, str))
            raise ConfigError(f"{self.source}: prompts: inline prompt {bad!r} is not a string; quote it")
        if not isinstance(self.prompts, (str, list, tuple)):
            raise ConfigError(f"{self.source}: prompts={self.prompts!r}: expected suite200, demo24, a CSV/YAML file "
                              "or a list of strings")
        if self.dtype is not None and self.dtype.lower() not in DTYPES:
            raise ConfigError(f"{self.source}: dtype={self.dtype!r}: expected one of float16, bfloat16, float32")
        if self.device is not None:
            check_device(self.device, f"{self.source}: device")

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
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
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
    values: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("generation", "capture", "personalized", "seeds")}
    if "seeds" in raw:
        seeds = raw["seeds"]
        seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if not isinstance(seeds, list):
            raise ConfigError(f"{source}: seeds={seeds!r}: expected a list of non-negative integers")
        for seed in seeds:
            _require_int("seeds", seed, minimum=0, source=source)
        values["seeds"] = tuple(seeds)
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


def _section(raw: dict[str, Any], key: str, cls: type, source: str) -> Any:
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping of settings")
    _no_unknown(section, {f.name for f in dataclasses.fields(cls)}, source, f"{key}.")
    try:
        _check_mapping_types(cls, section, f"{key}.")
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


def check_device(device: Any, where: str) -> str:
    """Checks a device string against the devices this machine has, before any model is loaded.

    Args:
        device: e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        where: how the user gave it (``"--device"``, ``"study.yaml: device"``), named in the error.

    Raises:
        ConfigError: not a device name, or a device this machine does not have; the message
            lists the available ones.
    """
    import torch

    available = available_devices()
    listed = ", ".join(available)
    if not isinstance(device, str):
        raise ConfigError(f"{where}={device!r}: expected a device name; available here: {listed}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{where}={device!r}: not a device name; available here: {listed}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{where}={device!r}: this machine has no CUDA GPU that torch can use; available here: {listed}")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"{where}={device!r}: this machine has {count} CUDA GPU(s); available here: {listed}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{where}={device!r}: Apple MPS is not available here; available here: {listed}")
    elif parsed.type != "cpu":
        raise ConfigError(f"{where}={device!r}: cemaps runs on cpu, cuda or mps; available here: {listed}")
    return device


def available_devices() -> list[str]:
    """The device strings this machine accepts: ``cpu``, then ``cuda``/``cuda:N``, ``mps``."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available() and torch.cuda.device_count():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _resolve(value: str, root: Path | None) -> str:
    """A path from the config file, relative to the config's folder (``~`` expanded)."""
    path = Path(value).expanduser()
    return str(path if root is None or path.is_absolute() else root / path)


def _is_local_path(base: str, root: Path | None) -> bool:
    """Whether ``base:`` names a file or folder (resolved against ``root``) rather than a hub id or alias."""
    if base in ("cemaps/tiny-sd", "tiny"):
        return False
    path = Path(base).expanduser()
    if path.is_absolute() or (root is not None and (root / path).exists()):
        return True
    return (base.startswith((".", "~")) or base.count("/") > 1 or (os.altsep is not None and os.altsep in base)
            or path.suffix.lower() in (".safetensors", ".ckpt", ".bin", ".pt", ".pth"))


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {first.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _check_types(obj: Any, where: str) -> None:
    """Every field of a config dataclass has its annotated type (bool is not a number, "false" is not a bool)."""
    _check_mapping_types(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where)


def _check_mapping_types(cls: type, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key, Any)
        if not _matches(value, hint):
            raise ConfigError(f"{where}{key}={value!r}: expected {_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if _is_sequence(hint):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    return True  # callables and other Python-only values are not written in YAML


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return " or ".join(repr(arg) for arg in args)
    named = {bool: "true or false (unquoted)", int: "an integer", float: "a number", str: "a string",
             type(None): "null"}
    if hint in named:
        return named[hint]
    if _is_sequence(hint):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def _is_sequence(hint: Any) -> bool:
    """``tuple[int, ...]``, ``list[str]``, ``Sequence[int]`` (not ``str``)."""
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and origin is not str and issubclass(origin, collections.abc.Sequence)


def check_base_model(base: str, where: str) -> None:
    """Refuses, before loading, a base that is a pickle checkpoint or a personalization's weights.

    Only files on disk are looked at (a ``.safetensors`` file's header, not its tensors).

    Raises:
        ConfigError: ``base`` is a ``.ckpt/.bin/.pt/.pth`` file (the base has no pickle opt-in),
            or a ``.safetensors`` file holding LoRA or Textual Inversion weights.
    """
    path = Path(base).expanduser()
    if not path.is_file():
        return
    suffix = path.suffix.lower()
    if suffix in (".ckpt", ".bin", ".pt", ".pth"):
        raise ConfigError(f"{where} {base}: is a pickle-based checkpoint, which can run code when loaded; convert it "
                          "to .safetensors (pickle is read only for personalized models with `allow_pickle: true`)")
    if suffix != ".safetensors":
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError):
        return  # the loader reports an unreadable file
    lora = [k for k in keys if "lora" in k.lower()]
    if lora and len(lora) * 2 >= len(keys):
        raise ConfigError(f"{where} {base}: holds LoRA weights ({len(keys)} tensors, e.g. {lora[0]!r}), not a full "
                          "Stable Diffusion checkpoint; give the base model here and list the LoRA under "
                          "`personalized:` in study.yaml (method: lora)")
    if 0 < len(keys) <= 4 and not any("." in k for k in keys):
        raise ConfigError(f"{where} {base}: holds {len(keys)} embedding tensor(s) ({', '.join(map(repr, keys))}), "
                          "a Textual Inversion embedding rather than a Stable Diffusion checkpoint; give the base model "
                          "here and list the embedding under `personalized:` in study.yaml (method: textual_inversion)")
