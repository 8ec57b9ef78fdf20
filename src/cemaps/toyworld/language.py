"""Captions and their meanings: prompt specs and scene sampling.

A :class:`PromptSpec` is what a concrete or compositional caption says (one or two
noun phrases, an optional relation and background); :func:`caption` writes it in
English and :func:`sample_scene` draws a scene that makes it true, filling what the
caption leaves unsaid from the world's prior. Abstract captions ("a warm picture")
are words the world defines as distributions over concrete features
(:data:`cemaps.toyworld.abstract_words.ABSTRACT_WORDS`), so they are learnable but indirect.

Example:
    >>> spec = PromptSpec((Phrase("circle", colour="red"),))
    >>> caption(spec)
    'a red circle'
    >>> scene = sample_scene(spec, np.random.default_rng(0))
    >>> scene.objects[0].kind, scene.objects[0].colour
    ('circle', 'red')
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from cemaps.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    EXPRESSIONS,
    GLYPHS,
    IMAGE_SIZE,
    KINDS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ToyObject,
)

RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = MappingProxyType({1: "a", 2: "two", 3: "three", 4: "four"})
PLURALS = MappingProxyType(
    {kind: ("fish" if kind == "fish" else "crosses" if kind == "cross" else kind + "s") for kind in KINDS}
)
POSITION_PHRASES = MappingProxyType(
    {
        "left": "on the left",
        "right": "on the right",
        "top": "at the top",
        "bottom": "at the bottom",
        "centre": "in the centre",
    }
)
STYLE_WORDS = MappingProxyType({"filled": "filled", "outline": "outlined", "striped": "striped", "dotted": "dotted"})
_PRIOR_STYLES = (("filled", 0.7), ("outline", 0.1), ("striped", 0.1), ("dotted", 0.1))
_PRIOR_BACKGROUNDS = (("black", 0.8), ("grey", 0.1), ("white", 0.1))


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: ``count`` objects of one description; None fields are left unsaid."""

    kind: str
    colour: str | None = None
    count: int = 1
    size: str | None = None
    style: str | None = None
    pale: bool = False
    expression: str | None = None
    facing: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """One or two phrases; with two, ``relation`` places the first relative to the second."""

    phrases: tuple[Phrase, ...]
    relation: str | None = None
    background: str | None = None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrase_text(phrase: Phrase) -> str:
    words = []
    if phrase.size:
        words.append(phrase.size)
    if phrase.pale:
        words.append("pale")
    if phrase.style:
        words.append(STYLE_WORDS[phrase.style])
    if phrase.colour:
        words.append(phrase.colour)
    if phrase.expression:
        words.append(phrase.expression)
    words.append(PLURALS[phrase.kind] if phrase.count > 1 else phrase.kind)
    head = NUMBER_WORDS[phrase.count] if phrase.count > 1 else _article(words[0])
    text = " ".join([head, *words])
    if phrase.facing:
        text += f" facing {phrase.facing}"
    if phrase.position:
        text += " " + POSITION_PHRASES[phrase.position]
    return text


def caption(spec: PromptSpec) -> str:
    """The English caption of a spec, e.g. ``'two blue rings left of a yellow star'``."""
    text = phrase_text(spec.phrases[0])
    if len(spec.phrases) == 2:
        text += f" {spec.relation} " + phrase_text(spec.phrases[1])
    if spec.background:
        text += f" on a {spec.background} background"
    return text


def _choose(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*weighted, strict=False)
    return str(rng.choice(names, p=np.array(weights) / sum(weights)))


