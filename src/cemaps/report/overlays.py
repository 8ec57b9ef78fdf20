"""Attention overlays: where one prompt token looks, base vs personalized, at each captured step.

Read from the capture store: the cross-attention array of one layer
(axes ``token, step, half, head, y, x``) and the generated image of the base
record and of its personalized twin (same prompt and seed). Heads are averaged;
the map is stretched over the image with bilinear interpolation.

Example:
    >>> from cemaps.store import open_store                      # doctest: +SKIP
    >>> with open_store("study.h5") as store:                     # doctest: +SKIP
    ...     fig = attention_overlay(store, "p007", "lighthouse", "up_blocks.1.attentions.0."
    ...                             "transformer_blocks.0.attn2", model_id="lora-dog")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cemaps.analysis.shift.attention_shift import base_model_id as store_base_model_id
from cemaps.errors import ConfigError, LayerNotFoundError, StoreError
from cemaps.labelled import CROSS_ATTENTION_AXES as MAP_AXES
from cemaps.labelled import CROSS_ATTENTION_PREFIX as ARRAY_PREFIX
from cemaps.report import style

OVERLAY_CMAP = "inferno"
OVERLAY_ALPHA = 0.6
# Settings keys under which a study may record the captured step indices.
_STEP_KEYS = ("steps", "step_indices", "captured_steps")


@dataclass(frozen=True)
class OverlayChoice:
    """What an overlay shows: one personalized model, prompt, seed, token and layer."""

    model_id: str
    prompt_id: str
    seed: int
    token: int | str
    layer: str


def array_name(store: Any, layer: str) -> str:
    """The store array of ``layer`` (module path, with or without the ``cross_attention/`` prefix)."""
    name = layer if layer.startswith(ARRAY_PREFIX) else ARRAY_PREFIX + layer
    if name not in store.array_names:
        available = [n.removeprefix(ARRAY_PREFIX) for n in store.array_names if n.startswith(ARRAY_PREFIX)]
        raise LayerNotFoundError(
            f"layer {layer!r} has no cross-attention maps in {store.path}; "
            f"captured layers: {available[:6]}{' ...' if len(available) > 6 else ''}"
        )
    return name


def prompt_tokens(store: Any, prompt_id: str) -> list[str]:
    """The stored tokens of a prompt (start and end tokens included)."""
    prompts = store.prompts
    if prompt_id not in prompts.index:
        raise ConfigError(f"prompt_id {prompt_id!r} is not in {store.path}; it has {list(prompts.index[:5])} ...")
    if "tokens" not in prompts.columns:
        raise StoreError(f"{store.path}: prompts table has no 'tokens' column; expected the tokenizer's tokens")
    return [str(t) for t in prompts.loc[prompt_id, "tokens"]]


def token_index(tokens: Sequence[str], token: int | str) -> int:
    """Position of ``token``: an index, or a word matched with or without CLIP's ``</w>`` word-end mark."""
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if not 0 <= token < len(tokens):
            raise ConfigError(f"token index {token}: expected 0..{len(tokens) - 1} for tokens {list(tokens)}")
        return int(token)
    for i, stored in enumerate(tokens):
        if stored == token or stored.removesuffix("</w>") == str(token).lower():
            return i
    raise ConfigError(f"token {token!r} is not among the prompt's tokens {list(tokens)}")


def step_labels(settings: dict, n_steps: int) -> list[str]:
    """Column titles: the captured step indices if the capture settings list them, else 1..n."""
    capture = settings.get("capture", {}) if isinstance(settings, dict) else {}
    for key in (*_STEP_KEYS, "timesteps"):
        value = capture.get(key) if isinstance(capture, dict) else None
        if isinstance(value, list) and len(value) == n_steps:
            return [f"step {v}" for v in value]
    return [f"captured step {i + 1}/{n_steps}" for i in range(n_steps)]


