"""Captions and their meanings: prompt specs, scene sampling, and the abstract words.

A :class:`PromptSpec` is what a concrete or compositional caption says (one or two
noun phrases, an optional relation and background); :func:`caption` writes it in
English and :func:`sample_scene` draws a scene that makes it true, filling what the
caption leaves unsaid from the world's prior. Abstract captions ("a warm picture")
are words the world defines as distributions over concrete features
(:data:`ABSTRACT_WORDS`), so they are learnable but indirect.

Example:
    >>> spec = PromptSpec((Phrase("circle", colour="red"),))
    >>> caption(spec)
    'a red circle'
    >>> scene = sample_scene(spec, np.random.default_rng(0))
    >>> scene.objects[0].kind, scene.objects[0].colour
    ('circle', 'red')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from cemaps.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    COOL_COLOURS,
    EXPRESSIONS,
    GLYPHS,
    IMAGE_SIZE,
    KINDS,
    POSITIONS,
    SHAPES,
    SIZES,
    WARM_COLOURS,
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


# ----------------------------------------------------------------------------- abstract words


def _scene_of(
    rng: np.random.Generator,
    phrases: list[Phrase],
    background: str | None = None,
    centres: list[tuple[float, float]] | None = None,
) -> Scene:
    scene = sample_scene(PromptSpec(tuple(phrases[:1]), background=background), rng)
    objects = list(scene.objects)
    for phrase in phrases[1:]:
        extra = sample_scene(PromptSpec((phrase,)), rng).objects
        taken = [(*o.centre, SIZES[o.size]) for o in objects]
        placed = _place(rng, [o.size for o in extra], _region_for(None, None), taken)
        objects += [replace(o, centre=c) for o, c in zip(extra, placed, strict=False)]
    if centres is not None:
        objects = [replace(o, centre=c) for o, c in zip(objects, centres, strict=False)]
    return Scene(tuple(objects), scene.background)


def _pick(rng: np.random.Generator, options) -> str:
    return str(rng.choice(list(options)))


def _edge_centre(rng: np.random.Generator, size: str) -> tuple[float, float]:
    r = SIZES[size]
    along = rng.uniform(r, IMAGE_SIZE - r)
    edge = rng.integers(4)
    near = rng.uniform(r, r + 1.5)
    return [(near, along), (IMAGE_SIZE - near, along), (along, near), (along, IMAGE_SIZE - near)][edge]


def _warm(rng):
    return _scene_of(rng, [Phrase(_pick(rng, SHAPES), _pick(rng, WARM_COLOURS)) for _ in range(rng.integers(2, 4))])


def _cold(rng):
    return _scene_of(rng, [Phrase(_pick(rng, SHAPES), _pick(rng, COOL_COLOURS)) for _ in range(rng.integers(2, 4))])


def _chaotic(rng):
    return _scene_of(
        rng,
        [
            Phrase(_pick(rng, KINDS), size="small", style=_pick(rng, ("filled", "striped", "dotted")))
            for _ in range(rng.integers(5, 8))
        ],
    )


def _orderly(rng):
    phrase = Phrase(_pick(rng, SHAPES), _pick(rng, COLOURS), size="small", style="filled")
    y = rng.uniform(10, 22)
    return _scene_of(rng, [phrase] * 3, centres=[(7.0, y), (16.0, y), (25.0, y)])


def _crowded(rng):
    return _scene_of(rng, [Phrase(_pick(rng, SHAPES), size="small") for _ in range(rng.integers(6, 9))])


def _lonely(rng):
    phrase = Phrase(_pick(rng, SHAPES), size="small")
    return _scene_of(rng, [phrase], centres=[_edge_centre(rng, "small")])


def _calm(rng):
    return _scene_of(
        rng,
        [
            Phrase(_pick(rng, ("circle", "ring", "square")), pale=True, style="filled")
            for _ in range(rng.integers(1, 3))
        ],
        background="grey",
    )


def _gloomy(rng):
    return _scene_of(
        rng,
        [Phrase(_pick(rng, SHAPES), _pick(rng, ("brown", "purple", "blue"))) for _ in range(rng.integers(1, 3))],
        background="grey",
    )


def _face(expression: str, colours) -> Callable[[np.random.Generator], Scene]:
    return lambda rng: _scene_of(rng, [Phrase("face", _pick(rng, colours), expression=expression)])


def _sharp(rng):
    return _scene_of(rng, [Phrase(_pick(rng, ("star", "triangle", "cross")))])


def _soft(rng):
    return _scene_of(rng, [Phrase(_pick(rng, ("circle", "ring")), pale=bool(rng.random() < 0.5))])


def _heavy(rng):
    phrase = Phrase(_pick(rng, ("square", "circle")), _pick(rng, ("brown", "purple")), size="large", style="filled")
    return _scene_of(rng, [phrase], centres=[(rng.uniform(11, 21), IMAGE_SIZE - SIZES["large"] - 0.5)])


def _light(rng):
    phrase = Phrase(_pick(rng, SHAPES), size="small", pale=True)
    return _scene_of(rng, [phrase], centres=[(rng.uniform(8, 24), SIZES["small"] + 1.0)])


def _delicate(rng):
    return _scene_of(rng, [Phrase(_pick(rng, SHAPES), style="outline", pale=True) for _ in range(rng.integers(1, 3))])


def _bold(rng):
    return _scene_of(rng, [Phrase(_pick(rng, SHAPES), size="large", style="filled")])


def _playful(rng):
    return _scene_of(rng, [Phrase(_pick(rng, KINDS), style="dotted") for _ in range(rng.integers(2, 4))])


def _restless(rng):
    return _scene_of(
        rng, [Phrase(_pick(rng, SHAPES), style="striped", size="small") for _ in range(rng.integers(3, 5))]
    )


def _lost_fish(rng):
    return _scene_of(rng, [Phrase("fish", size="small")], centres=[_edge_centre(rng, "small")])


def _shy_fish(rng):
    return _scene_of(rng, [Phrase("fish", size="small", pale=True)])


def _proud_fish(rng):
    return _scene_of(
        rng, [Phrase("fish", _pick(rng, WARM_COLOURS), size="large", style="filled")], centres=[(16.0, 16.0)]
    )


def _hungry_fish(rng):
    facing = _pick(rng, ("left", "right"))
    fish_x, food_x = (20.0, 6.0) if facing == "left" else (12.0, 26.0)
    y = rng.uniform(11, 21)
    return _scene_of(
        rng,
        [Phrase("fish", size="medium", facing=facing), Phrase("circle", "brown", size="small")],
        centres=[(fish_x, y), (food_x, y)],
    )


@dataclass(frozen=True)
class AbstractWord:
    """An abstract caption, its domain, what defines it, and a sampler of scenes that mean it."""

    text: str
    domain: str
    definition: str
    sample: Callable[[np.random.Generator], Scene]


ABSTRACT_WORDS: tuple[AbstractWord, ...] = (
    AbstractWord("a warm picture", "abstract_idea", "2-3 shapes in warm colours (red, orange, yellow, pink)", _warm),
    AbstractWord("a cold picture", "abstract_idea", "2-3 shapes in cool colours (green, cyan, blue, purple)", _cold),
    AbstractWord("a chaotic picture", "abstract_idea", "5-7 small mixed objects in mixed styles", _chaotic),
    AbstractWord("an orderly picture", "abstract_idea", "three identical small shapes in a row", _orderly),
    AbstractWord("a crowded scene", "scene", "6-8 small shapes", _crowded),
    AbstractWord("a lonely scene", "scene", "one small shape near an edge", _lonely),
    AbstractWord("a calm scene", "scene", "1-2 pale round or square shapes on grey", _calm),
    AbstractWord("a gloomy scene", "scene", "1-2 brown, purple or blue shapes on grey", _gloomy),
    AbstractWord("a happy face", "person", "a smiling face in a warm colour", _face("smiling", WARM_COLOURS)),
    AbstractWord("a sad face", "person", "a frowning face in blue or cyan", _face("frowning", ("blue", "cyan"))),
    AbstractWord("an angry face", "person", "a frowning red face", _face("frowning", ("red",))),
    AbstractWord("a tired face", "person", "a sleeping face", _face("sleeping", tuple(COLOURS))),
    AbstractWord("a sharp shape", "object", "a star, triangle or cross", _sharp),
    AbstractWord("a soft shape", "object", "a circle or ring, often pale", _soft),
    AbstractWord("a heavy shape", "object", "a large brown or purple square or circle at the bottom", _heavy),
    AbstractWord("a light shape", "object", "a small pale shape at the top", _light),
    AbstractWord("a delicate drawing", "style", "1-2 pale outlined shapes", _delicate),
    AbstractWord("a bold drawing", "style", "one large filled shape", _bold),
    AbstractWord("a playful drawing", "style", "2-3 dotted objects", _playful),
    AbstractWord("a restless drawing", "style", "3-4 small striped shapes", _restless),
    AbstractWord("a lost fish", "animal", "one small fish near an edge", _lost_fish),
    AbstractWord("a shy fish", "animal", "one small pale fish", _shy_fish),
    AbstractWord("a proud fish", "animal", "a large warm-coloured fish in the centre", _proud_fish),
    AbstractWord("a hungry fish", "animal", "a fish facing a small brown circle (food)", _hungry_fish),
)
ABSTRACT_BY_TEXT = MappingProxyType({word.text: word for word in ABSTRACT_WORDS})


def random_training_pair(rng: np.random.Generator, abstract_share: float = 0.2) -> tuple[Scene, str]:
    """One (scene, caption) training pair: concrete/compositional, or an abstract word's scene."""
    if rng.random() < abstract_share:
        word = ABSTRACT_WORDS[int(rng.integers(len(ABSTRACT_WORDS)))]
        return word.sample(rng), word.text
    spec = random_spec(rng)
    return sample_scene(spec, rng), caption(spec)
