"""Writes ``v1_store/``: a schema-v1 store (gzip-4 + shuffle) made by cemaps before schema v2.

It was generated once with the store code of commit 2a74e93 (the last one writing v1):
``git worktree add /tmp/v1 2a74e93 && PYTHONPATH=/tmp/v1/src python tests/store/data/make_v1_store.py``.
The tests import :func:`maps` to know what every record holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

AXES = ("token", "step", "half", "head", "y", "x")
LAYERS = ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn2")
MODELS = (
    {"model_id": "base", "method": "base", "subject_id": None},
    {"model_id": "lora-a", "method": "lora", "subject_id": "object1"},
)
PROMPTS = (
    {
        "prompt_id": "p0",
        "text": "a red mug",
        "tokens": ["<s>", "a</w>", "red</w>", "mug</w>", "</s>"],
        "token_ids": [0, 1, 2, 3, 4],
        "abstractness": "concrete",
        "domain": "object",
    },
    {
        "prompt_id": "p1",
        "text": "freedom",
        "tokens": ["<s>", "freedom</w>", "</s>"],
        "token_ids": [0, 5, 4],
        "abstractness": "abstract",
        "domain": "abstract_idea",
    },
)
SETTINGS = {"capture": {"half_labels": ["cond"], "heads": "mean", "spatial": 4}, "generation": {"steps": 2}}
BASE = {"model_id": "synthetic-v1"}


def maps(model_index: int, prompt_index: int, layer_index: int) -> np.ndarray:
    """float16 [token, step=2, half=1, head=1, y=4, x=4]: positive, smooth, different per model."""
    tokens = len(PROMPTS[prompt_index]["tokens"])
    rng = np.random.default_rng([model_index, prompt_index, layer_index])
    logits = rng.standard_normal((tokens, 2, 1, 1, 4, 4)) * (1 + model_index)
    return (np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)).astype(np.float16)


def main(folder: Path) -> None:
    from cemaps.store import StoreWriter

    folder.mkdir(parents=True, exist_ok=True)
    with StoreWriter(folder / "study.h5", settings=SETTINGS, base=BASE, records_per_part=3) as writer:
        writer.add_models(list(MODELS))
        writer.add_prompts(list(PROMPTS))
        for m, model in enumerate(MODELS):
            for p, prompt in enumerate(PROMPTS):
                arrays = {f"cross_attention/{layer}": maps(m, p, i) for i, layer in enumerate(LAYERS)}
                image = np.full((8, 8, 3), 40 * m + p, dtype=np.uint8)
                writer.write_record(
                    model["model_id"], prompt["prompt_id"], 0, arrays, axes={name: AXES for name in arrays}, image=image
                )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "v1_store")
