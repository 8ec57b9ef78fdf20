"""CLIP embeddings and CLIPScore for generated images, through open_clip.

The scorer is the one model that analysis/ runs. It loads from a local weights
file or from open_clip's Hugging Face cache and never downloads: a missing file
fails at once with a message that says how to provide it.

Example:
    >>> import numpy as np
    >>> scorer = ClipScorer.tiny(seed=0)
    >>> images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    >>> scorer.clip_score(images, ["a red mug", "a red mug"]).shape
    (2,)
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from PIL import Image

from cemaps.errors import ConfigError, ModelLoadError

DEFAULT_MODEL_NAME = "ViT-B-32"
DEFAULT_PRETRAINED_TAG = "laion2b_s34b_b79k"
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# The tiny scorer's architecture, in open_clip's model-config format (open_clip.add_model_config accepts it).
TINY_CLIP_CONFIG: dict = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# OpenAI CLIP's normalisation; the tiny scorer uses it so its preprocessing matches ViT-B-32's.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _how_to_provide(model_name: str) -> str:
    return (
        f"pass --clip-weights /path/to/open_clip_model.safetensors (or open_clip_pytorch_model.bin with "
        f"allow_pickle) for {model_name} (e.g. laion2b_s34b_b79k; OpenAI weights need {model_name}-quickgelu)"
    )


def _cached_weights(model_name: str, pretrained_tag: str, cache_dir: str | Path | None) -> Path | None:
    """The local file of an open_clip pretrained tag in the Hugging Face cache, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag)
    if not cfg or not cfg.get("hf_hub"):
        return None
    # open_clip writes hub entries as "org/repo/file" or "org/repo/" (meaning its default file name).
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    # Prefer the safetensors twin of a pickle file, as open_clip's own downloader does.
    safe_twin = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else str(Path(filename).with_suffix(".safetensors"))
    candidates = [safe_twin, filename]
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipScorer:
    """Image and text embeddings from an open_clip CLIP model, and CLIPScore.

    Attributes:
        model: the open_clip model, in eval mode on ``device``.
        preprocess: PIL image -> float tensor [3, S, S] (resize, crop, normalise).
        tokenizer: list of strings -> LongTensor [n, context_length].
        device: where the model runs.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
    ) -> ClipScorer:
        """Wraps an already built open_clip model (tests, notebooks)."""
        return cls(model, preprocess, tokenizer)

    @classmethod
    def load(
        cls,
        model_name: str = DEFAULT_MODEL_NAME,
        weights: str | Path | None = None,
        *,
        pretrained_tag: str = DEFAULT_PRETRAINED_TAG,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
    ) -> ClipScorer:
        """Loads an open_clip model from a local file or the local Hugging Face cache; never downloads.

        Args:
            model_name: an open_clip architecture name, e.g. ``"ViT-B-32"``.
            weights: a local ``.safetensors`` file (or pickle-based ``.bin``/``.pt`` with
                ``allow_pickle``). None looks ``pretrained_tag`` up in the local Hugging Face cache.
            pretrained_tag: the open_clip tag to find in the cache when ``weights`` is None.
            cache_dir: the Hugging Face hub cache to look in; None for the default (``HF_HUB_CACHE``).
            device: where to run; None picks CUDA when available.
            allow_pickle: opt in to pickle-based files; they are still read with
                ``torch.load(weights_only=True)``, so no code in them runs.

        Raises:
            ModelLoadError: the file is missing, unsafe without opt-in, or does not fit ``model_name``.
        """
        if model_name not in open_clip.list_models():
            raise ModelLoadError(f"CLIP model name {model_name!r} is not an open_clip architecture (e.g. 'ViT-B-32')")
        if weights is None:
            path = _cached_weights(model_name, pretrained_tag, cache_dir)
            if path is None:
                raise ModelLoadError(
                    f"CLIP weights for {model_name}/{pretrained_tag} are not in the local Hugging Face cache; "
                    + _how_to_provide(model_name)
                )
        else:
            path = Path(weights)
            if not path.is_file():
                raise ModelLoadError(f"CLIP weights file {str(path)!r} does not exist; " + _how_to_provide(model_name))
        suffix = path.suffix.lower()
        if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"CLIP weights file {str(path)!r} has suffix {suffix!r}; expected one of "
                f"{', '.join(SAFE_SUFFIXES + PICKLE_SUFFIXES)}"
            )
        if suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise ModelLoadError(
                f"CLIP weights file {str(path)!r} is pickle-based; convert it to .safetensors "
                "(Python: ClipScorer.load(..., allow_pickle=True) reads it with torch.load(weights_only=True))"
            )
        from cemaps.models.safety import check_weights_file

        check_weights_file(path, allow_pickle, role="CLIP weights file")
        device = device if device is not None else _default_device()
        # Belt and braces: nothing below should reach the network, and if it tries it must fail at once.
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(path), device=device, weights_only=True
            )
        except pickle.UnpicklingError:
            raise ModelLoadError(
                f"CLIP weights file {str(path)!r} holds Python objects besides tensors; refused by "
                "torch.load(weights_only=True); expected a plain state dict (ideally .safetensors)"
            ) from None
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            from cemaps.errors import one_line

            detail = one_line(error)  # not just the first line: a state-dict error's first line names no key
            detail = detail if len(detail) <= 600 else detail[:600] + " ..."
            raise ModelLoadError(
                f"CLIP weights file {str(path)!r} could not be loaded as {model_name}: {detail}"
            ) from error
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
        return cls(model, preprocess, open_clip.get_tokenizer(model_name), device=device)

    @classmethod
    def tiny(cls, seed: int = 0) -> ClipScorer:
        """A randomly initialised, CPU-sized CLIP built in-process: deterministic, no download.

        It is ViT-B-32's structure in miniature (:data:`TINY_CLIP_CONFIG`: a patch ViT and a
        causal text transformer with OpenAI's 49,408-token BPE), so every code path of the
        real scorer runs.
        """
        config = copy.deepcopy(TINY_CLIP_CONFIG)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.CLIP(**config)
        # A random class embedding outweighs the patches in the pooled token, so every
        # image would embed alike (cos > 0.99); without it images are told apart.
        with torch.no_grad():
            model.visual.class_embedding.zero_()
        image_size = config["vision_cfg"]["image_size"]
        preprocess = open_clip.image_transform(image_size, is_train=False, mean=_OPENAI_MEAN, std=_OPENAI_STD)
        tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
        return cls(model, preprocess, tokenizer, device="cpu")

    @torch.inference_mode()
    def image_embeddings(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """L2-normalised image embeddings.

        Args:
            images: uint8 [n, H, W, 3] RGB images.
            batch_size: images per forward pass.

        Returns:
            float32 [n, d].
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ConfigError(f"images have dtype {images.dtype} and shape {images.shape}; expected uint8 [n, H, W, 3]")
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack(
                [self.preprocess(Image.fromarray(image)) for image in images[start : start + batch_size]]
            )
            out.append(self.model.encode_image(batch.to(self.device), normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings.

        Args:
            texts: n strings (longer ones are truncated to the tokenizer's context length).

        Returns:
            float32 [n, d].
        """
        if isinstance(texts, str):
            raise ConfigError(f"texts is the string {texts[:40]!r}; expected a sequence of strings")
        texts = list(texts)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    def clip_score(self, images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """CLIPScore of each image with its text: ``100 * max(cos, 0)`` (torchmetrics' convention).

        Args:
            images: uint8 [n, H, W, 3].
            texts: n strings, one per image.

        Returns:
            float32 [n] in [0, 100].
        """
        if len(images) != len(texts):
            raise ConfigError(
                f"clip_score got {len(images)} images and {len(texts)} texts; expected one text per image"
            )
        return clip_score_from_embeddings(self.image_embeddings(images), self.text_embeddings(texts))


def clip_score_from_embeddings(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """CLIPScore from L2-normalised embeddings.

    Args:
        image_embeddings: [n, d], unit rows.
        text_embeddings: [n, d], unit rows.

    Returns:
        [n] = 100 * max(cos, 0).
    """
    cosine = np.sum(image_embeddings * text_embeddings, axis=-1)
    return 100.0 * np.maximum(cosine, 0.0)
