"""A toy-world study checked against the world's known truth, from its stores alone.

Two tables, written by ``cemaps analyze`` when the study's images are toy-world images
(:func:`is_toy_world_store`):

- **Which layers localise** (:func:`localisation_table`): for every base record of a
  single-object concrete toy prompt ("a red circle"), the judge's mask of the generated
  object of the asked colour (the largest, when there are several) against the colour and
  shape words' captured maps, scored by DAAM's protocol [Tang et al. 2023, "What the DAAM:
  Interpreting Stable Diffusion Using Cross Attention", ACL] (:mod:`cemaps.toyworld.attention`:
  bilinear upsampling, max-normalised, threshold 0.4, IoU), per layer and for the maps
  averaged over layers. Records where the
  judge finds no object of the asked colour have no mask and are counted, not scored.
- **Did each personalization learn its subject?** (:func:`subject_check_table`): every
  image of the in-context store (the subject's token in new contexts) judged by
  :func:`cemaps.toyworld.subject_check.shows_subject`, per model, beside the base twin's
  rate with the class word alone (the floor).

Example:
    >>> summarise_localisation(pd.DataFrame(
    ...     {"layer": ["a", "a"], "word": ["colour", "shape"], "iou": [0.5, 0.25], "object_found": [True, True],
    ...      "model_id": "base", "prompt_id": "t1", "seed": 0}))[["layer", "word", "miou", "images"]]
      layer    word  miou  images
    0     a  colour  0.50       1
    1     a   shape  0.25       1
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cemaps.labelled import CROSS_ATTENTION_PREFIX, LabelledArray
from cemaps.study.config import BASE_ID
from cemaps.toyworld.attention import layer_ious
from cemaps.toyworld.judge import judge_image
from cemaps.toyworld.language import PromptSpec
from cemaps.toyworld.subject_check import DETECTORS, SUBJECT_RATE_TARGET, shows_subject
from cemaps.toyworld.suite import specs_by_text
from cemaps.toyworld.world import IMAGE_SIZE

ALL_LAYERS = "all layers"
FILES = {"localisation": "toyworld_localisation.csv", "subjects": "toyworld_subjects.csv"}


def single_object_words(spec: PromptSpec | None) -> tuple[str, str] | None:
    """(colour word, shape word) of a one-object prompt that names both, else None."""
    if spec is None or len(spec.phrases) != 1:
        return None
    phrase = spec.phrases[0]
    if phrase.colour is None or (phrase.count or 1) != 1:
        return None
    return phrase.colour, phrase.kind


def _image_side(store) -> int | None:
    records = store.records
    if records.empty:
        return None
    return int(store.images(records.iloc[:1])[0].shape[0])


def is_toy_world_store(store) -> bool:
    """Whether a store's images are toy-world images: 32x32 and prompts from the toy suite or toy subjects."""
    if _image_side(store) != IMAGE_SIZE:
        return False
    prompts = store.prompts
    texts = set(specs_by_text())
    if "text" in prompts.columns and prompts["text"].astype(str).isin(texts).any():
        return True
    return "subject_id" in prompts.columns and prompts["subject_id"].isin(list(DETECTORS)).any()


def _record_arrays(store, record: int, tokens: list[str]) -> dict[str, LabelledArray]:
    arrays = {}
    for name in store.array_names:
        if not name.startswith(CROSS_ATTENTION_PREFIX):
            continue
        values = store.read_one(name, record)
        axes = store.axes(name)
        arrays[name] = LabelledArray(values, axes, {"token": tokens[: values.shape[axes.index("token")]]})
    return arrays


def localisation_table(store) -> pd.DataFrame:
    """IoU of the colour and shape words' maps with the judged object mask, per base record and layer.

    The mask is that of the largest object of the asked colour the judge finds; the maps are
    averaged over captured steps, guidance halves and heads first (:func:`~cemaps.toyworld.attention.layer_ious`).

    Args:
        store: an open :class:`cemaps.store.StoreReader` of a toy-world study.

    Returns:
        Columns model_id, prompt_id, seed, layer (a layer path or ``"all layers"``), word
        (``colour`` / ``shape``), iou (in [0, 1]; NaN where no object was found),
        object_found (bool). Empty when the store has no single-object base records.
    """
    specs = specs_by_text()
    prompts = store.prompts
    wanted = {
        prompt_id: words
        for prompt_id, text in prompts["text"].astype(str).items()
        if (words := single_object_words(specs.get(text))) is not None
    }
    records = store.records
    records = records[(records["model_id"] == BASE_ID) & records["prompt_id"].isin(list(wanted))]
    rows = []
    for row in records.itertuples(index=False):
        colour, kind = wanted[row.prompt_id]
        image = store.images([row.record])[0]
        found = [o for o in judge_image(image) if o.colour == colour]
        key = {"model_id": row.model_id, "prompt_id": row.prompt_id, "seed": int(row.seed)}
        if not found:
            rows.append({**key, "layer": ALL_LAYERS, "word": "colour", "iou": np.nan, "object_found": False})
            continue
        arrays = _record_arrays(store, int(row.record), list(prompts.at[row.prompt_id, "tokens"]))
        for name, by_word in layer_ious(arrays, [colour, kind], found[0].mask).items():
            for word, value in by_word.items():
                label = "colour" if word == colour else "shape"
                rows.append({**key, "layer": name, "word": label, "iou": value, "object_found": True})
    columns = ["model_id", "prompt_id", "seed", "layer", "word", "iou", "object_found"]
    return pd.DataFrame(rows, columns=columns)


