"""Value checks every study number, seed, text and id passes when the config is read (before any work).

Each check raises :class:`~cemaps.errors.ConfigError` with one line naming the field, the value
and what is expected. The rules and where they come from:

- Numbers are finite (YAML reads ``.nan`` / ``.inf`` as floats, which would run with guidance
  silently off or overflow); ``guidance_scale`` >= 0 (diffusers applies classifier-free guidance
  when it is > 1 and none at 0..1; a negative scale inverts it, which is no study setting).
- Seeds are integers in 0 .. 2**63 - 1: the store keeps them as int64 and
  ``torch.Generator.manual_seed`` takes them; a seed listed twice would make two identical records.
- Texts (prompts, negative prompts) hold no NUL and no lone UTF-16 surrogate: HDF5 strings
  end at NUL and UTF-8 cannot encode a surrogate, so both would fail mid-run.
- Model ids follow the rule torch applies to the module names that peft builds from a LoRA's
  adapter name (``torch.nn.Module.add_module``: no ".", not empty, not an attribute of
  ``ModuleDict``), since diffusers passes the id as ``adapter_name``; the same rule is applied to
  every method so that an id can move between methods.

Example:
    >>> check_seeds([0, 1], "seeds")
    (0, 1)
    >>> check_model_id("lora.v1", "personalized[0].id")
    Traceback (most recent call last):
    ...
    cemaps.errors.ConfigError: personalized[0].id 'lora.v1': expected a name without '.' (diffusers uses it as the LoRA adapter name, which torch refuses with a '.'), e.g. 'lora-v1'
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from cemaps.errors import ConfigError

SEED_LIMIT = 2**63  # exclusive: int64 in the store


def check_number(value: Any, where: str, *, minimum: float | None = None) -> float:
    """A finite real number (bool refused), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}={value!r}: expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}={value!r}: expected a finite number, not nan or infinity")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}={value!r}: expected a number >= {minimum:g}")
    return value


def check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    """Integers in 0 .. 2**63-1, each once."""
    seen: set[int] = set()
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise ConfigError(f"{where}: {seed!r} is not an integer in 0..2**63-1 (the store keeps seeds as int64)")
        if seed in seen:
            raise ConfigError(f"{where}: seed {seed} is listed twice; expected each seed once")
        seen.add(seed)
    return tuple(seeds)


def check_text(text: Any, where: str) -> str:
    """A string without NUL and without lone surrogates (emoji, right-to-left text and accents pass)."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}={text!r}: expected a string")
    for index, char in enumerate(text):
        if char == "\x00":
            raise ConfigError(f"{where}: holds a NUL character at position {index}; remove it")
        if unicodedata.category(char) == "Cs":
            raise ConfigError(
                f"{where}: holds a lone surrogate {char!r} at position {index} (not a Unicode character); "
                "fix the file's encoding"
            )
    return text


def _module_dict_attributes() -> frozenset[str]:
    import torch

    return frozenset(dir(torch.nn.ModuleDict) + dir(torch.nn.ParameterDict))


def check_model_id(model_id: Any, where: str) -> str:
    """A model id that diffusers/peft accept as an adapter name (see the module docstring)."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise ConfigError(f"{where} {model_id!r}: expected a non-empty name, e.g. 'lora-mug'")
    check_text(model_id, where)
    if "." in model_id:
        raise ConfigError(
            f"{where} {model_id!r}: expected a name without '.' (diffusers uses it as the LoRA adapter name, "
            f"which torch refuses with a '.'), e.g. {model_id.replace('.', '-').strip('-/') or 'lora-v1'!r}"
        )
    if model_id in _module_dict_attributes():
        raise ConfigError(
            f"{where} {model_id!r}: is the name of a torch ModuleDict attribute, which diffusers cannot use "
            f"as a LoRA adapter name; e.g. {model_id + '-1'!r}"
        )
    return model_id
