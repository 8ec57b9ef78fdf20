"""Judging a toy-world pipeline: does it draw what its prompts say? (pixels only)

:func:`evaluate_pipeline` generates images for single-object concrete prompts (colour x
shape), positioned prompts, counted prompts and abstract words, judges each image from
its pixels (:mod:`cemaps.toyworld.judge`), and scores the colour and shape tokens'
cross-attention maps against the judged object masks (:mod:`cemaps.toyworld.attention`).
The same prompts are also rendered by the world itself and judged, so every accuracy
comes with the judge's own ceiling measured side by side, and the renders are passed through
the pipeline's VAE (encode, decode) and judged again: a reference for any UNet that decodes
through that VAE (what its decoder makes of the right latents).

Example:
    >>> [judged_caption(spec) for spec in single_object_specs()[:2]]
    ['a red circle', 'an orange square']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cemaps.toyworld.abstract_words import ABSTRACT_BY_TEXT
from cemaps.toyworld.attention import layer_ious
from cemaps.toyworld.judge import cool_share, judge_image, pale_share, warm_share
from cemaps.toyworld.language import Phrase, PromptSpec, caption, sample_scene
from cemaps.toyworld.world import COLOURS, IMAGE_SIZE, KINDS, POSITIONS, render

ABSTRACT_FEATURES: dict[str, tuple[str, Callable[[np.ndarray], float]]] = {
    "a warm picture": ("share of warm-coloured pixels", warm_share),
    "a cold picture": ("share of cool-coloured pixels", cool_share),
    "a calm scene": ("share of pale pixels", pale_share),
    "a crowded scene": ("objects >= 5", lambda image: float(len(judge_image(image)) >= 5)),
    "a lonely scene": ("one object within 9 px of an edge", lambda image: _lonely(image)),
}


def _lonely(image: np.ndarray) -> float:
    objects = judge_image(image)
    if len(objects) != 1:
        return 0.0
    x, y = objects[0].centroid
    return float(min(x, y, IMAGE_SIZE - x, IMAGE_SIZE - y) <= 9.0)


def single_object_specs() -> list[PromptSpec]:
    """One filled object per prompt, every colour and every kind at least twice (18 prompts)."""
    colours = list(COLOURS)
    return [
        PromptSpec((Phrase(KINDS[i % len(KINDS)], colours[i % len(colours)], style="filled"),))
        for i in range(2 * len(colours))
    ]


def position_specs() -> list[PromptSpec]:
    colours = list(COLOURS)
    return [
        PromptSpec(
            (
                Phrase(
                    ("circle", "square", "star", "triangle", "cross")[i],
                    colours[2 * i],
                    style="filled",
                    position=position,
                ),
            )
        )
        for i, position in enumerate(POSITIONS)
    ]


def count_specs() -> list[PromptSpec]:
    return [
        PromptSpec((Phrase(kind, colour, count=count, style="filled"),))
        for count, kind, colour in (
            (1, "circle", "blue"),
            (2, "square", "red"),
            (3, "circle", "yellow"),
            (2, "star", "green"),
            (3, "square", "purple"),
            (1, "star", "orange"),
        )
    ]


def judged_caption(spec: PromptSpec) -> str:
    """The prompt text of a judged spec: its objects are drawn filled, the unsaid default, so
    "filled" is not written (the prompts read as users write them)."""
    phrase = spec.phrases[0]
    return caption(PromptSpec((Phrase(**{**phrase.__dict__, "style": None}),), spec.relation, spec.background))


@dataclass(frozen=True)
class Generated:
    texts: list[str]
    seeds: list[int]
    images: np.ndarray  # uint8 [n, H, W, 3]
    records: list[dict] | None  # per image captured arrays, when capture was on


def generate(
    pipe,
    texts: list[str],
    seeds: list[int],
    steps: int = 20,
    guidance_scale: float = 5.0,
    batch_size: int = 16,
    capture_attention: bool = False,
) -> Generated:
    """Generates one image per (text, seed), in batches; optionally captures cross-attention."""
    from cemaps.hooks import capture
    from cemaps.probes import CrossAttentionProbe

    jobs = [(t, s) for t in texts for s in seeds]
    images, records = [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        kwargs = dict(num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators, output_type="np")
        prompts = [t for t, _ in chunk]
        if capture_attention:
            probe = CrossAttentionProbe(layers="*attn2", timesteps=5, heads="mean", spatial="native", dtype="float32")
            with capture(pipe, [probe]) as run:
                out = pipe(prompts, **kwargs).images
            records += run.records()
        else:
            out = pipe(prompts, **kwargs).images
        images.append(np.clip(np.round(out * 255), 0, 255).astype(np.uint8))
    return Generated([t for t, _ in jobs], [s for _, s in jobs], np.concatenate(images), records or None)


def judge_single(image: np.ndarray, spec: PromptSpec) -> dict[str, float]:
    """Colour / shape / position correctness of the largest judged object (NaN where not asked)."""
    phrase = spec.phrases[0]
    objects = judge_image(image)
    if not objects:
        return {"colour": 0.0, "shape": 0.0, "position": 0.0 if phrase.position else np.nan}
    main = objects[0]
    return {
        "colour": float(main.colour == phrase.colour),
        "shape": float(main.kind == phrase.kind),
        "position": float(main.position == phrase.position) if phrase.position else np.nan,
    }


def judge_count(image: np.ndarray, spec: PromptSpec) -> float:
    phrase = spec.phrases[0]
    return float(sum(o.colour == phrase.colour for o in judge_image(image)) == phrase.count)


def _rendered(texts_specs: list[tuple[str, PromptSpec | None]], seeds: list[int]) -> np.ndarray:
    images = []
    for text, spec in texts_specs:
        for seed in seeds:
            rng = np.random.default_rng(10_000 + seed)
            scene = ABSTRACT_BY_TEXT[text].sample(rng) if spec is None else sample_scene(spec, rng)
            images.append(render(scene)[0])
    return np.stack(images)


@torch.no_grad()
def vae_round_trip(pipe, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``images`` (uint8 [n, H, W, 3]) encoded by ``pipe.vae`` (posterior mean) and decoded again, uint8."""
    out = []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
        pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample.float().clamp(-1, 1)
        out.append(((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def evaluate_pipeline(
    pipe,
    seeds: list[int],
    steps: int = 20,
    guidance_scale: float = 5.0,
    with_attention: bool = True,
    batch_size: int = 16,
) -> dict:
    """Judge accuracies (generated vs rendered), abstract features, and per-layer mIoU.

    Returns:
        ``accuracy``: rows (check, source) with the mean and the number of images; sources are
        ``generated``, ``rendered`` (the judge's ceiling) and ``rendered + VAE`` (the renders after
        :func:`vae_round_trip`: what the pipeline's decoder makes of their encoded latents);
        ``abstract``: per abstract word, its feature for generated images, rendered images and
        the empty prompt; ``miou``: per layer, mean IoU of the colour and shape words' maps over
        images where the judge found the asked colour (``miou_images`` of them).
    """
    singles, positions, counts = single_object_specs(), position_specs(), count_specs()
    rows = []
    single_texts = [judged_caption(s) for s in singles]
    generated = generate(pipe, single_texts, seeds, steps, guidance_scale, batch_size, capture_attention=with_attention)
    rendered = _rendered([(t, s) for t, s in zip(single_texts, singles, strict=False)], seeds)
    ious = []
    sources = (
        ("generated", generated.images),
        ("rendered", rendered),
        ("rendered + VAE", vae_round_trip(pipe, rendered)),
    )
    for source, images in sources:
        for index, image in enumerate(images):
            spec = singles[index // len(seeds)]
            rows.append({"source": source, **judge_single(image, spec)})
            if source == "generated" and generated.records is not None:
                phrase = spec.phrases[0]
                objects = [o for o in judge_image(image) if o.colour == phrase.colour]
                mask = objects[0].mask if objects else np.zeros(image.shape[:2], dtype=bool)
                for layer, by_word in layer_ious(generated.records[index], [phrase.colour, phrase.kind], mask).items():
                    for word, value in by_word.items():
                        ious.append(
                            {
                                "image": index,
                                "layer": layer,
                                "token": "colour" if word == phrase.colour else "shape",
                                "iou": value,
                                "object_found": bool(objects),
                            }
                        )
    table = pd.DataFrame(rows)
    accuracy = [
        {"check": check, "source": source, "accuracy": group[check].mean(), "images": int(group[check].notna().sum())}
        for source, group in table.groupby("source")
        for check in ("colour", "shape")
    ]
    for name, specs, judge in (
        ("position", positions, lambda im, sp: judge_single(im, sp)["position"]),
        ("count 1-3", counts, judge_count),
    ):
        texts = [judged_caption(s) for s in specs]
        rendered = _rendered(list(zip(texts, specs, strict=False)), seeds)
        sources = {
            "generated": generate(pipe, texts, seeds, steps, guidance_scale, batch_size).images,
            "rendered": rendered,
            "rendered + VAE": vae_round_trip(pipe, rendered),
        }
        for source, images in sources.items():
            values = [judge(image, specs[i // len(seeds)]) for i, image in enumerate(images)]
            accuracy.append(
                {"check": name, "source": source, "accuracy": float(np.mean(values)), "images": len(values)}
            )
    words = list(ABSTRACT_FEATURES)
    abstract_generated = generate(pipe, words + [""], seeds, steps, guidance_scale, batch_size).images
    abstract_rendered = _rendered([(w, None) for w in words], seeds)
    abstract = []
    n = len(seeds)
    prior = abstract_generated[len(words) * n :]
    for i, word in enumerate(words):
        feature, measure = ABSTRACT_FEATURES[word]
        abstract.append(
            {
                "word": word,
                "feature": feature,
                "generated": float(np.nanmean([measure(im) for im in abstract_generated[i * n : (i + 1) * n]])),
                "rendered": float(np.nanmean([measure(im) for im in abstract_rendered[i * n : (i + 1) * n]])),
                "empty prompt": float(np.nanmean([measure(im) for im in prior])),
            }
        )
    result = {"accuracy": pd.DataFrame(accuracy), "abstract": pd.DataFrame(abstract)}
    if ious:
        # DAAM scores maps against ground-truth objects: images where the judge found no object of
        # the asked colour have no mask to score against and are left out (their number is reported)
        frame = pd.DataFrame(ious)
        found = frame[frame["object_found"]]
        miou = found.pivot_table(index="layer", columns="token", values="iou", aggfunc="mean")
        miou["mean"] = miou.mean(axis=1)
        result["miou"] = miou.sort_values("mean", ascending=False)
        result["miou_images"] = int(found["image"].nunique())
    return result
