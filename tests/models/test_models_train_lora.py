"""LoRA trainer: diffusers loads the artifact, the caller's pipe is untouched, runs are reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cemaps.models.train import TrainSettings, personalize

STEPS = 3


@pytest.fixture(scope="module")
def subject_images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), colour) for colour in ("saddlebrown", "white")]


def render(pipe, prompt: str = "a watercolor of a lighthouse") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images


def train(pipe, images, out, seed=0, **settings):
    # lr 1e-2: a few steps must move the tiny model visibly; the schedule itself is the script's.
    settings = TrainSettings(method="lora", steps=STEPS, learning_rate=1e-2, seed=seed, **settings)
    return personalize(pipe, "lora", images, "sks", "dog", out, settings, progress=False)


def test_lora_artifact_loads_in_diffusers_and_changes_outputs(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    result = train(pipe, subject_images, tmp_path / "lora")
    assert result.artifact == tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert sorted(p.name for p in result.out.iterdir()) == [
        ".cemaps-output.json",
        "cemaps_train.json",
        "pytorch_lora_weights.safetensors",
    ]
    assert len(result.losses) == STEPS and result.final_loss == result.losses[-1] and np.isfinite(result.losses).all()

    weights = load_file(result.artifact)
    assert weights and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in weights)

    loaded = tiny_pipe_factory(seed=0)
    base_image = render(loaded)
    loaded.load_lora_weights(result.out)
    assert np.abs(render(loaded) - base_image).max() > 0


def test_caller_pipe_is_bit_identical_after_training(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    module_names = [name for name, _ in pipe.unet.named_modules()]
    requires_grad = [p.requires_grad for p in pipe.unet.parameters()]
    base_image = render(pipe)
    rng_state = torch.random.get_rng_state()

    train(pipe, subject_images, tmp_path / "lora")

    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert [name for name, _ in pipe.unet.named_modules()] == module_names
    assert [p.requires_grad for p in pipe.unet.parameters()] == requires_grad
    assert all(p.grad is None for p in pipe.unet.parameters())
    assert not getattr(pipe.unet, "peft_config", None)
    assert np.array_equal(render(pipe), base_image)


def test_same_seed_same_weights_other_seed_other_weights(tiny_pipe_factory, subject_images, tmp_path):
    first = load_file(train(tiny_pipe_factory(seed=0), subject_images, tmp_path / "a", seed=0).artifact)
    again = load_file(train(tiny_pipe_factory(seed=0), subject_images, tmp_path / "b", seed=0).artifact)
    other = load_file(train(tiny_pipe_factory(seed=0), subject_images, tmp_path / "c", seed=1).artifact)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_attention_targets_cover_self_and_cross_attention(tiny_pipe_factory, subject_images, tmp_path):
    settings = TrainSettings(method="lora", steps=1, lora_targets="attention", rank=2)
    pipe = tiny_pipe_factory(seed=0)
    result = personalize(pipe, "lora", subject_images, "sks", "dog", tmp_path / "l", settings, progress=False)
    weights = load_file(result.artifact)
    for projection in ("attn1.to_q", "attn1.to_out.0", "attn2.to_k", "attn2.to_v"):
        assert any(f".{projection}." in k for k in weights), projection
    down_projections = [w for k, w in weights.items() if "lora_A" in k or "lora.down" in k]
    assert down_projections and {w.shape[0] for w in down_projections} == {2}


def test_metadata_records_settings_losses_seed_and_image_hashes(tiny_pipe_factory, subject_images, tmp_path):
    result = train(tiny_pipe_factory(seed=0), subject_images, tmp_path / "lora", seed=5)
    record = json.loads((result.out / "cemaps_train.json").read_text())
    assert record["method"] == "lora" and record["instance_prompt"] == "a photo of sks dog"
    assert record["settings"]["rank"] == 4 and record["settings"]["resolution"] == 64 and record["seed"] == 5
    assert record["losses"] == list(result.losses)
    assert len(record["source_images"]) == 2 and all(len(s["sha256"]) == 64 for s in record["source_images"])
    assert record["base_model"] == "cemaps/tiny-sd" and record["artifact"] == "pytorch_lora_weights.safetensors"


def test_overwrite_replaces_previous_contents(tiny_pipe_factory, subject_images, tmp_path):
    out = tmp_path / "lora"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    personalize(
        tiny_pipe_factory(seed=0),
        "lora",
        subject_images,
        "sks",
        "dog",
        out,
        TrainSettings(method="lora", steps=1),
        progress=False,
        overwrite=True,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        ".cemaps-output.json",
        "cemaps_train.json",
        "pytorch_lora_weights.safetensors",
    ]
    assert not list(tmp_path.glob(".lora.partial-*"))


def test_progress_bar_shows_the_loss(tiny_pipe_factory, subject_images, tmp_path, capsys):
    personalize(
        tiny_pipe_factory(seed=0),
        "lora",
        subject_images,
        "sks",
        "dog",
        tmp_path / "lora",
        TrainSettings(method="lora", steps=1),
        progress=True,
    )
    assert "loss" in capsys.readouterr().out


def test_instance_template_is_the_conditioning_prompt_recorded(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    settings = TrainSettings(method="lora", steps=2, instance_template="a {token} {class_word} on the left")
    result = personalize(pipe, "lora", subject_images, "sks", "dog", tmp_path / "lora", settings, progress=False)
    record = json.loads((result.out / "cemaps_train.json").read_text())
    assert record["instance_prompt"] == "a sks dog on the left"
    assert record["settings"]["instance_template"] == "a {token} {class_word} on the left"


def test_the_same_training_writes_the_same_tensors_and_metadata_under_any_hash_seed(tmp_path):
    """peft keeps target_modules as a set; its order in the file's metadata followed PYTHONHASHSEED.

    The file's bytes can still differ: safetensors (Rust) writes its metadata map's two keys in a
    per-process hash order. The tensors and the metadata's text are what cemaps makes, and those match.
    """
    import json
    import os
    import struct
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, torch
        torch.set_num_threads(1)
        from cemaps.data import synthetic_subject_images
        from cemaps.models import tiny_pipeline
        from cemaps.models.train import TrainSettings, personalize
        images = synthetic_subject_images("object1", n=2, size=64)
        settings = TrainSettings("lora", steps=2, batch_size=1, lora_targets="attention")
        personalize(tiny_pipeline(seed=0), "lora", images, "sks", "mug", sys.argv[1], settings, progress=False)
        """
    )
    contents = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"lora-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        raw = (out / "pytorch_lora_weights.safetensors").read_bytes()
        size = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + size])
        contents.append((raw[8 + size :], header["__metadata__"]["lora_adapter_metadata"]))
    assert contents[0] == contents[1] == contents[2]
    assert json.loads(contents[0][1])["unet.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
