"""Attention shift: how far personalization moves each token's cross-attention map.

For one token at one denoising step, a cross-attention map (probabilities over the
text tokens at every spatial position) becomes a distribution over space by
normalising it over (y, x). The shift between the base model and a personalized
model is the Jensen-Shannon divergence, base 2, of those two spatial distributions:
0 for identical maps, 1 for maps with disjoint support.

Why not ``scipy.spatial.distance.jensenshannon`` itself: it returns the JS *distance*
(the square root of the divergence); the square root of a rounding-negative sum makes
it NaN for nearly identical maps (half of all rows at a 1e-9 perturbation); and its
``rel_entr`` costs ~22 ns per element, where a paper-scale study has ~4e9 elements.
The divergence here is scipy's formula, (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2,
run in torch (SIMD float16 conversion and log2, several threads), clipped to [0, 1];
the tests check it against ``jensenshannon(p, q, base=2) ** 2``.

Example:
    >>> import numpy as np
    >>> axes = ("token", "step", "half", "head", "y", "x")
    >>> maps = np.random.default_rng(0).random((3, 2, 1, 1, 4, 4))
    >>> float(attention_shift(maps, maps, axes, ["cond"]))
    0.0
"""

from __future__ import annotations

import fnmatch
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from cemaps.analysis.shift.arrays import (  # noqa: F401 (re-exported: the room's public API)
    REDUCIBLE_AXES,
    _check_axes,
    _js_divergence,
    _reduce_axes,
    _spatial,
    attention_shift,
    js_divergence,
    reduce_shift,
    spatial_distributions,
)
from cemaps.analysis.shift.kernel import Workspace as _Workspace
from cemaps.analysis.shift.kernel import blocks as _blocks
from cemaps.analysis.shift.kernel import shift_block as _shift_block
from cemaps.errors import ConfigError, LayerNotFoundError, StoreError
from cemaps.labelled import CROSS_ATTENTION_PREFIX, is_attention_map

_BLOCK_VALUES = 1 << 17


# ---- streaming over a store --------------------------------------------------------------------
Per = Literal["record", "token", "step"]
_PER_REDUCE: dict[str, tuple[str, ...]] = {"record": ("token", "step"), "token": ("step",), "step": ("token",)}


def select_layers(store: Any, layers: str | Sequence[str] | Callable[[str], bool] | None = None) -> list[str]:
    """Cross-attention array names of ``store`` chosen by module path.

    Args:
        store: an open store.
        layers: None for all; a glob over module paths (``"up_blocks.*"``); a list of module
            paths (with or without the ``cross_attention/`` prefix); or a predicate on the path.

    Returns:
        Array names (``cross_attention/<module path>``) in store order.
    """
    available = [name for name in store.array_names if is_attention_map(name)]  # not joint layers' text mass
    paths = {name: name[len(CROSS_ATTENTION_PREFIX) :] for name in available}
    if not available:
        raise StoreError(f"{_store_name(store)}: no '{CROSS_ATTENTION_PREFIX}*' arrays; capture cross-attention first")
    if layers is None:
        return available
    if callable(layers):
        chosen = [name for name in available if layers(paths[name])]
        if not chosen:
            raise LayerNotFoundError(f"layer predicate {layers!r} matches none of {len(available)} stored layers")
        return chosen
    if isinstance(layers, str):
        chosen = [
            name for name in available if fnmatch.fnmatchcase(paths[name], layers) or fnmatch.fnmatchcase(name, layers)
        ]
        if not chosen:
            raise LayerNotFoundError(f"layer glob {layers!r} matches no stored layer; e.g. {paths[available[0]]!r}")
        return chosen
    chosen = []
    for layer in layers:
        name = layer if layer.startswith(CROSS_ATTENTION_PREFIX) else CROSS_ATTENTION_PREFIX + layer
        if name not in paths:
            raise LayerNotFoundError(
                f"layer {layer!r} is not in the store; stored layers are e.g. "
                f"{paths[available[0]]!r} ({len(available)} in all)"
            )
        chosen.append(name)
    return chosen


