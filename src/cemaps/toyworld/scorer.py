"""The toy world's trained CLIP as a :class:`~cemaps.analysis.clip_scorer.ClipScorer`.

Its open_clip model config ships beside its ``.safetensors`` weights
(:func:`cemaps.toyworld.assets.shipped_clip_files`) and is added to open_clip's model
configs first, so :meth:`ClipScorer.load` builds and fills it like ViT-B-32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.errors import ModelLoadError
from cemaps.toyworld.assets import TOY_CLIP_NAME, TOY_CLIP_WEIGHTS, shipped_clip_files


def toy_clip_scorer(device: str | torch.device | None = None, folder: str | Path | None = None) -> ClipScorer:
    """The toy CLIP, loaded offline by :meth:`ClipScorer.load`.

    Args:
        device: where to run; None picks CUDA when available.
        folder: a folder written by ``cemaps toyworld train clip``; None for the shipped one.

    Raises:
        ModelLoadError: the package was installed without the toy CLIP's files, or ``folder``
            lacks ``cemaps-toyclip.json`` / ``open_clip_model.safetensors``.
    """
    import open_clip

    if folder is None:
        config, weights = shipped_clip_files()
    else:
        config, weights = Path(folder) / f"{TOY_CLIP_NAME}.json", Path(folder) / TOY_CLIP_WEIGHTS
        for path in (config, weights):
            if not path.is_file():
                raise ModelLoadError(
                    f"toy CLIP folder {str(folder)!r} has no {path.name}; expected a trained clip folder"
                )
    if TOY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(config)
    scorer = ClipScorer.load(TOY_CLIP_NAME, weights, device=device)
    scorer.description = f"{TOY_CLIP_NAME} (the toy world's trained CLIP)"  # named in the results manifest
    return scorer
