"""Checks behind :mod:`cemaps.study.config`: strict YAML, value types, devices and base models.

Each check raises :class:`~cemaps.errors.ConfigError` with one line naming the value and
what was expected; the CLI uses the same functions for its flags (``--device``, ``--base``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from cemaps.errors import ConfigError


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
            raise ConfigError(
                f"{where}={device!r}: this machine has no CUDA GPU that torch can use; available here: {listed}"
            )
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


class StrictLoader(yaml.SafeLoader):
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
                    None,
                    None,
                    f"key {key!r} appears twice (first on line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def check_types(obj: Any, where: str) -> None:
    """Every field of a config dataclass has its annotated type (bool is not a number, "false" is not a bool)."""
    check_mapping_types(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where)


def check_mapping_types(cls: type, values: dict[str, Any], where: str) -> None:
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
    named = {
        bool: "true or false (unquoted)",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }
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
        raise ConfigError(
            f"{where} {base}: is a pickle-based checkpoint, which can run code when loaded; convert it "
            "to .safetensors (pickle is read only for personalized models with `allow_pickle: true`)"
        )
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
        raise ConfigError(
            f"{where} {base}: holds LoRA weights ({len(keys)} tensors, e.g. {lora[0]!r}), not a full "
            "Stable Diffusion checkpoint; give the base model here and list the LoRA under "
            "`personalized:` in study.yaml (method: lora)"
        )
    if 0 < len(keys) <= 4 and not any("." in k for k in keys):
        raise ConfigError(
            f"{where} {base}: holds {len(keys)} embedding tensor(s) ({', '.join(map(repr, keys))}), "
            "a Textual Inversion embedding rather than a Stable Diffusion checkpoint; give the base model "
            "here and list the embedding under `personalized:` in study.yaml (method: textual_inversion)"
        )