def _store_name(store: Any) -> str:
    return str(getattr(store, "path", "store"))


def base_model_id(store: Any) -> str:
    """The one model whose method is 'base'."""
    models = store.models
    if "method" not in models.columns:
        raise StoreError(f"{_store_name(store)}: models table has no 'method' column; expected one row with 'base'")
    ids = models.index[models["method"] == "base"].tolist()
    if len(ids) != 1:
        raise StoreError(f"{_store_name(store)}: {len(ids)} models have method 'base' ({ids}); expected exactly one")
    return str(ids[0])


def paired_records(store: Any) -> pd.DataFrame:
    """Every personalized record with its base twin, in store order.

    Returns:
        Columns record, model_id, prompt_id, seed, base_record.
    """
    records = store.records
    base_id = base_model_id(store)
    is_base = records["model_id"] == base_id
    twins = records.loc[is_base, ["prompt_id", "seed", "record"]].rename(columns={"record": "base_record"})
    paired = records.loc[~is_base].merge(twins, on=["prompt_id", "seed"], how="left", sort=False)
    missing = paired["base_record"].isna()
    if missing.any():
        first = paired.loc[missing].iloc[0]
        raise StoreError(
            f"{_store_name(store)}: {int(missing.sum())} personalized records have no base twin, e.g. "
            f"({first.model_id}, {first.prompt_id}, seed {first.seed}); capture the base model for them"
        )
    return paired.astype({"base_record": np.int64}).reset_index(drop=True)


def _capture_halves(store: Any) -> list[str]:
    capture = store.settings.get("capture", {}) if isinstance(store.settings, dict) else {}
    halves = capture.get("half_labels", capture.get("halves"))
    if not isinstance(halves, list):
        raise StoreError(f"{_store_name(store)}: settings have no capture.half_labels; expected e.g. ['cond']")
    return list(halves)