def _region_for(position: str | None, relation_side: str | None) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): where object centres may go."""
    lo, hi = 5.0, IMAGE_SIZE - 5.0
    mid = IMAGE_SIZE / 2
    regions = {
        "left": (lo, mid - 3, lo, hi),
        "right": (mid + 3, hi, lo, hi),
        "top": (lo, hi, lo, mid - 3),
        "bottom": (lo, hi, mid + 3, hi),
    }
    return regions.get(relation_side or "", (lo, hi, lo, hi))


def _place(
    rng: np.random.Generator,
    sizes: list[str],
    region: tuple[float, float, float, float],
    taken: list[tuple[float, float, float]],
) -> list[tuple[float, float]]:
    """Centres for objects of the given sizes inside ``region``, not overlapping ``taken`` (x, y, r)."""
    centres = []
    x0, x1, y0, y1 = region
    for size in sizes:
        r = SIZES[size]
        best, best_gap = (0.0, 0.0), -np.inf
        for _ in range(60):
            x = rng.uniform(min(x0, x1), max(x0, x1)) if x1 > x0 else x0
            y = rng.uniform(min(y0, y1), max(y0, y1)) if y1 > y0 else y0
            x, y = float(np.clip(x, r, IMAGE_SIZE - r)), float(np.clip(y, r, IMAGE_SIZE - r))
            gap = min((np.hypot(x - ox, y - oy) - r - orr for ox, oy, orr in taken), default=np.inf)
            if gap > 1.0:
                best = (x, y)
                break
            if gap > best_gap:
                best, best_gap = (x, y), gap
        taken.append((*best, r))
        centres.append(best)
    return centres


def _fill(phrase: Phrase, rng: np.random.Generator) -> list[dict]:
    objects = []
    for _ in range(phrase.count):
        objects.append(
            dict(
                kind=phrase.kind,
                colour=phrase.colour or str(rng.choice(list(COLOURS))),
                size=phrase.size or str(rng.choice(["small", "medium"] if phrase.count > 2 else list(SIZES))),
                style=phrase.style or _choose(rng, _PRIOR_STYLES),
                pale=phrase.pale,
                expression=phrase.expression or str(rng.choice(EXPRESSIONS)),
                facing=phrase.facing or str(rng.choice(["left", "right"])),
            )
        )
    return objects


def sample_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A scene that makes the caption true; unsaid attributes come from the world's prior."""
    background = spec.background or _choose(rng, _PRIOR_BACKGROUNDS)
    taken: list[tuple[float, float, float]] = []
    objects: list[ToyObject] = []
    sides = (None,)
    if len(spec.phrases) == 2:
        sides = {
            "left of": ("left", "right"),
            "right of": ("right", "left"),
            "above": ("top", "bottom"),
            "below": ("bottom", "top"),
        }[spec.relation]
    for phrase, side in zip(spec.phrases, sides, strict=False):
        attributes = _fill(phrase, rng)
        sizes = [a["size"] for a in attributes]
        if phrase.position is not None and phrase.count == 1:
            jitter = rng.uniform(-1.5, 1.5, size=2)
            x, y = np.array(POSITIONS[phrase.position]) + jitter
            r = SIZES[sizes[0]]
            centres = [(float(np.clip(x, r, IMAGE_SIZE - r)), float(np.clip(y, r, IMAGE_SIZE - r)))]
            taken.append((*centres[0], r))
        else:
            centres = _place(rng, sizes, _region_for(phrase.position, side), taken)
        objects += [ToyObject(centre=c, **a) for c, a in zip(centres, attributes, strict=False)]
    return Scene(tuple(objects), background)


def random_spec(rng: np.random.Generator) -> PromptSpec:
    """A random concrete or compositional caption spec, with attributes mentioned at random (training)."""

    def phrase(count: int, allow_position: bool) -> Phrase:
        kind = str(rng.choice(KINDS, p=_KIND_WEIGHTS))
        return Phrase(
            kind=kind,
            colour=str(rng.choice(list(COLOURS))) if rng.random() < 0.85 else None,
            count=count,
            size=str(rng.choice(list(SIZES))) if count <= 2 and rng.random() < 0.35 else None,
            style=str(rng.choice(["outline", "striped", "dotted", "filled"])) if rng.random() < 0.25 else None,
            pale=bool(rng.random() < 0.08),
            expression=str(rng.choice(EXPRESSIONS)) if kind == "face" and rng.random() < 0.5 else None,
            facing=str(rng.choice(["left", "right"])) if kind == "fish" and count == 1 and rng.random() < 0.4 else None,
            position=str(rng.choice(list(POSITIONS))) if allow_position and rng.random() < 0.35 else None,
        )

    background = str(rng.choice(list(BACKGROUNDS))) if rng.random() < 0.2 else None
    if rng.random() < 0.6:
        count = int(rng.choice([1, 1, 1, 2, 3, 4]))
        return PromptSpec((phrase(count, allow_position=count == 1),), background=background)
    first, second = phrase(int(rng.choice([1, 1, 2])), False), phrase(1, False)
    return PromptSpec((first, second), relation=str(rng.choice(RELATIONS)), background=background)


_KIND_WEIGHTS = np.array([1.0] * len(SHAPES) + [0.8] * len(GLYPHS))
_KIND_WEIGHTS = _KIND_WEIGHTS / _KIND_WEIGHTS.sum()
