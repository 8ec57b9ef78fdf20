"""examples/sdxl-study.yaml is a valid study config, and runs on the tiny SDXL with its own settings."""

from __future__ import annotations

from pathlib import Path

import cemaps
from cemaps.study.plan import plan_study

EXAMPLE = Path(__file__).parents[2] / "examples" / "sdxl-study.yaml"


def test_the_sdxl_example_reads_and_plans_on_the_tiny_sdxl(tmp_path):
    config = cemaps.load_config(EXAMPLE)
    assert config.base == "stabilityai/stable-diffusion-xl-base-1.0"
    assert [entry.method for entry in config.personalized] == ["lora", "textual_inversion", "dreambooth"]
    assert config.generation.negative_prompt and config.generation.height == 1024
    # the same study on the tiny SDXL (its personalized files are the user's to provide)
    tiny = config.with_overrides(base="cemaps/tiny-sdxl", personalized=(), prompts=["a red mug"], seeds=(0,))
    tiny = tiny.with_overrides(
        generation=type(config.generation)(**{**config.generation.__dict__, "steps": 2, "height": 64, "width": 64})
    )
    plan = plan_study(tiny, tmp_path / "s.h5", processes=1)
    assert (plan.models, plan.prompts, plan.seeds) == (1, 1, 1)
    assert plan.calibration.seconds_per_batch > 0  # a real SDXL batch ran with the example's settings