def _chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def attention_shift_table(
    store: Any,
    layers: str | Sequence[str] | Callable[[str], bool] | None = None,
    chunk_size: int = 64,
    per: Per = "record",
    half: str = "cond",
) -> pd.DataFrame:
    """Attention shift of every personalized record against its base twin, per layer.

    Streams layer by layer and, within a layer, ``chunk_size`` personalized records at a
    time in store order (so reads are contiguous). The base twins' distributions of the
    current layer are kept while that layer runs (they are reused by every model):
    memory is one layer of base records plus one chunk, whatever the number of models.

    Args:
        store: an open store (``cemaps.store.open_store``).
        layers: which cross-attention layers (see :func:`select_layers`); None for all.
        chunk_size: personalized records read per step.
        per: "record" (mean over tokens and steps), "token" (mean over steps) or "step"
            (mean over tokens).
        half: the CFG half to compare (one of ``settings["capture"]["halves"]``).

    Returns:
        Columns model_id, prompt_id, seed, layer (module path), [token_index, token |
        step_index,] attention_shift; one row per record x layer [x token | step].
    """
    if per not in _PER_REDUCE:
        raise ConfigError(f"per={per!r}; expected one of {sorted(_PER_REDUCE)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r}; expected an integer >= 1")
    names = select_layers(store, layers)
    halves = _capture_halves(store)
    paired = paired_records(store)
    tokens = store.prompts["tokens"].to_dict() if per == "token" and "tokens" in store.prompts.columns else {}
    for name in names:  # fail on a bad layer before reading anything
        _check_axes(store.axes(name), len(store.axes(name)), halves, half)
    frames, set_aside = [], set()
    for name, chunks in itertools.groupby(_read_ahead(store, names, paired, chunk_size), key=lambda item: item[0]):
        frame, aside = _layer_table(
            store, name, (item[1:] for item in chunks), paired, halves, half, _PER_REDUCE[per], tokens
        )
        frames.append(frame)
        set_aside |= aside
    if set_aside:
        _warn_set_aside(store, paired, set_aside)
    columns = ["model_id", "prompt_id", "seed", "layer", *_PER_COLUMNS[per], "attention_shift"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


_PER_COLUMNS: dict[str, tuple[str, ...]] = {"record": (), "token": ("token_index", "token"), "step": ("step_index",)}


def _read_ahead(
    store: Any, names: list[str], paired: pd.DataFrame, chunk_size: int
) -> Iterator[tuple[str, pd.DataFrame, dict[int, np.ndarray], list[np.ndarray]]]:
    """(layer, chunk, base maps first needed by this chunk, personalized maps) for each layer and chunk.

    One background thread reads the next chunk while the caller computes on this one, so
    HDF5 decompression and the divergence run on two cores. Only that thread touches the store.
    """
    tasks = [(name, chunk) for name in names for chunk in _chunks(paired, chunk_size)]
    seen: dict[str, set[int]] = {name: set() for name in names}

    def read(name: str, chunk: pd.DataFrame) -> tuple[str, pd.DataFrame, dict[int, np.ndarray], list[np.ndarray]]:
        missing = sorted(set(chunk["base_record"].tolist()) - seen[name])
        seen[name].update(missing)
        # one call, so the store reads base twins and the personalized records between them as one range
        records = chunk["record"].tolist()
        maps = store.read(name, records + missing)
        return name, chunk, dict(zip(missing, maps[len(records) :], strict=True)), maps[: len(records)]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cemaps-read-ahead") as reader:
        pending = reader.submit(read, *tasks[0]) if tasks else None
        for index in range(len(tasks)):
            result = pending.result()
            pending = reader.submit(read, *tasks[index + 1]) if index + 1 < len(tasks) else None
            yield result


def _layer_table(
    store: Any,
    name: str,
    chunks: Iterator[tuple[pd.DataFrame, dict[int, np.ndarray], list[np.ndarray]]],
    paired: pd.DataFrame,
    halves: list[str],
    half: str,
    reduce: tuple[str, ...],
    tokens: dict[str, list[str]],
) -> pd.DataFrame:
    axes = store.axes(name)
    permutation, half_index = _check_axes(axes, len(axes), halves, half)
    token_axis = axes.index("token")
    _reduce_axes(reduce)
    base_cache: dict[int, torch.Tensor] = {}  # base record -> [token, step, y*x], for this layer only

    def distributions(maps: np.ndarray | torch.Tensor) -> torch.Tensor:
        maps = torch.from_numpy(maps) if isinstance(maps, np.ndarray) else maps
        return _spatial(maps, permutation, half_index, len(halves))

    shifts: list[np.ndarray] = []
    set_aside: set[int] = set()  # personalized records whose token count differs from their base twin's
    workspace = _Workspace()
    for chunk, new_base, personalized in chunks:
        if new_base:  # one call for all the chunk's new twins, not one per record
            fresh = distributions(np.concatenate(list(new_base.values()), axis=token_axis))
            base_counts = [maps.shape[token_axis] for maps in new_base.values()]
            base_cache.update(zip(new_base, torch.split(fresh, base_counts), strict=True))
        counts = [maps.shape[token_axis] for maps in personalized]
        base_counts = [base_cache[record].shape[0] for record in chunk["base_record"].tolist()]
        if counts != base_counts:  # e.g. a prompt holding a Textual Inversion token: set aside, not fatal
            keep = [a == b for a, b in zip(counts, base_counts, strict=True)]
            set_aside.update(int(r) for r, kept in zip(chunk["record"].tolist(), keep, strict=True) if not kept)
            chunk = chunk.loc[keep]
            personalized = [maps for maps, kept in zip(personalized, keep, strict=True) if kept]
            counts = [c for c, kept in zip(counts, keep, strict=True) if kept]
            if not personalized:
                continue
        # Whole records are stacked along the token axis in blocks of ~2**17 values, which keeps the
        # temporaries in cache (on 640x10x256 values, blocks of 64 rows ran ~4x faster than one piece);
        # each block's base twins and maps are gathered into reused buffers just before use, so no pass
        # runs over a whole chunk (3 MiB, out of cache).
        twins = [base_cache[record] for record in chunk["base_record"].tolist()]
        dtype = torch.from_numpy(np.empty(0, np.result_type(*personalized))).dtype  # as concatenate would give
        pieces = [
            _shift_block(p, maps, permutation, half_index, workspace)
            for p, maps in _blocks(twins, personalized, counts, token_axis, dtype, workspace, _BLOCK_VALUES)
        ]
        shifts.extend(_reduce_records(torch.cat(pieces), counts, reduce))
    kept = paired.loc[~paired["record"].isin(set_aside)]
    return _shift_frame(kept, name[len(CROSS_ATTENTION_PREFIX) :], shifts, reduce, tokens), set_aside


def _reduce_records(per_token_step: torch.Tensor, counts: list[int], reduce: tuple[str, ...]) -> list[np.ndarray]:
    """Splits [rows, step] shifts stacked from several records (``counts`` token rows each) and
    averages each record's over ``reduce``, skipping NaN; one array per record, as reduce_shift gives."""
    if not reduce:
        return [piece.numpy() for piece in torch.split(per_token_step, counts)]
    valid = ~per_token_step.isnan()
    if reduce == ("step",):
        per_token = torch.where(valid, per_token_step, 0.0).sum(dim=1) / valid.sum(dim=1)
        return [piece.numpy() for piece in torch.split(per_token, counts)]
    # Over tokens (and steps): sums and valid counts per record in one index_add each, instead of one
    # nanmean call per record (which cost as much as the divergence itself on small records).
    segment = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64))
    values = torch.where(valid, per_token_step, 0.0)
    total = torch.zeros((len(counts), values.shape[1]), dtype=values.dtype).index_add_(0, segment, values)
    number = torch.zeros_like(total).index_add_(0, segment, valid.to(values.dtype))
    if "step" in reduce:  # ("token", "step"): one number per record
        return list((total.sum(dim=1) / number.sum(dim=1)).numpy())
    return list((total / number).numpy())