def token_maps(store: Any, name: str, record: int, token: int, half: str) -> np.ndarray:
    """[step, y, x] float32 attention of one token in one record, heads averaged."""
    axes = tuple(store.axes(name))
    if sorted(axes) != sorted(MAP_AXES):
        raise StoreError(f"{store.path}: array {name!r} has axes {axes}; expected a permutation of {MAP_AXES}")
    maps = np.transpose(store.read_one(name, record), [axes.index(a) for a in MAP_AXES]).astype(np.float32)
    capture = store.settings.get("capture", {})
    halves = list(
        capture.get("half_labels", capture.get("halves") if isinstance(capture.get("halves"), list) else ["cond"])
    )
    if half not in halves:
        raise ConfigError(f"half {half!r} was not captured; the store has halves {halves}")
    if maps.shape[2] != len(halves):
        raise StoreError(f"{store.path}: array {name!r} has {maps.shape[2]} halves but capture.halves is {halves}")
    if not 0 <= token < maps.shape[0]:
        raise ConfigError(f"token index {token}: record {record} has {maps.shape[0]} captured tokens")
    return maps[token, :, halves.index(half)].mean(axis=1)


def _record(records: pd.DataFrame, model_id: str, prompt_id: str, seed: int) -> int:
    match = records[(records["model_id"] == model_id) & (records["prompt_id"] == prompt_id) & (records["seed"] == seed)]
    if match.empty:
        raise StoreError(f"no record (model_id={model_id!r}, prompt_id={prompt_id!r}, seed={seed}) in the store")
    return int(match["record"].iloc[0])


def attention_overlay(
    store: Any,
    prompt_id: str,
    token: int | str,
    layer: str,
    model_id: str,
    seed: int | None = None,
    base_model_id: str | None = None,
    half: str = "cond",
) -> Figure:
    """Base (top row) vs personalized (bottom row) attention of one token over the generated images.

    Args:
        store: an open :class:`cemaps.store.StoreReader`.
        prompt_id: the prompt.
        token: token index or word (e.g. ``"lighthouse"``) of that prompt.
        layer: cross-attention module path, e.g. ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``.
        model_id: the personalized model.
        seed: which seed; default the smallest seed both models have for the prompt.
        base_model_id: default the model whose method is ``base``.
        half: classifier-free-guidance half to show (``cond`` is what the prompt steers).

    Returns:
        Figure with 2 rows x (captured steps) columns and one colour bar.
    """
    base_id = base_model_id or store_base_model_id(store)
    name = array_name(store, layer)
    tokens = prompt_tokens(store, prompt_id)
    position = token_index(tokens, token)
    records = store.records
    if seed is None:
        seeds = [
            set(records.loc[(records["model_id"] == m) & (records["prompt_id"] == prompt_id), "seed"])
            for m in (base_id, model_id)
        ]
        common = sorted(seeds[0] & seeds[1])
        if not common:
            raise StoreError(
                f"{store.path}: no seed of prompt {prompt_id!r} was generated by both {base_id!r} and {model_id!r}"
            )
        seed = int(common[0])
    rows = {
        label: _record(records, m, prompt_id, seed)
        for label, m in ((f"base ({base_id})", base_id), (f"personalized ({model_id})", model_id))
    }
    maps = {label: token_maps(store, name, record, position, half) for label, record in rows.items()}
    images = {label: store.images([record])[0] for label, record in rows.items()}
    n_steps = next(iter(maps.values())).shape[0]
    titles = step_labels(store.settings, n_steps)
    vmax = max(float(m.max()) for m in maps.values()) or 1.0
    fig = style.new_figure(1.2 + 1.9 * n_steps, 4.6)
    axes = fig.subplots(2, n_steps, squeeze=False)
    shown = None
    for r, (label, per_step) in enumerate(maps.items()):
        height, width = images[label].shape[:2]
        for s in range(n_steps):
            ax = axes[r, s]
            ax.imshow(images[label], extent=(0, width, height, 0))
            shown = ax.imshow(
                per_step[s],
                extent=(0, width, height, 0),
                cmap=OVERLAY_CMAP,
                alpha=OVERLAY_ALPHA,
                vmin=0.0,
                vmax=vmax,
                interpolation="bilinear",
            )
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[s], fontsize=style.TEXT_SIZE)
            if s == 0:
                ax.set_ylabel(label, fontsize=style.TEXT_SIZE - 1)
    colourbar = fig.colorbar(shown, ax=axes, shrink=0.8, pad=0.01)
    colourbar.set_label("attention probability", fontsize=style.TEXT_SIZE - 1)
    text = _prompt_text(store, prompt_id)
    fig.suptitle(
        f"Attention to {tokens[position]!r} in {text!r} ({prompt_id}, seed {seed}), "
        f"layer {layer.removeprefix(ARRAY_PREFIX)}",
        fontsize=style.TITLE_SIZE,
    )
    return fig