def best_layer(summary: pd.DataFrame) -> tuple[str, float, str, float]:
    """(best layer, its mIoU, worst layer, its mIoU), by the mean over words of :func:`summarise_localisation`'s mIoU.

    ``"all layers"`` is not a layer and is left out.
    """
    per_layer = summary[summary["layer"] != ALL_LAYERS].groupby("layer", sort=False)["miou"].mean()
    return str(per_layer.idxmax()), float(per_layer.max()), str(per_layer.idxmin()), float(per_layer.min())


def summarise_localisation(table: pd.DataFrame) -> pd.DataFrame:
    """mIoU per layer and word over the records where the object was found (DAAM's mIoU).

    Returns:
        Columns layer, word, miou, images (records scored), images_without_object (records
        of the same prompts where the judge found no object of the asked colour).
    """
    found = table[table["object_found"]]
    summary = found.groupby(["layer", "word"], sort=False)["iou"].agg(miou="mean", images="size").reset_index()
    missing = table.loc[~table["object_found"], ["prompt_id", "seed"]].drop_duplicates()
    summary["images_without_object"] = len(missing)
    return summary


def subject_check_table(store) -> pd.DataFrame:
    """Per model of an in-context store: the share of its images that show its subject.

    Args:
        store: an open in-context store (``study.in_context.h5``) of a study with toy subjects.

    Returns:
        Columns model_id, method, subject_id, images, shows_subject, rate, base_rate (the base
        twin's rate on the same templates: the class word alone), learned (rate >= 0.7).
        Empty when no subject is a toy subject.
    """
    prompts, models, records = store.prompts, store.models, store.records
    records = records.assign(subject_id=records["prompt_id"].map(prompts["subject_id"]))
    records = records[records["subject_id"].isin(list(DETECTORS))]
    if records.empty:
        return pd.DataFrame(
            columns=["model_id", "method", "subject_id", "images", "shows_subject", "rate", "base_rate", "learned"]
        )
    shown = [
        shows_subject(subject, image)
        for subject, image in zip(records["subject_id"], store.images(records), strict=True)
    ]
    records = records.assign(shows=shown)
    base = records[records["model_id"] == BASE_ID].groupby("subject_id")["shows"].mean()
    rows = []
    for model_id, group in records[records["model_id"] != BASE_ID].groupby("model_id", sort=False):
        subject = str(group["subject_id"].iloc[0])
        rate = float(group["shows"].mean())
        rows.append(
            {
                "model_id": model_id,
                "method": models.at[model_id, "method"] if "method" in models.columns else None,
                "subject_id": subject,
                "images": len(group),
                "shows_subject": int(group["shows"].sum()),
                "rate": rate,
                "base_rate": float(base.get(subject, np.nan)),
                "learned": rate >= SUBJECT_RATE_TARGET,
            }
        )
    return pd.DataFrame(rows)


def analyse_toy_world(store_path: str | Path, out: str | Path) -> dict[str, str]:
    """Writes the toy-world checks of a study into ``out`` when its stores hold toy-world images.

    Args:
        store_path: the study's main store; its in-context twin is read when it exists.
        out: the results folder.

    Returns:
        Result name -> file name (relative to ``out``); empty when the study is not a toy-world study.
    """
    from cemaps.store import open_store
    from cemaps.study.prompt_sets import in_context_store_path

    out = Path(out)
    files: dict[str, str] = {}
    with open_store(store_path) as store:
        if is_toy_world_store(store):
            table = localisation_table(store)
            if not table.empty:
                summarise_localisation(table).to_csv(out / FILES["localisation"], index=False)
                files["toyworld_localisation"] = FILES["localisation"]
    in_context = in_context_store_path(Path(store_path))
    if in_context.exists():
        with open_store(in_context) as store:
            if is_toy_world_store(store):
                table = subject_check_table(store)
                if not table.empty:
                    table.to_csv(out / FILES["subjects"], index=False)
                    files["toyworld_subjects"] = FILES["subjects"]
    return files
