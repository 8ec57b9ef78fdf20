"""Finding modules by name: a glob, a list of exact paths, or a predicate.

Layer names are ``named_modules()`` paths, e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2``.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> list(select_modules(net, "0"))
    ['0']
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable

from torch import nn

from cemaps.errors import LayerNotFoundError

LayerSelector = str | Iterable[str] | Callable[[str, nn.Module], bool]


def select_modules(
    model: nn.Module,
    layers: LayerSelector,
    *,
    accept: Callable[[str, nn.Module], bool] | None = None,
    kind: str = "module",
) -> dict[str, nn.Module]:
    """Modules of ``model`` chosen by ``layers``, in ``named_modules()`` order.

    Args:
        model: the network to search.
        layers: a glob (``"*attn2"``; a string without glob characters is an exact
            path), a list of exact paths, or ``predicate(name, module) -> bool``.
        accept: restricts globs and predicates to modules of the right kind;
            an exact name that fails it is an error.
        kind: what ``accept`` accepts, for error messages (e.g. "cross-attention layer").

    Raises:
        LayerNotFoundError: an exact name is unknown or not of the right kind, or
            a glob/predicate selects nothing.
    """
    named = dict(model.named_modules())
    accepted = {n: m for n, m in named.items() if n and (accept is None or accept(n, m))}
    if callable(layers):
        chosen = {n: m for n, m in accepted.items() if layers(n, m)}
        if not chosen:
            raise LayerNotFoundError(f"layer predicate {layers!r} selects no {kind}")
        return chosen
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise LayerNotFoundError(f"empty layer list: name at least one {kind}")
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = [n for n in accepted if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise LayerNotFoundError(f"layer glob {pattern!r} matches no {kind}; e.g. {_examples(accepted)}")
        elif pattern in accepted:
            hits = [pattern]
        elif pattern in named:
            raise LayerNotFoundError(f"layer {pattern!r} is not a {kind}; e.g. {_examples(accepted)}")
        else:
            close = difflib.get_close_matches(pattern, list(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; e.g. {_examples(accepted)}"
            raise LayerNotFoundError(f"unknown layer {pattern!r}{hint}")
        chosen.update((n, accepted[n]) for n in hits)
    return {n: chosen[n] for n in named if n in chosen}


def _examples(names: Iterable[str], k: int = 2) -> str:
    shown = list(names)[:k]
    return ", ".join(repr(n) for n in shown) if shown else "(none in this model)"