def choose_overlay(
    store: Any, disruption: pd.DataFrame | None, shift: pd.DataFrame | None, metric: str | None
) -> OverlayChoice:
    """A telling default: the most disrupted (model, prompt), its most shifted layer, its most changed token.

    Falls back to the first personalized record and the first captured layer when the
    tables are absent. The token is the one (start/end tokens excluded) whose map
    differs most between base and personalized on that layer.
    """
    base_id = store_base_model_id(store)
    records = store.records
    personalized = records[records["model_id"] != base_id]
    if personalized.empty:
        raise StoreError(f"{store.path}: no personalized records to overlay")
    if disruption is not None and metric in getattr(disruption, "columns", ()):
        ranked = disruption.groupby(["model_id", "prompt_id"])[metric].mean().sort_values(ascending=False)
        known = set(zip(personalized["model_id"], personalized["prompt_id"], strict=True))
        pair = next((key for key in ranked.index if key in known), None)
    else:
        pair = None
    model_id, prompt_id = pair or (str(personalized["model_id"].iloc[0]), str(personalized["prompt_id"].iloc[0]))
    layers = [n.removeprefix(ARRAY_PREFIX) for n in store.array_names if n.startswith(ARRAY_PREFIX)]
    if not layers:
        raise StoreError(f"{store.path}: no cross-attention arrays captured")
    layer = layers[0]
    if shift is not None and {"layer", "attention_shift", "model_id", "prompt_id"} <= set(shift.columns):
        part = shift[(shift["model_id"] == model_id) & (shift["prompt_id"] == prompt_id) & shift["layer"].isin(layers)]
        if len(part):
            layer = str(part.groupby("layer")["attention_shift"].mean().idxmax())
    seeds = records.loc[(records["model_id"] == model_id) & (records["prompt_id"] == prompt_id), "seed"]
    seed = int(seeds.min())
    name = array_name(store, layer)
    tokens = prompt_tokens(store, prompt_id)
    base_record = _record(records, base_id, prompt_id, seed)
    twin_record = _record(records, model_id, prompt_id, seed)
    capture = store.settings.get("capture", {})
    halves = list(
        capture.get("half_labels", capture.get("halves") if isinstance(capture.get("halves"), list) else ["cond"])
    )
    half = "cond" if "cond" in halves else halves[0]
    n_tokens = min(len(tokens), store.read_one(name, base_record).shape[list(store.axes(name)).index("token")])
    content = range(1, n_tokens - 1) if n_tokens > 2 else range(n_tokens)
    change = [
        np.abs(token_maps(store, name, base_record, t, half) - token_maps(store, name, twin_record, t, half)).sum()
        for t in content
    ]
    return OverlayChoice(
        model_id=model_id, prompt_id=prompt_id, seed=seed, token=int(content[int(np.argmax(change))]), layer=layer
    )


def _prompt_text(store: Any, prompt_id: str, width: int = 60) -> str:
    """The prompt's text, cut to ``width`` characters with an ellipsis (the id itself when the store lacks it)."""
    prompts = store.prompts
    text = prompt_id
    if "text" in prompts.columns:
        table = prompts.set_index("prompt_id") if "prompt_id" in prompts.columns else prompts
        if prompt_id in table.index:
            text = str(table.loc[prompt_id, "text"])
    return text if len(text) <= width else text[: width - 1] + "\u2026"
