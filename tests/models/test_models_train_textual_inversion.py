"""Textual Inversion trainer: one new row learned, diffusers loads it, tokenizer and table restored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cemaps.models.train import TrainSettings, personalize

TOKEN = "<my-dog>"


@pytest.fixture(scope="module")
def subject_images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), colour) for colour in ("saddlebrown", "white")]


def render(pipe, prompt: str) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images


def train(pipe, images, out, seed=0, steps=3, **settings):
    # lr 5e-2: a few steps must move the tiny embedding visibly; the schedule itself is the script's.
    settings = TrainSettings(method="textual_inversion", steps=steps, learning_rate=5e-2, seed=seed, **settings)
    return personalize(pipe, "textual_inversion", images, TOKEN, "dog", out, settings, progress=False)


def test_learned_embedding_loads_in_diffusers_and_changes_outputs(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    result = train(pipe, subject_images, tmp_path / "ti")
    assert sorted(p.name for p in result.out.iterdir()) == [
        ".cemaps-output.json",
        "cemaps_train.json",
        "learned_embeds.safetensors",
    ]
    learned = load_file(result.artifact)
    dim = pipe.text_encoder.get_input_embeddings().embedding_dim
    assert list(learned) == [TOKEN] and learned[TOKEN].shape == (dim,)
    dog_row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.encode("dog", add_special_tokens=False)[0]]
    assert not torch.equal(learned[TOKEN], dog_row.detach())  # started as "dog", then trained

    loaded = tiny_pipe_factory(seed=0)
    loaded.load_textual_inversion(result.out)
    # Same prompt with the initializer in place of the token: differs only by the learned row.
    assert np.abs(render(loaded, f"a photo of {TOKEN} dog") - render(loaded, "a photo of dog dog")).max() > 0


def test_only_the_new_row_is_trained(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    result = train(pipe, subject_images, tmp_path / "ti", steps=1)
    loaded = tiny_pipe_factory(seed=0)
    base_table = loaded.text_encoder.get_input_embeddings().weight.detach().clone()
    loaded.load_textual_inversion(result.out)
    table = loaded.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(table[: base_table.shape[0]], base_table)
    assert torch.equal(table[base_table.shape[0]], load_file(result.artifact)[TOKEN])


def test_caller_tokenizer_and_embedding_table_are_restored(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    embeddings = pipe.text_encoder.get_input_embeddings()
    table = embeddings.weight.detach().clone()
    vocab_size = len(pipe.tokenizer)
    token_ids = pipe.tokenizer(f"a photo of {TOKEN} dog").input_ids
    requires_grad = [p.requires_grad for p in pipe.text_encoder.parameters()]
    base_image = render(pipe, f"a photo of {TOKEN} dog")

    train(pipe, subject_images, tmp_path / "ti", steps=2, gradient_checkpointing=True)

    assert pipe.text_encoder.get_input_embeddings() is embeddings
    assert torch.equal(embeddings.weight, table)
    assert len(pipe.tokenizer) == vocab_size and pipe.tokenizer(f"a photo of {TOKEN} dog").input_ids == token_ids
    assert [p.requires_grad for p in pipe.text_encoder.parameters()] == requires_grad
    assert not pipe.text_encoder.is_activation_checkpointing and not pipe.unet.is_gradient_checkpointing
    assert all(p.grad is None for p in pipe.text_encoder.parameters())
    assert np.array_equal(render(pipe, f"a photo of {TOKEN} dog"), base_image)


def test_same_seed_same_embedding_other_seed_other_embedding(tiny_pipe_factory, subject_images, tmp_path):
    pipe = tiny_pipe_factory(seed=0)
    first = load_file(train(pipe, subject_images, tmp_path / "a", seed=0).artifact)[TOKEN]
    again = load_file(train(pipe, subject_images, tmp_path / "b", seed=0).artifact)[TOKEN]
    other = load_file(train(pipe, subject_images, tmp_path / "c", seed=1).artifact)[TOKEN]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_initializer_defaults_to_the_class_word_and_is_recorded(tiny_pipe_factory, subject_images, tmp_path):
    result = train(tiny_pipe_factory(seed=0), subject_images, tmp_path / "ti", steps=1)
    assert result.settings.initializer_token == "dog"
    record = json.loads((result.out / "cemaps_train.json").read_text())
    assert record["settings"]["initializer_token"] == "dog" and record["token"] == TOKEN
    assert record["settings"]["max_grad_norm"] is None  # the TI script does not clip


def test_multi_vector_embedding_is_the_form_diffusers_expands(tiny_pipe_factory, subject_images, tmp_path):
    """diffusers' --num_vectors 3: one file entry [3, dim]; loading adds <my-dog>, <my-dog>_1, <my-dog>_2."""
    pipe = tiny_pipe_factory(seed=0)
    vocab_size = len(pipe.tokenizer)
    result = train(pipe, subject_images, tmp_path / "ti", steps=2, num_vectors=3)
    learned = load_file(result.artifact)[TOKEN]
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    dog_row = table[pipe.tokenizer.encode("dog", add_special_tokens=False)[0]]
    assert learned.shape == (3, table.shape[1]) and len(pipe.tokenizer) == vocab_size
    assert all(not torch.equal(row, dog_row) for row in learned)  # every vector started as "dog", then trained
    # weight decay alone would move the three rows alike: they differ because each got its own gradient
    assert not torch.equal(learned[0], learned[1]) and not torch.equal(learned[1], learned[2])
    assert json.loads((result.out / "cemaps_train.json").read_text())["settings"]["num_vectors"] == 3

    loaded = tiny_pipe_factory(seed=0)
    loaded.load_textual_inversion(result.out)
    ids = loaded.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1", f"{TOKEN}_2"])
    assert torch.equal(loaded.text_encoder.get_input_embeddings().weight[ids].detach(), learned)
    assert loaded.maybe_convert_prompt(f"a photo of {TOKEN}", loaded.tokenizer).endswith(f"{TOKEN}_1 {TOKEN}_2")
