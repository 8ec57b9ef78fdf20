"""The renderer: deterministic bytes, masks that match the painted pixels, captions that match scenes."""

from __future__ import annotations

import numpy as np
import pytest

from cemaps.toyworld.abstract_words import ABSTRACT_WORDS, random_training_pair
from cemaps.toyworld.language import Phrase, PromptSpec, caption, sample_scene
from cemaps.toyworld.world import BACKGROUNDS, COLOURS, KINDS, STYLES, Scene, ToyObject, render


def test_render_is_deterministic_for_a_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [render(random_training_pair(rng)[0]) for _ in range(20)]

    first, second, other = draw(3), draw(3), draw(4)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, second, strict=False))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=False))


@pytest.mark.parametrize("kind", KINDS)
def test_filled_object_mask_covers_exactly_the_painted_pixels(kind):
    image, masks = render(Scene((ToyObject(kind, "red", "large", (16.0, 16.0)),)))
    background = np.array(BACKGROUNDS["black"])
    painted = np.linalg.norm(image.astype(float) - background, axis=-1) > 100
    assert masks.shape == (1, 32, 32) and masks.dtype == bool
    # faces and fish have eyes drawn in the background colour inside the mask; edges are anti-aliased
    disagreement = np.logical_xor(painted, masks[0]).sum() / masks[0].sum()
    assert disagreement < 0.25
    red = image[masks[0] & painted].astype(int)[:, 0]
    assert np.all(red > 100) and np.median(red) == COLOURS["red"][0]  # edge pixels are >= half covered


def test_later_objects_hide_earlier_ones_in_the_masks():
    scene = Scene(
        (ToyObject("square", "blue", "large", (16.0, 16.0)), ToyObject("circle", "yellow", "small", (16.0, 16.0)))
    )
    _, masks = render(scene)
    assert not np.any(masks[0] & masks[1])
    assert masks[1].sum() > 20 and masks[0].sum() > masks[1].sum()


@pytest.mark.parametrize("style", STYLES)
def test_styles_paint_inside_the_silhouette(style):
    image, masks = render(Scene((ToyObject("square", "green", "large", (16.0, 16.0), style=style),)))
    outside = ~masks[0]
    assert np.abs(image[outside].astype(int) - np.array(BACKGROUNDS["black"])).max() < 130
    assert (image[masks[0]] == COLOURS["green"]).all(axis=-1).any()


def test_unknown_vocabulary_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="ToyObject.colour is 'gold'"):
        ToyObject("circle", "gold")


def test_sampled_scenes_make_their_captions_true():
    spec = PromptSpec((Phrase("ring", "blue", count=2), Phrase("star", "yellow")), relation="left of")
    assert caption(spec) == "two blue rings left of a yellow star"
    for seed in range(10):
        scene = sample_scene(spec, np.random.default_rng(seed))
        rings = [o for o in scene.objects if o.kind == "ring"]
        star = next(o for o in scene.objects if o.kind == "star")
        assert len(rings) == 2 and all(o.colour == "blue" for o in rings) and star.colour == "yellow"
        assert all(o.centre[0] < star.centre[0] for o in rings)


def test_every_abstract_word_samples_scenes_that_render():
    rng = np.random.default_rng(0)
    for word in ABSTRACT_WORDS:
        image, masks = render(word.sample(rng))
        assert image.shape == (32, 32, 3) and len(masks) >= 1, word.text
