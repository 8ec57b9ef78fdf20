"""The abstract words: captions the toy world defines as distributions over concrete features.

"a warm picture" is 2-3 shapes in warm colours, "a lonely scene" one small shape near an
edge, and so on (:data:`ABSTRACT_WORDS`, each with its definition in words), so abstract
prompts are learnable but indirect, as in real language. Scenes are drawn with
:func:`cemaps.toyworld.language.sample_scene`; :func:`random_training_pair` mixes them with
concrete and compositional captions for training.

Example:
    >>> scene = ABSTRACT_BY_TEXT["a warm picture"].sample(np.random.default_rng(0))
    >>> all(o.colour in WARM_COLOURS for o in scene.objects)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from cemaps.toyworld.language import (
    Phrase,
    PromptSpec,
    _place,
    _region_for,
    caption,
    random_spec,
    sample_scene,
)
from cemaps.toyworld.world import (
    COLOURS,
    COOL_COLOURS,
    IMAGE_SIZE,
    KINDS,
    SHAPES,
    SIZES,
    WARM_COLOURS,
    Scene,
)


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
