"""Disruption of unrelated prompts: CLIP alignment drop and image drift, per record and over seeds.

For every personalized record (model, prompt, seed) and its base twin (base model,
same prompt and seed):

- ``alignment_drop`` = CLIPScore(prompt, base image) - CLIPScore(prompt, personalized image);
  positive when personalization made the image match its prompt less.
- ``image_drift`` = 1 - cos(base image embedding, personalized image embedding);
  how much the picture changed, whatever the prompt.
- ``structural_zero``: the personalized image and every stored cross-attention
  map are bit-identical to the base twin's. Then both metrics are 0 by
  construction, not by measurement: a Textual Inversion model only adds a token
  embedding, so on a prompt without its token it computes exactly what the base
  model computes. ``image_identical`` says the image alone is identical.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"model_id": ["m"] * 3, "prompt_id": ["p"] * 3, "alignment_drop": [1.0, 2.0, 3.0]})
    >>> row = aggregate_over_seeds(table, ["alignment_drop"]).iloc[0]
    >>> float(row.alignment_drop), float(row.alignment_drop_sd), int(row.alignment_drop_n)
    (2.0, 1.0, 3)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from cemaps.analysis.clip_scorer import ClipScorer, clip_score_from_embeddings
from cemaps.analysis.shift.attention_shift import paired_records
from cemaps.errors import ConfigError, StoreError

KEYS = ["model_id", "prompt_id", "seed"]
DISRUPTION_COLUMNS = [
    *KEYS,
    "clip_base",
    "clip_personalized",
    "alignment_drop",
    "image_drift",
    "image_identical",
    "structural_zero",
]
MAP_PREFIX = "cross_attention/"
STRUCTURAL_ZERO = "structural_zero"
MODEL_LABELS = ("method", "subject_id", "subject_domain")
PROMPT_LABELS = ("abstractness", "domain")
CI_LEVEL = 0.95


def disruption_table(store: Any, scorer: ClipScorer, batch_size: int = 32) -> pd.DataFrame:
    """CLIP alignment drop and image drift of every personalized record against its base twin.

    Images are embedded ``batch_size`` personalized records at a time, in store order; each
    base twin's image embedding is computed once and reused by every model.

    Args:
        store: an open store whose records have images and whose prompts have ``text``.
        scorer: the CLIP scorer (``ClipScorer.load(...)``; ``ClipScorer.tiny()`` in tests).
        batch_size: personalized images per step.

    Returns:
        Columns model_id, prompt_id, seed, clip_base, clip_personalized (CLIPScore, 0..100),
        alignment_drop, image_drift, image_identical (bool: image bit-identical to the base twin's),
        structural_zero (bool: image and every cross-attention map bit-identical); one row per
        personalized record.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; expected an integer >= 1")
    paired = paired_records(store)
    prompts = store.prompts
    if "text" not in prompts.columns:
        raise StoreError(f"{getattr(store, 'path', 'store')}: prompts table has no 'text' column")
    used = sorted(set(paired["prompt_id"]))
    unknown = [prompt_id for prompt_id in used if prompt_id not in prompts.index]
    if unknown:
        raise StoreError(
            f"{getattr(store, 'path', 'store')}: records use prompt {unknown[0]!r}, which the prompts table lacks"
        )
    texts = prompts.loc[used, "text"].astype(str).tolist()
    text_embedding = dict(zip(used, scorer.text_embeddings(texts), strict=True))
    base_embedding: dict[int, np.ndarray] = {}
    base_digest: dict[int, bytes] = {}  # digests, not images: a paper-scale study has ~800 base images
    columns: dict[str, list[np.ndarray]] = {
        "clip_base": [],
        "clip_personalized": [],
        "image_drift": [],
        "image_identical": [],
    }
    for start in range(0, len(paired), batch_size):
        chunk = paired.iloc[start : start + batch_size]
        missing = sorted(set(chunk["base_record"].tolist()) - base_embedding.keys())
        if missing:
            images = store.images(missing)
            base_embedding.update(zip(missing, scorer.image_embeddings(images), strict=True))
            base_digest.update(zip(missing, map(_image_digest, images), strict=True))
        personalized_images = store.images(chunk["record"].tolist())
        columns["image_identical"].append(
            np.array(
                [
                    _image_digest(image) == base_digest[twin]
                    for image, twin in zip(personalized_images, chunk["base_record"], strict=True)
                ],
                dtype=bool,
            )
        )
        personalized = scorer.image_embeddings(personalized_images)
        base = np.stack([base_embedding[record] for record in chunk["base_record"]])
        texts = np.stack([text_embedding[prompt_id] for prompt_id in chunk["prompt_id"]])
        columns["clip_base"].append(clip_score_from_embeddings(base, texts))
        columns["clip_personalized"].append(clip_score_from_embeddings(personalized, texts))
        columns["image_drift"].append(1.0 - np.sum(base * personalized, axis=-1))
    table = paired[KEYS].copy()
    for name, parts in columns.items():
        dtype = bool if name == "image_identical" else np.float64
        table[name] = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
    identical = table["image_identical"].to_numpy()
    # the same pixels give the same embedding; batched matmuls would leave ~1e-5 of rounding instead of 0
    table.loc[identical, "clip_personalized"] = table.loc[identical, "clip_base"]
    table.loc[identical, "image_drift"] = 0.0
    table["alignment_drop"] = table["clip_base"] - table["clip_personalized"]
    table["structural_zero"] = identical.copy()
    map_names = [name for name in store.array_names if name.startswith(MAP_PREFIX)]
    rows = np.flatnonzero(identical)
    zero = table["structural_zero"].to_numpy().copy()
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        zero[chunk] = _maps_identical(
            store, paired["record"].to_numpy()[chunk], paired["base_record"].to_numpy()[chunk], map_names
        )
    table["structural_zero"] = zero
    return table[DISRUPTION_COLUMNS]


def _image_digest(image: np.ndarray) -> bytes:
    """BLAKE2b digest of an image's shape and bytes (equal digests: bit-identical images)."""
    return hashlib.blake2b(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).digest()


def _maps_identical(store: Any, records: np.ndarray, base_records: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[n] whether every stored cross-attention map of each record equals its base twin's, bit for bit.

    Each layer is read for the whole batch in one call. A layer that neither record stored is
    skipped; one stored for only one of them counts as different.
    """
    same = np.ones(len(records), dtype=bool)
    for name in names:
        try:
            mine, theirs = store.read(name, records.tolist()), store.read(name, base_records.tolist())
        except StoreError:  # some record lacks this layer: compare one by one
            for i, (record, twin) in enumerate(zip(records.tolist(), base_records.tolist(), strict=True)):
                same[i] &= _one_map_identical(store, name, record, twin)
            continue
        same &= np.array([np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True)], dtype=bool)
    return same


def _one_map_identical(store: Any, name: str, record: int, base_record: int) -> bool:
    stored = []
    for which in (record, base_record):
        try:
            stored.append(store.read_one(name, which))
        except StoreError:
            stored.append(None)
    if stored[0] is None or stored[1] is None:
        return stored[0] is None and stored[1] is None
    return bool(np.array_equal(stored[0], stored[1]))


def structural_zeros_by_model(table: pd.DataFrame) -> pd.DataFrame:
    """Per personalized model: how many records are bit-identical to their base twin.

    Args:
        table: one row per (model_id, prompt_id, seed) with ``structural_zero`` (and optionally
            ``image_identical`` and ``method``), e.g. :func:`disruption_table` or ``disruption.csv``.

    Returns:
        Columns model_id, method (when given), n_records, records_image_identical,
        records_structural_zero, share_structural_zero; one row per model, sorted by model_id.

    Raises:
        ConfigError: ``table`` lacks model_id or structural_zero.
    """
    missing = [c for c in ("model_id", STRUCTURAL_ZERO) if c not in table.columns]
    if missing:
        raise ConfigError(f"table lacks column(s) {missing}; expected the output of disruption_table")
    zero = table[STRUCTURAL_ZERO].astype(bool)
    image = table["image_identical"].astype(bool) if "image_identical" in table.columns else zero
    grouped = table.assign(__zero__=zero, __image__=image).groupby("model_id", sort=True)
    out = pd.DataFrame(
        {
            "n_records": grouped.size(),
            "records_image_identical": grouped["__image__"].sum(),
            "records_structural_zero": grouped["__zero__"].sum(),
        }
    ).astype(np.int64)
    out["share_structural_zero"] = out["records_structural_zero"] / out["n_records"]
    if "method" in table.columns:
        out.insert(0, "method", grouped["method"].first())
    return out.reset_index()


def structural_zero_sentence(by_model: pd.DataFrame) -> str:
    """Plain words for the report: which models have records bit-identical to the base twin."""
    hit = by_model[by_model["records_structural_zero"] > 0]
    if hit.empty:
        return "No personalized record is bit-identical to its base twin: every zero in these results is measured."
    parts = [
        f"{row.model_id}{f' ({row.method})' if 'method' in hit.columns else ''}: "
        f"{row.records_structural_zero} of {row.n_records} records"
        for row in hit.itertuples()
    ]
    return (
        "Structural zeros: " + "; ".join(parts) + ". In these records the image and every cross-attention "
        "map are bit-identical to the base model's for the same prompt and seed (e.g. a Textual Inversion "
        "model on a prompt without its token computes exactly what the base model computes), so their "
        "disruption and attention shift are 0 by construction, not by measurement."
    )


def aggregate_over_seeds(
    table: pd.DataFrame,
    value_cols: Sequence[str],
    models: pd.DataFrame | None = None,
    prompts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Mean, SD, n and 95% t-interval of each value over seeds, per (model_id, prompt_id).

    Args:
        table: one row per (model_id, prompt_id, seed), e.g. from :func:`disruption_table`.
        value_cols: the columns to summarise, e.g. ``["alignment_drop", "image_drift"]``.
        models: model labels indexed (or keyed by a column) ``model_id``, e.g. ``store.models``;
            its method, subject_id and subject_domain are joined where present.
        prompts: prompt labels by ``prompt_id``, e.g. ``store.prompts``; abstractness and domain
            are joined where present.

    Returns:
        One row per (model_id, prompt_id) with the labels, then per value ``v``: ``v`` (the
        mean, so that statistics and maps take the same column name), ``v_sd`` (ddof 1),
        ``v_n``, ``v_ci_low``, ``v_ci_high`` (``scipy.stats.t`` with n - 1 degrees of
        freedom; NaN when n < 2). NaN values are left out of n. When ``table`` has
        ``structural_zero``, that column is true where it is true for every seed.
    """
    value_cols = [value_cols] if isinstance(value_cols, str) else list(value_cols)
    if not value_cols:
        raise ConfigError("value_cols is empty; expected at least one column to aggregate, e.g. ['alignment_drop']")
    missing = [c for c in ["model_id", "prompt_id", *value_cols] if c not in table.columns]
    if missing:
        raise ConfigError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
    non_numeric = [c for c in value_cols if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise ConfigError(f"value column(s) {non_numeric} are not numeric; expected metric values")
    grouped = table.groupby(["model_id", "prompt_id"], sort=True)[value_cols]
    mean, sd, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    out = pd.DataFrame(index=mean.index)
    for column in value_cols:
        count = n[column].to_numpy()
        half_width = np.full(len(count), np.nan)
        enough = count >= 2
        half_width[enough] = (
            stats.t.ppf(0.5 + CI_LEVEL / 2, count[enough] - 1) * sd[column].to_numpy()[enough] / np.sqrt(count[enough])
        )
        out[column] = mean[column]
        out[f"{column}_sd"] = sd[column]
        out[f"{column}_n"] = count
        out[f"{column}_ci_low"] = mean[column].to_numpy() - half_width
        out[f"{column}_ci_high"] = mean[column].to_numpy() + half_width
    if STRUCTURAL_ZERO in table.columns:  # a pair is a structural zero when every seed is
        out[STRUCTURAL_ZERO] = table.groupby(["model_id", "prompt_id"], sort=True)[STRUCTURAL_ZERO].agg(
            lambda x: bool(x.astype(bool).all())
        )
    out = out.reset_index()
    out = _join_labels(out, models, "model_id", MODEL_LABELS)
    out = _join_labels(out, prompts, "prompt_id", PROMPT_LABELS)
    labels = [c for c in (*MODEL_LABELS, *PROMPT_LABELS) if c in out.columns]
    values = [c for c in out.columns if c not in ("model_id", "prompt_id", *labels)]
    return out[["model_id", "prompt_id", *labels, *values]]


def _join_labels(table: pd.DataFrame, labels: pd.DataFrame | None, key: str, wanted: tuple[str, ...]) -> pd.DataFrame:
    if labels is None:
        return table
    labels = labels.reset_index() if key not in labels.columns and labels.index.name == key else labels
    if key not in labels.columns:
        raise ConfigError(f"label table has no {key!r} column or index; expected e.g. store.models / store.prompts")
    present = [c for c in wanted if c in labels.columns and c not in table.columns]
    if not present:
        return table
    return table.merge(labels[[key, *present]].drop_duplicates(key), on=key, how="left")


@torch.inference_mode()
def semantic_similarity(
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    descriptors: Mapping[str, str],
    prompts: Mapping[str, str],
    batch_size: int = 64,
) -> pd.DataFrame:
    """Cosine similarity of each subject descriptor to each prompt in the base model's text space.

    Uses the diffusion pipeline's own CLIP text encoder (``pipe.text_encoder`` with
    ``pipe.tokenizer``): its pooled output (the end-of-text token after the final layer
    norm; ``text_embeds`` for encoders with a projection).

    Args:
        text_encoder: a transformers CLIPTextModel (or ...WithProjection).
        tokenizer: its tokenizer.
        descriptors: model_id -> subject descriptor, e.g. ``{"lora-face1": "a young woman's face"}``.
        prompts: prompt_id -> prompt text.

    Returns:
        Columns model_id, prompt_id, similarity (cosine in [-1, 1]); models x prompts rows.
    """
    for what, mapping in (("descriptors", descriptors), ("prompts", prompts)):
        if not isinstance(mapping, Mapping) or not mapping:
            raise ConfigError(
                f"{what} is an empty or non-dict {type(mapping).__name__}; expected a non-empty dict of id -> text"
            )
        bad = [key for key, text in mapping.items() if not isinstance(text, str) or not text.strip()]
        if bad:
            raise ConfigError(f"{what}[{bad[0]!r}] is {mapping[bad[0]]!r}; expected non-empty text")
    descriptor_vectors = _pooled_text_embeddings(text_encoder, tokenizer, list(descriptors.values()), batch_size)
    prompt_vectors = _pooled_text_embeddings(text_encoder, tokenizer, list(prompts.values()), batch_size)
    similarity = descriptor_vectors @ prompt_vectors.T  # [models, prompts]
    return pd.DataFrame(
        {
            "model_id": np.repeat(list(descriptors), len(prompts)),
            "prompt_id": np.tile(list(prompts), len(descriptors)),
            "similarity": similarity.reshape(-1).astype(np.float64),
        }
    )


def _pooled_text_embeddings(
    text_encoder: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int
) -> np.ndarray:
    """L2-normalised pooled embeddings, float32 [n, d]: CLIP's projected or pooled output; for an
    encoder without one (T5, PixArt's only encoder), the mean of its last states over the unpadded tokens."""
    device = next(text_encoder.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size],
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        )
        output = text_encoder(input_ids=tokens.input_ids.to(device))
        if getattr(output, "text_embeds", None) is not None:
            pooled = output.text_embeds
        elif getattr(output, "pooler_output", None) is not None:
            pooled = output.pooler_output
        else:  # an encoder without a pooled output (T5): the mean of its states over the text's own tokens
            mask = tokens.attention_mask.to(device).unsqueeze(-1).to(output.last_hidden_state.dtype)
            pooled = (output.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)
