"""Subjects in context: prompt alignment, subject fidelity and non-subject attention shift.

Reads the in-context store (``study.in_context.h5``, written by the runner for
``prompt_sets: [..., in_context]``). Every record is one template placed around a
subject; the base model got the subject's class phrase ("a woman"), a personalized
model its token ("a sks woman", "<sks-face1>"). Per record:

- ``clip_t`` (prompt alignment, CLIP-T): CLIPScore of the image with the class-word
  prompt, i.e. the base model's text, the same text for base and personalized images,
  so the two are comparable (DreamBooth; Custom Diffusion's "text-alignment").
- ``clip_i`` (subject fidelity, CLIP-I): mean cosine between the image's CLIP embedding
  and each of the subject's training images (DreamBooth's CLIP-I: average pairwise
  cosine of generated and real images); NaN when no training images are given.
- ``non_subject_shift`` (personalized records, per layer): the Jensen-Shannon attention
  shift (:func:`cemaps.analysis.shift.attention_shift.attention_shift`) between a record and its
  base twin over the tokens outside the subject phrase: start token, the template's
  context words, end token. The phrases differ in length ("a woman" vs "<sks-face1>"),
  so the tokens are aligned by the context each text shares, and checked to be the same.

Example:
    >>> import numpy as np
    >>> positions = context_positions(["<s>", "a", "woman", "on", "</s>"], 1, 3)
    >>> positions.tolist()
    [0, 3, 4]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cemaps.analysis.clip_scorer import ClipScorer, clip_score_from_embeddings
from cemaps.analysis.shift.attention_shift import (
    _capture_halves,
    attention_shift,
    base_model_id,
    paired_records,
    select_layers,
)
from cemaps.errors import ConfigError, StoreError

TEXTS_TABLE = "in_context_texts"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SCORE_COLUMNS = [
    "model_id",
    "method",
    "subject_id",
    "prompt_id",
    "template_id",
    "kind",
    "seed",
    "text",
    "class_text",
    "clip_t",
    "clip_i",
]


def context_positions(tokens: list[str], subject_start: int, subject_stop: int) -> np.ndarray:
    """Token positions outside the subject phrase ``[subject_start, subject_stop)``: int64 [n_context]."""
    if not 0 < subject_start <= subject_stop < len(tokens):
        raise StoreError(
            f"subject span [{subject_start}, {subject_stop}) does not fit {len(tokens)} tokens "
            "between the start and end tokens"
        )
    return np.r_[np.arange(subject_start), np.arange(subject_stop, len(tokens))].astype(np.int64)


def load_subject_images(folder: str | Path) -> np.ndarray:
    """The images of one folder (sorted by name), RGB uint8, as an object array of [H, W, 3] arrays.

    Raises:
        ConfigError: the folder is missing or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"subject images folder {str(folder)!r} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"subject images folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    images = np.empty(len(paths), dtype=object)
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            images[index] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return images


def subject_embeddings(scorer: ClipScorer, folders: Mapping[str, str | Path]) -> dict[str, np.ndarray]:
    """subject_id -> L2-normalised CLIP embeddings [n_images, d] of its training images."""
    # One image at a time: training photos come in any size; the scorer's preprocessing resizes each.
    return {
        subject: np.concatenate([scorer.image_embeddings(image[None]) for image in load_subject_images(folder)])
        for subject, folder in folders.items()
    }