def _warn_set_aside(store: Any, paired: pd.DataFrame, set_aside: set[int]) -> None:
    """One warning naming the records left out because their prompt tokens differ from their base twin's."""
    rows = paired.loc[paired["record"].isin(set_aside)]
    named = "; ".join(f"({r.model_id}, {r.prompt_id}, seed {r.seed})" for r in rows.head(3).itertuples())
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    warnings.warn(
        f"{_store_name(store)}: {len(rows)} personalized record(s) set aside from the attention shift: {named}"
        f"{more}; their prompt has other tokens than under the base model (e.g. it holds a Textual Inversion "
        "token), so their maps cannot be compared token by token",
        stacklevel=3,
    )


def _shift_frame(
    paired: pd.DataFrame, layer: str, shifts: list[np.ndarray], reduce: tuple[str, ...], tokens: dict[str, list[str]]
) -> pd.DataFrame:
    keys = paired[["model_id", "prompt_id", "seed"]]
    if reduce == ("token", "step"):
        return keys.assign(layer=layer, attention_shift=np.asarray(shifts, dtype=np.float64))
    lengths = np.array([len(values) for values in shifts], dtype=np.int64)
    frame = keys.loc[keys.index.repeat(lengths)].reset_index(drop=True)
    index = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
    frame["layer"] = layer
    if reduce == ("step",):
        frame["token_index"] = index
        frame["token"] = [
            _token_text(tokens.get(prompt_id), i) for prompt_id, i in zip(frame["prompt_id"], index, strict=True)
        ]
    else:
        frame["step_index"] = index
    frame["attention_shift"] = np.concatenate(shifts).astype(np.float64) if shifts else np.zeros(0)
    return frame


def _token_text(prompt_tokens: list[str] | None, index: int) -> str | None:
    # Maps of all 77 positions are longer than the prompt's token list: positions past it are padding.
    if prompt_tokens is None or index >= len(prompt_tokens):
        return None
    return str(prompt_tokens[index])
