"""The study runner: paired records, resume, crash safety, user probes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from cemaps.errors import StoreError
from cemaps.probes import CrossAttentionSettings, Probe
from cemaps.probes.examples import OutputNormProbe
from cemaps.store import open_store
from cemaps.study.config import GenerationSettings, StudyConfig
from cemaps.study.runner import run_study

PROMPTS = ["a red mug", "freedom", "two cats on a sofa", "a foggy harbour", "an oil painting of a pear", "joy"]


def _config(**overrides):
    values = dict(
        prompts=PROMPTS[:2],
        seeds=(0, 1),
        generation=GenerationSettings(steps=2, batch_size=2),
        capture=CrossAttentionSettings(timesteps=2),
    )
    values.update(overrides)
    return StudyConfig(**values)


def _content(path):
    """Every record's arrays and image, keyed by (model, prompt, seed)."""
    with open_store(path) as store:
        records = store.records
        out = {}
        for row in records.itertuples():
            arrays = {name: store.read_one(name, row.record) for name in store.array_names}
            out[(row.model_id, row.prompt_id, row.seed)] = (arrays, store.images([row.record])[0])
        return out


def _assert_same_content(a, b):
    assert a.keys() == b.keys()
    for key in a:
        arrays_a, image_a = a[key]
        arrays_b, image_b = b[key]
        assert arrays_a.keys() == arrays_b.keys()
        for name in arrays_a:
            np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=f"{key} {name}")
        np.testing.assert_array_equal(image_a, image_b)


def test_resume_skips_completed_records(tmp_path, tiny_pipe):
    first = run_study(_config(seeds=(0,)), tmp_path / "s.h5", progress=False, pipe=tiny_pipe)
    assert (first.written, first.skipped) == (2, 0)
    second = run_study(_config(seeds=(0,)), tmp_path / "s.h5", progress=False, pipe=tiny_pipe)
    assert (second.written, second.skipped) == (0, 2)


def test_records_per_image_match_a_direct_capture(tmp_path, tiny_pipe):
    run_study(
        _config(seeds=(5,), generation=GenerationSettings(steps=2, batch_size=1)),
        tmp_path / "s.h5",
        progress=False,
        pipe=tiny_pipe,
    )
    image = tiny_pipe(
        ["freedom"],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(5)],
        negative_prompt=[""],
        output_type="np",
    ).images[0]
    with open_store(tmp_path / "s.h5") as store:
        record = store.records.query("prompt_id == 'q001'").record.iloc[0]
        np.testing.assert_array_equal(store.images([record])[0], (np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def test_a_user_probe_is_captured_and_stored(tmp_path, tiny_pipe):
    assert isinstance(OutputNormProbe(), Probe)
    run_study(_config(seeds=(0,)), tmp_path / "s.h5", progress=False, pipe=tiny_pipe, probes=[OutputNormProbe()])
    with open_store(tmp_path / "s.h5") as store:
        name = "output_norm/mid_block.attentions.0.transformer_blocks.0.attn2"
        assert name in store.array_names
        assert store.axes(name) == ("step", "half")
        norms = store.read_one(name, 0)
        assert norms.shape[1] == 2 and (norms > 0).all()
        assert store.settings["probes"] == ["cross_attention", "output_norm"]


CONFIG = """
base: cemaps/tiny-sd
prompts: {prompts}
seeds: [0]
generation: {{steps: 3, batch_size: 1}}
capture: {{timesteps: 2}}
"""


def _capture_command(config, store):
    return [
        sys.executable,
        "-m",
        "cemaps",
        "capture",
        "-c",
        str(config),
        "-o",
        str(store),
        "--records-per-part",
        "1",
        "--no-progress",
    ]


def test_sigkill_mid_capture_then_resume_equals_an_uninterrupted_run(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(prompts=PROMPTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.h5"
    process = subprocess.Popen(
        _capture_command(config, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    seen = 0
    while time.time() < deadline and process.poll() is None:
        if killed.exists():
            try:
                with open_store(killed) as store:
                    seen = len(store.records)
            except Exception:
                seen = 0
        if seen >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the capture finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open_store(killed) as store:  # readable, completed records intact
        survivors = len(store.records)
        assert 2 <= survivors < len(PROMPTS)
    partial = _content(killed)
    resumed = subprocess.run(_capture_command(config, killed), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean.h5"
    finished = subprocess.run(_capture_command(config, clean), env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    full, reference = _content(killed), _content(clean)
    _assert_same_content(full, reference)
    _assert_same_content(partial, {key: reference[key] for key in partial})


def test_a_store_made_with_the_old_default_pattern_resumes_when_the_selected_layers_are_equal(tmp_path, tiny_pipe):
    """The default ``layers`` changed from "*attn2" to "all"; on a UNet both select every attn2."""
    store = tmp_path / "s.h5"
    old = _config(capture=CrossAttentionSettings(timesteps=2, layers="*attn2"))
    first = run_study(old, store, progress=False, pipe=tiny_pipe)
    resumed = run_study(_config(), store, progress=False, pipe=tiny_pipe)  # default layers="all"
    assert first.written == resumed.skipped == 4 and resumed.written == 0
    one_layer = _config(capture=CrossAttentionSettings(timesteps=2, layers="mid_block.*attn2"))
    with pytest.raises(StoreError, match="capture setting 'capture.layers"):
        run_study(one_layer, store, progress=False, pipe=tiny_pipe)
