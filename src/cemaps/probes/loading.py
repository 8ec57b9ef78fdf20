"""User probes named on the command line: ``cemaps capture --probe package.module:Class``.

The class is imported and called with no arguments; the instance must satisfy
:class:`cemaps.probes.Probe` (a ``name``, ``attach`` and ``collect``). The current directory is
on the import path while the module is imported, as with ``python -m``, so a ``my_probes.py``
beside the study works without installing it.

Example:
    >>> load_probe("cemaps.probes.examples:OutputNormProbe").name
    'output_norm'
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from cemaps.errors import ConfigError
from cemaps.hooks.capture import Probe


def load_probe(spec: str, where: str = "--probe") -> Any:
    """The probe ``spec`` (``"package.module:Class"``) names, instantiated with no arguments.

    Raises:
        ConfigError: naming ``where`` and ``spec``: not ``module:Class``, a module that cannot be
            imported (and why), no such class, a constructor that fails, or an object that is not a
            probe (what it lacks).
    """
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name.isidentifier():
        raise ConfigError(
            f"{where} {spec!r}: expected package.module:Class, e.g. cemaps.probes.examples:OutputNormProbe"
        )
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{where} {spec!r}: cannot import {module_name!r} ({exc}); expected a module that is installed, "
            "on PYTHONPATH, or in the current directory"
        ) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{where} {spec!r}: module {module_name!r} has no {class_name!r}")
    try:
        probe = cls()
    except Exception as exc:  # a user's constructor: any failure is the user's input, named in one line
        raise ConfigError(f"{where} {spec!r}: {class_name}() failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(probe, Probe) or not isinstance(getattr(probe, "name", None), str):
        missing = [a for a in ("name", "attach", "collect") if not hasattr(probe, a)] or ["a string name"]
        raise ConfigError(
            f"{where} {spec!r}: {class_name} is not a probe (lacks {', '.join(missing)}); "
            "expected a class with name, attach(pipe, context) and collect(context), see cemaps.probes.Probe"
        )
    return probe


def load_probes(specs: Sequence[str], where: str = "--probe") -> list[Any]:
    """:func:`load_probe` for each spec; two probes with one ``name`` are refused (their arrays would collide).

    Raises:
        ConfigError: as :func:`load_probe`, or a repeated probe name (also ``cross_attention``, cemaps' own).
    """
    probes = [load_probe(spec, where) for spec in specs]
    names = ["cross_attention"]
    for spec, probe in zip(specs, probes, strict=True):
        if probe.name in names:
            raise ConfigError(f"{where} {spec!r}: probe name {probe.name!r} is already taken; expected unique names")
        names.append(probe.name)
    return probes
