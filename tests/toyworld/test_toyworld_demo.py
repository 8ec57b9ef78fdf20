"""``cemaps demo --world toy``: its inputs, and a bad world name refused before anything is written.

The whole demo runs end to end in tests/test_fresh_clone_demo.py (`make demo` from a fresh clone).
"""

from __future__ import annotations

import pandas as pd
import pytest

from cemaps.data import load_prompts, load_subjects
from cemaps.demo import run_demo
from cemaps.errors import ConfigError
from cemaps.toyworld.demo_inputs import write_demo_inputs


def test_unknown_world_is_refused_before_the_output_folder_is_made(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(ConfigError, match="demo world 'sd15' is unknown; expected 'tiny' or 'toy'"):
        run_demo(out, world="sd15", progress=False)
    assert not out.exists()


def test_toy_demo_inputs_are_a_balanced_24_prompt_list_and_three_subjects(tmp_path):
    inputs = write_demo_inputs(tmp_path, n_images=2)
    prompts = load_prompts(inputs.prompts)
    assert len(prompts) == 24 and prompts.groupby("abstractness").size().tolist() == [8, 8, 8]
    subjects = load_subjects(inputs.subjects)
    assert set(subjects["subject_id"]) == set(inputs.subject_images)
    assert all(
        len(images) == 2 and images[0].size == (inputs.size, inputs.size) for images in inputs.subject_images.values()
    )
    assert isinstance(pd.read_csv(inputs.prompts), pd.DataFrame)


# The end-to-end run of the toy demo is tests/test_fresh_clone_demo.py: `make demo` from a fresh clone.