def subject_fidelity(image_embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CLIP-I: mean cosine of each image [n, d] with the reference images [m, d] (unit rows): [n]."""
    return (np.asarray(image_embeddings) @ np.asarray(reference).T).mean(axis=1)


def in_context_scores(
    store: Any, scorer: ClipScorer, subject_images: Mapping[str, str | Path] | None = None, batch_size: int = 32
) -> pd.DataFrame:
    """CLIP-T and CLIP-I of every record (base and personalized) of an in-context store.

    Args:
        store: an open in-context store (with the ``in_context_texts`` table and images).
        scorer: the CLIP scorer.
        subject_images: subject_id -> folder of training images; None takes the folders
            recorded in the store's settings (``prompt_set.subject_images``).
        batch_size: images embedded per step.

    Returns:
        :data:`SCORE_COLUMNS`, one row per record; ``clip_t`` in 0..100, ``clip_i`` in -1..1 (NaN
        for subjects without images).
    """
    prompts, models = store.prompts, store.models
    texts = _texts(store)
    if subject_images is None:
        subject_images = (store.settings.get("prompt_set") or {}).get("subject_images") or {}
    references = subject_embeddings(scorer, subject_images)
    records = store.records
    frames = []
    for start in range(0, len(records), batch_size):
        chunk = records.iloc[start : start + batch_size]
        embeddings = scorer.image_embeddings(store.images(chunk["record"].tolist()))
        class_texts = [str(prompts.at[p, "text"]) for p in chunk["prompt_id"]]
        clip_t = clip_score_from_embeddings(embeddings, scorer.text_embeddings(class_texts))
        subjects = [prompts.at[p, "subject_id"] for p in chunk["prompt_id"]]
        clip_i = np.array(
            [
                float(subject_fidelity(e[None], references[s])[0]) if s in references else np.nan
                for e, s in zip(embeddings, subjects, strict=True)
            ]
        )
        frames.append(
            pd.DataFrame(
                {
                    "model_id": chunk["model_id"].to_numpy(),
                    "method": chunk["model_id"].map(models["method"]).to_numpy(),
                    "subject_id": subjects,
                    "prompt_id": chunk["prompt_id"].to_numpy(),
                    "template_id": [prompts.at[p, "template_id"] for p in chunk["prompt_id"]],
                    "kind": [prompts.at[p, "kind"] for p in chunk["prompt_id"]],
                    "seed": chunk["seed"].to_numpy(),
                    "text": [
                        texts.at[(m, p), "text"] for m, p in zip(chunk["model_id"], chunk["prompt_id"], strict=True)
                    ],
                    "class_text": class_texts,
                    "clip_t": clip_t.astype(np.float64),
                    "clip_i": clip_i,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[SCORE_COLUMNS] if frames else pd.DataFrame(columns=SCORE_COLUMNS)


def non_subject_shift(
    store: Any, layers: Any = None, half: str = "cond", chunk_size: int = 64, per: str = "record"
) -> pd.DataFrame:
    """Attention shift of the context (non-subject) tokens of every personalized record vs its base twin.

    Args:
        store: an open in-context store.
        layers: cross-attention layers (see :func:`cemaps.analysis.shift.attention_shift.select_layers`).
        half: the CFG half compared.
        chunk_size: personalized records read per step.
        per: ``"record"`` (mean over the context tokens) or ``"token"`` (one row per context token).

    Returns:
        Columns model_id, prompt_id, seed, layer, n_context_tokens, non_subject_shift (JS divergence,
        base 2, in [0, 1], averaged over the captured steps and, per record, the context tokens);
        per token also token_index (in the personalized text) and token.

    Raises:
        StoreError: a record without its text, or context tokens that differ from its base twin's.
    """
    if per not in ("record", "token"):
        raise ConfigError(f"per={per!r}; expected 'record' or 'token'")
    names = select_layers(store, layers)
    halves = _capture_halves(store)
    paired = paired_records(store)
    texts = _texts(store)
    base_id = base_model_id(store)
    positions = []
    for row in paired.itertuples():
        own, twin = texts.loc[(row.model_id, row.prompt_id)], texts.loc[(base_id, row.prompt_id)]
        mine = context_positions(list(own["tokens"]), int(own["subject_start"]), int(own["subject_stop"]))
        base = context_positions(list(twin["tokens"]), int(twin["subject_start"]), int(twin["subject_stop"]))
        if [own["tokens"][i] for i in mine] != [twin["tokens"][i] for i in base]:
            raise StoreError(
                f"{getattr(store, 'path', 'store')}: ({row.model_id}, {row.prompt_id}) has context tokens "
                f"{[own['tokens'][i] for i in mine]} but its base twin "
                f"{[twin['tokens'][i] for i in base]}; expected the same template words"
            )
        positions.append((mine, base, [own["tokens"][i] for i in mine]))
    rows = []
    for name in names:
        axes = store.axes(name)
        token_axis = axes.index("token")
        for start in range(0, len(paired), chunk_size):
            chunk = paired.iloc[start : start + chunk_size]
            personalized = store.read(name, chunk["record"].tolist())
            twins = store.read(name, chunk["base_record"].tolist())
            for offset, (row, maps, base_maps) in enumerate(zip(chunk.itertuples(), personalized, twins, strict=True)):
                mine, base, words = positions[start + offset]
                shift = attention_shift(
                    np.take(base_maps, base, axis=token_axis),
                    np.take(maps, mine, axis=token_axis),
                    axes,
                    halves,
                    half,
                    reduce=("token", "step") if per == "record" else ("step",),
                )
                key = {
                    "model_id": row.model_id,
                    "prompt_id": row.prompt_id,
                    "seed": int(row.seed),
                    "layer": name.split("/", 1)[1],
                    "n_context_tokens": len(mine),
                }
                if per == "record":
                    rows.append({**key, "non_subject_shift": float(shift)})
                else:
                    rows += [
                        {**key, "token_index": int(i), "token": word, "non_subject_shift": float(value)}
                        for i, word, value in zip(mine, words, shift, strict=True)
                    ]
    columns = [
        "model_id",
        "prompt_id",
        "seed",
        "layer",
        "n_context_tokens",
        *(("token_index", "token") if per == "token" else ()),
        "non_subject_shift",
    ]
    return pd.DataFrame(rows, columns=columns)


def in_context_summary(scores: pd.DataFrame, shift: pd.DataFrame) -> pd.DataFrame:
    """Per personalized model: mean CLIP-T / CLIP-I of its images and of their base twins, and the shift.

    Returns:
        Columns model_id, method, subject_id, n_records, clip_t, clip_t_base, clip_t_change,
        clip_i, clip_i_base, clip_i_change, non_subject_shift (mean over records and layers).
    """
    keys = ["prompt_id", "seed"]
    base = scores[scores["method"] == "base"].set_index(keys)[["clip_t", "clip_i"]].add_suffix("_base")
    personalized = scores[scores["method"] != "base"].join(base, on=keys)
    grouped = personalized.groupby(["model_id", "method", "subject_id"], sort=False)
    summary = grouped.agg(
        n_records=("clip_t", "size"),
        clip_t=("clip_t", "mean"),
        clip_t_base=("clip_t_base", "mean"),
        clip_i=("clip_i", "mean"),
        clip_i_base=("clip_i_base", "mean"),
    ).reset_index()
    summary["clip_t_change"] = summary["clip_t"] - summary["clip_t_base"]
    summary["clip_i_change"] = summary["clip_i"] - summary["clip_i_base"]
    per_model = shift.groupby("model_id")["non_subject_shift"].mean() if len(shift) else pd.Series(dtype=float)
    summary["non_subject_shift"] = summary["model_id"].map(per_model)
    return summary[
        [
            "model_id",
            "method",
            "subject_id",
            "n_records",
            "clip_t",
            "clip_t_base",
            "clip_t_change",
            "clip_i",
            "clip_i_base",
            "clip_i_change",
            "non_subject_shift",
        ]
    ]


def _texts(store: Any) -> pd.DataFrame:
    try:
        texts = store.table(TEXTS_TABLE)
    except StoreError:
        raise StoreError(
            f"{getattr(store, 'path', 'store')}: no '{TEXTS_TABLE}' table; expected an in-context "
            "store written by `cemaps capture` with prompt_sets: [..., in_context]"
        ) from None
    texts = texts.drop_duplicates(["model_id", "prompt_id"]).set_index(["model_id", "prompt_id"])
    missing = [
        key
        for key in store.records[["model_id", "prompt_id"]].itertuples(index=False, name=None)
        if key not in texts.index
    ]
    if missing:
        raise StoreError(f"{getattr(store, 'path', 'store')}: record {missing[0]} has no row in '{TEXTS_TABLE}'")
    return texts


def analyse_in_context(
    store_path: str | Path, out: str | Path, scorer: ClipScorer, subject_images: Mapping[str, str | Path] | None = None
) -> dict[str, str]:
    """Writes the in-context results of the store beside ``store_path`` into ``out``, if that store exists.

    Args:
        store_path: the study's main store (``study.h5``); its in-context twin is
            ``study.in_context.h5`` (:func:`cemaps.study.prompt_sets.in_context_store_path`); ``store_path``
            may also name the in-context store itself.
        out: the results folder.
        scorer: the CLIP scorer used for the main analysis.
        subject_images: overrides the training-image folders recorded in the store.

    Returns:
        Result name -> file name (relative to ``out``): ``in_context`` (per record),
        ``in_context_shift`` (per personalized record and layer), ``in_context_tokens`` (per model
        and context word, mean over records, layers and occurrences), ``in_context_summary`` (per
        model); empty when the study had no in-context set.
    """
    from cemaps.store import open_store
    from cemaps.study.prompt_sets import IN_CONTEXT_SUFFIX, in_context_store_path

    store_path = Path(store_path)
    path = store_path if store_path.stem.endswith(IN_CONTEXT_SUFFIX) else in_context_store_path(store_path)
    if not path.exists():
        return {}
    out = Path(out)
    with open_store(path) as store:
        if store.records.empty:
            return {}
        scores = in_context_scores(store, scorer, subject_images)
        per_token = non_subject_shift(store, per="token")
    labels = scores[["model_id", "method", "subject_id"]].drop_duplicates("model_id")
    record_keys = ["model_id", "prompt_id", "seed", "layer", "n_context_tokens"]
    # Per record, the mean over its context tokens (what per="record" computes, without reading the maps twice).
    shift = per_token.groupby(record_keys, sort=False, as_index=False)["non_subject_shift"].mean()
    shift = shift.merge(labels, on="model_id", how="left")
    words = (
        per_token.merge(labels, on="model_id", how="left")
        .groupby(["model_id", "method", "subject_id", "token"], sort=False)["non_subject_shift"]
        .agg(["mean", "size"])
    )
    words = words.reset_index().rename(columns={"mean": "non_subject_shift", "size": "n"})
    files = {}
    for name, table in (
        ("in_context", scores),
        ("in_context_shift", shift),
        ("in_context_tokens", words),
        ("in_context_summary", in_context_summary(scores, shift)),
    ):
        table.to_csv(out / f"{name}.csv", index=False)
        files[name] = f"{name}.csv"
    return files
