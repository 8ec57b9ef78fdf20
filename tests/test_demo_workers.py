"""The demo's process pool: two workers train and capture exactly what one process does (issue 25).

Each run trains a LoRA and a Textual Inversion of a synthetic subject on the tiny model (3 steps) and
captures a 6-prompt study of the base and both models, once with ``workers=2`` (spawned processes,
capture in ranks) and once with ``workers=1`` (in this process). One thread everywhere, so the
trained weights, maps and images are bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cemaps.data import synthetic_subject_images
from cemaps.demo_workers import DemoPool, TrainJob, default_workers
from cemaps.errors import ConfigError
from cemaps.models.aliases import TINY_MODEL_ID
from cemaps.models.train import TrainSettings
from cemaps.store import open_store
from cemaps.study.config_files import write_config

PROMPTS = ["a red mug", "freedom", "two cats on a sofa", "a foggy harbour", "an oil painting of a pear", "joy"]


def _jobs(folder: Path, class_word: str = "mug") -> list[TrainJob]:
    images = tuple(synthetic_subject_images("object1", n=2, size=64))
    return [
        TrainJob(
            "lora-a", "lora", images, "sks", class_word, folder / "lora-a", TrainSettings("lora", steps=3, batch_size=1)
        ),
        TrainJob(
            "ti-a",
            "textual_inversion",
            images,
            "<obj>",
            class_word,
            folder / "ti-a",
            TrainSettings("textual_inversion", steps=3, batch_size=1),
        ),
    ]


def _config(folder: Path) -> Path:
    return write_config(
        folder / "study.yaml",
        {
            "base": TINY_MODEL_ID,
            "prompts": PROMPTS,
            "seeds": [0, 1],
            "generation": {"steps": 3, "batch_size": 2},
            "capture": {"timesteps": 2},
            "personalized": [
                {"id": "lora-a", "method": "lora", "subject": "object1", "path": folder / "lora-a"},
                {
                    "id": "ti-a",
                    "method": "textual_inversion",
                    "subject": "object1",
                    "path": folder / "ti-a",
                    "token": "<obj>",
                },
            ],
        },
    )


def _run(folder: Path, workers: int) -> tuple[list[str], int]:
    finished: list[str] = []
    with DemoPool(TINY_MODEL_ID, threads=1, workers=workers) as pool:
        pool.train(_jobs(folder), progress=False, on_done=lambda model_id, seconds: finished.append(model_id))
        written = pool.capture(_config(folder), folder / "study.h5", progress=False)
    return finished, written


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {
        f"{name}/{key}": tensor
        for name in ("lora-a", "ti-a")
        for file in sorted((folder / name).glob("*.safetensors"))
        for key, tensor in load_file(file).items()
    }


def _records(path: Path) -> dict:
    with open_store(path) as store:
        return {
            (row.model_id, row.prompt_id, row.seed): (
                {name: store.read_one(name, row.record) for name in store.array_names},
                store.images([row.record])[0],
            )
            for row in store.records.itertuples()
        }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    return (one, _run(one, workers=1)), (two, _run(two, workers=2))


def test_two_workers_train_the_same_weights_as_one_process(runs):
    (one, (finished_one, _)), (two, (finished_two, _)) = runs
    assert sorted(finished_one) == sorted(finished_two) == ["lora-a", "ti-a"]
    reference, parallel = _weights(one), _weights(two)
    assert reference and reference.keys() == parallel.keys()
    for key, tensor in reference.items():
        assert torch.equal(tensor, parallel[key]), key


def test_two_ranks_capture_every_record_once_and_bit_identical(runs):
    (one, (_, written_one)), (two, (_, written_two)) = runs
    assert written_one == written_two == 3 * len(PROMPTS) * 2  # (base + 2 models) x prompts x seeds
    reference, parallel = _records(one / "study.h5"), _records(two / "study.h5")
    assert reference.keys() == parallel.keys() and len(reference) == written_one
    for key, (arrays, image) in reference.items():
        other_arrays, other_image = parallel[key]
        assert arrays.keys() == other_arrays.keys()
        for name, values in arrays.items():
            np.testing.assert_array_equal(values, other_arrays[name], err_msg=f"{key} {name}")
        assert np.array_equal(np.asarray(image), np.asarray(other_image)), key


def test_a_failing_job_in_a_worker_is_raised_here(tmp_path):
    with DemoPool(TINY_MODEL_ID, threads=1, workers=2) as pool, pytest.raises(ConfigError, match="class"):
        pool.train(_jobs(tmp_path, class_word=""), progress=False, on_done=lambda *_: None)
    assert not (tmp_path / "lora-a").exists()


def test_default_workers_are_the_usable_cores():
    import os

    assert default_workers() == len(os.sched_getaffinity(0))
