"""The pixel judge on images whose truth is known (the renderer's)."""

from __future__ import annotations

import numpy as np

from cemaps.toyworld.attention import heatmap_mask, iou, word_token_positions
from cemaps.toyworld.judge import judge_image, nearest_background, pale_share, warm_share
from cemaps.toyworld.language import Phrase, PromptSpec, sample_scene
from cemaps.toyworld.world import COLOURS, KINDS, POSITIONS, Scene, ToyObject, render


def test_judge_reads_colour_shape_and_position_of_rendered_objects():
    rng = np.random.default_rng(0)
    hits = {"colour": 0, "shape": 0, "position": 0}
    n = 120
    for _ in range(n):
        kind, colour = str(rng.choice(KINDS)), str(rng.choice(list(COLOURS)))
        position = str(rng.choice(list(POSITIONS)))
        scene = sample_scene(PromptSpec((Phrase(kind, colour, style="filled", position=position),)), rng)
        found = judge_image(render(scene)[0])
        hits["colour"] += found[0].colour == colour
        hits["shape"] += found[0].kind == kind
        hits["position"] += found[0].position == position
    assert hits["colour"] == n and hits["position"] == n
    assert hits["shape"] >= 0.9 * n  # small fish and faces lose detail at 32x32


def test_judge_counts_separate_objects_and_finds_their_masks():
    scene = Scene(
        (
            ToyObject("circle", "red", "small", (6.0, 6.0)),
            ToyObject("circle", "red", "small", (26.0, 26.0)),
            ToyObject("star", "blue", "medium", (16.0, 16.0)),
        ),
        background="white",
    )
    image, masks = render(scene)
    found = judge_image(image)
    assert sorted(o.colour for o in found) == ["blue", "red", "red"]
    blue = next(o for o in found if o.colour == "blue")
    assert iou(blue.mask, masks[2]) > 0.8
    assert nearest_background(image) == "white"


def test_colour_features_of_warm_and_pale_scenes():
    warm = render(Scene((ToyObject("square", "orange", "large"),)))[0]
    cold = render(Scene((ToyObject("square", "blue", "large"),)))[0]
    pale = render(Scene((ToyObject("square", "blue", "large", pale=True),)))[0]
    assert warm_share(warm) > 0.9 and warm_share(cold) < 0.1
    assert pale_share(pale) > 0.8 and pale_share(cold) < 0.2
    assert np.isnan(warm_share(np.zeros((32, 32, 3), dtype=np.uint8)))


def test_heatmap_threshold_and_token_positions():
    heat = np.zeros((16, 16))
    heat[0:4, 0:4] = 1.0
    mask = heatmap_mask(heat, 32)
    assert mask[:6, :6].all() and not mask[16:, 16:].any()
    assert not heatmap_mask(np.zeros((16, 16)), 32).any()
    assert word_token_positions(["<|startoftext|>", "a</w>", "red</w>", "circle</w>"], "red") == [2]
