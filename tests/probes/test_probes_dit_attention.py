"""Text attention of SD3 / SD3.5, Flux and PixArt-Sigma: each layer kind against a hand computation.

The hand computations use only the layer's own inputs (read by a plain pre-hook) and its own
submodules, with an explicit softmax over the whole row; no cemaps code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

import cemaps
from cemaps.models.tiny_dit import tiny_flux_pipeline, tiny_pixart_sigma_pipeline, tiny_sd3_pipeline

PROMPTS = ["a red lighthouse", "a dog"]
CALL = {"num_inference_steps": 2, "max_sequence_length": 12, "output_type": "np"}
FLUX_SIZE = {"height": 64, "width": 64}


@pytest.fixture(scope="module")
def pipes():
    return {
        "sd3": tiny_sd3_pipeline(seed=0),
        "sd3.5": tiny_sd3_pipeline(seed=1, version="3.5"),
        "flux": tiny_flux_pipeline(seed=0),
        "pixart": tiny_pixart_sigma_pipeline(seed=0),
    }


def _kwargs(family: str) -> dict:
    extra = FLUX_SIZE if family == "flux" else {"clean_caption": False} if family == "pixart" else {}
    return {**CALL, **extra, "generator": torch.Generator().manual_seed(0)}


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    shifted = scores - scores.max(dim=-1, keepdim=True).values
    return shifted.exp() / shifted.exp().sum(dim=-1, keepdim=True)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:  # [b, s, h*d] -> [b, s, h, d]
    return x.unflatten(-1, (heads, x.shape[-1] // heads))


def _by_hand(attn, call: dict, kind: str, text_length: int) -> torch.Tensor:
    """[batch, head, image queries, text keys] of the softmax the layer computes, from its inputs."""
    hidden = call["hidden_states"]
    heads = attn.heads
    q, k = _heads(attn.to_q(hidden), heads), _heads(attn.to_k(hidden), heads)
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    if kind == "cross":  # PixArt attn2: keys from the text, the layer's mask as a bias
        k = _heads(attn.to_k(call["encoder_hidden_states"]), heads)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scale + call["attention_mask"][:, None]
        return _softmax(scores)
    if kind == "joint":
        context = call["encoder_hidden_states"]
        kt, qt = _heads(attn.add_k_proj(context), heads), _heads(attn.add_q_proj(context), heads)
        if getattr(attn, "norm_added_k", None) is not None:
            kt, qt = attn.norm_added_k(kt), attn.norm_added_q(qt)
        text_first = call.get("image_rotary_emb") is not None  # Flux (text first, rotary); SD3 (image first)
        q = torch.cat([qt, q], dim=1) if text_first else torch.cat([q, qt], dim=1)
        k = torch.cat([kt, k], dim=1) if text_first else torch.cat([k, kt], dim=1)
    else:
        text_first = True
    if call.get("image_rotary_emb") is not None:
        q = apply_rotary_emb(q, call["image_rotary_emb"], sequence_dim=1)
        k = apply_rotary_emb(k, call["image_rotary_emb"], sequence_dim=1)
    probs = _softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1]))
    if text_first:
        return probs[:, :, text_length:, :text_length]
    image = probs.shape[2] - text_length
    return probs[:, :, :image, image:]


CASES = [
    ("sd3", "transformer_blocks.0.attn", "joint"),
    ("sd3", "transformer_blocks.1.attn", "joint"),
    ("sd3.5", "transformer_blocks.0.attn", "joint"),
    ("flux", "transformer_blocks.1.attn", "joint"),
    ("flux", "single_transformer_blocks.0.attn", "single"),
    ("pixart", "transformer_blocks.1.attn2", "cross"),
]


@pytest.mark.parametrize(("family", "layer", "kind"), CASES)
def test_captured_block_equals_the_hand_computed_softmax(pipes, family, layer, kind):
    pipe = pipes[family]
    attn = pipe.transformer.get_submodule(layer)
    calls: list[dict] = []
    contexts: list[int] = []
    inputs = attn.register_forward_pre_hook(
        lambda m, a, kw: calls.append({**dict(zip(["hidden_states"], a, strict=False)), **kw}), with_kwargs=True
    )
    texts = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: contexts.append(kw["encoder_hidden_states"].shape[1]), with_kwargs=True
    )
    halves = "cond" if family == "flux" else "both"
    probe = cemaps.CrossAttentionProbe(
        layers=[layer], timesteps="all", heads="all", tokens="all", spatial="native", dtype="float32", halves=halves
    )
    try:
        with cemaps.capture(pipe, [probe]) as run:
            pipe(PROMPTS, **_kwargs(family))
    finally:
        inputs.remove()
        texts.remove()
    records = run.records()
    assert len(records) == len(PROMPTS) and len(calls) == CALL["num_inference_steps"]
    for step, call in enumerate(calls):
        with torch.no_grad():
            expected = _by_hand(attn, call, kind, contexts[step]).numpy()  # [rows, head, query, text]
        for image, record in enumerate(records):
            maps = record[f"cross_attention/{layer}"]
            for half_index, half in enumerate(maps.coords["half"]):
                row = half_index * len(PROMPTS) + image if halves == "both" else image
                got = maps.values[:, step, half_index].reshape(maps.shape[0], maps.shape[3], -1)  # token head query
                np.testing.assert_allclose(got.transpose(1, 2, 0), expected[row], atol=1e-5, err_msg=half)
            if kind != "cross":
                mass = record[f"cross_attention/{layer}:text_mass"].values[step, -1].reshape(maps.shape[3], -1)
                np.testing.assert_allclose(
                    mass, expected[image + (len(PROMPTS) if halves == "both" else 0)].sum(-1), atol=1e-5
                )


@pytest.mark.parametrize("family", ["sd3", "sd3.5", "flux", "pixart"])
def test_images_are_bit_identical_with_capture_on(pipes, family):
    pipe = pipes[family]
    plain = pipe(PROMPTS, **_kwargs(family)).images
    probe = cemaps.CrossAttentionProbe(timesteps="all", heads="all", halves="both" if family != "flux" else "cond")
    with cemaps.capture(pipe, [probe]):
        captured = pipe(PROMPTS, **_kwargs(family)).images
    assert np.array_equal(plain, captured)
