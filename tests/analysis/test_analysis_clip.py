"""ClipScorer: CLIPScore convention, the tiny scorer, and loading local weights safely and fast."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from cemaps.analysis.clip_scorer import TINY_CLIP_CONFIG, ClipScorer, clip_score_from_embeddings
from cemaps.errors import ConfigError, ModelLoadError

TINY_NAME = "cemaps-test-tiny-clip"


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer.tiny(seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def registered_tiny_config(tmp_path_factory):
    """Registers the tiny architecture under a name, as a user registers a custom open_clip config."""
    folder = tmp_path_factory.mktemp("clip_config")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_NAME


def test_clip_score_is_100_times_positive_cosine():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    text = np.array([[0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(clip_score_from_embeddings(image, text), [0.0, 0.0, 100.0])
    np.testing.assert_allclose(clip_score_from_embeddings(np.array([[1.0, 0.0]]), np.array([[0.8, 0.6]])), [80.0])


def test_scorer_clip_score_uses_its_embeddings(scorer, images):
    texts = ["a red mug on a table", "an abstract painting of freedom", "a dog"]
    cosine = np.sum(scorer.image_embeddings(images) * scorer.text_embeddings(texts), axis=-1)
    np.testing.assert_allclose(scorer.clip_score(images, texts), 100 * np.maximum(cosine, 0), rtol=1e-6)


def test_embeddings_are_unit_rows_of_the_embedding_size(scorer, images):
    image_embeddings = scorer.image_embeddings(images, batch_size=2)
    text_embeddings = scorer.text_embeddings(["a", "b", "c", "d"])
    assert image_embeddings.shape == (3, scorer.embed_dim) and text_embeddings.shape == (4, scorer.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(image_embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_embeddings, axis=1), 1.0, rtol=1e-5)
    # batching does not change results
    np.testing.assert_allclose(image_embeddings, scorer.image_embeddings(images, batch_size=3), atol=1e-6)


def test_tiny_scorer_is_deterministic_and_tells_images_apart(images):
    a, b, other = ClipScorer.tiny(seed=0), ClipScorer.tiny(seed=0), ClipScorer.tiny(seed=1)
    np.testing.assert_array_equal(a.image_embeddings(images), b.image_embeddings(images))
    np.testing.assert_array_equal(a.text_embeddings(["a mug"]), b.text_embeddings(["a mug"]))
    assert not np.allclose(a.text_embeddings(["a mug"]), other.text_embeddings(["a mug"]))
    embeddings = a.image_embeddings(images)
    assert (embeddings @ embeddings.T)[0, 1] < 0.999
    # building it leaves the global RNG alone
    state = torch.random.get_rng_state()
    ClipScorer.tiny(seed=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_bad_inputs_raise_config_error(scorer, images):
    with pytest.raises(ConfigError, match="uint8"):
        scorer.image_embeddings(images.astype(np.float32))
    with pytest.raises(ConfigError, match=r"\[n, H, W, 3\]"):
        scorer.image_embeddings(images[0])
    with pytest.raises(ConfigError, match="sequence of strings"):
        scorer.text_embeddings("a mug")
    with pytest.raises(ConfigError, match="one text per image"):
        scorer.clip_score(images, ["only one"])


def test_missing_weights_file_fails_fast_in_one_line(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        ClipScorer.load("ViT-B-32", tmp_path / "open_clip_model.safetensors")
    assert time.perf_counter() - start < 2.0
    message = str(error.value)
    assert "\n" not in message and "does not exist" in message and "--clip-weights" in message


def test_weights_absent_from_cache_fail_fast_in_one_line(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        ClipScorer.load("ViT-B-32", None, cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0
    message = str(error.value)
    assert "\n" not in message and "laion2b_s34b_b79k" in message and "--clip-weights" in message


def test_unknown_architecture_and_suffix_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not an open_clip architecture"):
        ClipScorer.load("ViT-Q-99", tmp_path / "x.safetensors")
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="suffix '.npz'"):
        ClipScorer.load("ViT-B-32", weights)


def test_local_safetensors_load_roundtrip(tmp_path, registered_tiny_config, images):
    source = ClipScorer.tiny(seed=0)
    weights = tmp_path / "open_clip_model.safetensors"
    save_file(source.model.state_dict(), str(weights))
    loaded = ClipScorer.load(registered_tiny_config, weights, device="cpu")
    np.testing.assert_allclose(loaded.text_embeddings(["a mug"]), source.text_embeddings(["a mug"]), atol=1e-6)
    np.testing.assert_allclose(loaded.image_embeddings(images), source.image_embeddings(images), atol=1e-5)


def test_pickle_weights_need_opt_in_and_load_with_weights_only(tmp_path, registered_tiny_config):
    source = ClipScorer.tiny(seed=0)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.model.state_dict(), weights)
    with pytest.raises(ModelLoadError, match="pickle-based"):
        ClipScorer.load(registered_tiny_config, weights)
    loaded = ClipScorer.load(registered_tiny_config, weights, allow_pickle=True, device="cpu")
    np.testing.assert_allclose(loaded.text_embeddings(["a cat"]), source.text_embeddings(["a cat"]), atol=1e-6)


def test_pickle_with_code_is_refused_even_with_opt_in(tmp_path, registered_tiny_config):
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": copy.deepcopy}, weights)
    with pytest.raises(ModelLoadError) as error:
        ClipScorer.load(registered_tiny_config, weights, allow_pickle=True)
    assert "\n" not in str(error.value)


def test_weights_for_another_architecture_are_a_one_line_error(tmp_path, registered_tiny_config):
    weights = tmp_path / "other.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(weights))
    with pytest.raises(ModelLoadError, match="could not be loaded as") as error:
        ClipScorer.load(registered_tiny_config, weights)
    assert "\n" not in str(error.value)
