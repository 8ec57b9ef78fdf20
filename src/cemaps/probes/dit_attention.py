"""Text attention of transformer (DiT) layers, captured beside the model's own attention.

Three kinds of layer attend to text (see :func:`text_attention_layer`):

- ``cross``: true cross-attention (PixArt's ``attn2``): ``attn.get_attention_scores`` of the
  layer's query and key projections **with the mask the layer was given** (PixArt turns T5's
  attention mask into a ``-10000`` bias), so padded text positions get exactly 0, as in the model.
- ``joint``: a block where image and text tokens attend together (SD3's ``JointTransformerBlock``
  ``attn``, Flux's double-stream ``FluxTransformerBlock`` ``attn``): image queries, image keys and
  text keys (``to_q``, ``to_k``, ``add_k_proj``) after the layer's QK norms (``norm_q``, ``norm_k``,
  ``norm_added_k``) and rotary embedding (Flux's ``image_rotary_emb``, via diffusers'
  ``apply_rotary_emb``), in the order the layer's processor concatenates them.
- ``single``: Flux's single-stream ``FluxSingleTransformerBlock`` ``attn``: one sequence, text first,
  of as many tokens as the transformer call's ``encoder_hidden_states``.

Joint and single layers keep the image-query x text-key block of the joint softmax with its
full-row denominator and each query's ``text_mass`` (:func:`cemaps.probes.joint_scores.joint_text_block`).
Forward hooks only read the projections; the model's processor runs untouched (fast path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from cemaps.errors import CemapsError
from cemaps.probes.attention_scores import layer_grid, pooled_grid
from cemaps.probes.joint_scores import joint_text_block

LayerKind = Literal["cross", "joint", "single"]
# The processors whose concatenation order is known: Flux's puts text first, SD3's image first.
_TEXT_FIRST = {"FluxAttnProcessor": True, "FluxAttnProcessor2_0": True, "JointAttnProcessor2_0": False}


@dataclass(frozen=True)
class TextAttentionLayer:
    """How one layer attends to text: its kind and whether text comes first in its joint sequence."""

    kind: LayerKind
    text_first: bool = False


def text_attention_layer(name: str, module: nn.Module) -> TextAttentionLayer | None:
    """The kind of text attention ``module`` computes, or None if it attends to no text.

    Raises:
        CemapsError: a joint layer with fused QKV projections or an unknown processor (its
            concatenation order cannot be read).
    """
    is_flux = type(module).__name__ == "FluxAttention"
    if isinstance(module, Attention) and getattr(module, "is_cross_attention", False):
        return TextAttentionLayer("cross")
    if not (isinstance(module, Attention) or is_flux):
        return None
    joint = getattr(module, "added_kv_proj_dim", None) is not None
    single = is_flux and not joint and getattr(module, "pre_only", False)
    if not (joint or single):
        return None  # image self-attention (SD3.5's attn2, PixArt's attn1)
    if getattr(module, "fused_projections", False) or hasattr(module, "to_qkv"):
        raise CemapsError(
            f"layer {name!r} has fused QKV projections (fuse_qkv_projections); call "
            "unfuse_qkv_projections() on the transformer before capturing"
        )
    processor = type(module.processor).__name__
    if processor not in _TEXT_FIRST:
        raise CemapsError(
            f"layer {name!r}: attention processor {processor} is not one cemaps reads joint attention through; "
            f"expected one of {', '.join(_TEXT_FIRST)}"
        )
    return TextAttentionLayer("joint" if joint else "single", _TEXT_FIRST[processor])


@dataclass
class LayerSlot:
    """One layer's projections during a captured call, and its kept maps per generation."""

    name: str
    layer: TextAttentionLayer
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    text_key: torch.Tensor | None = None
    rotary: Any = None
    mask: torch.Tensor | None = None
    # per generation: list over captured steps of ([rows, head, y*x, token], [rows, head, y*x] or None)
    maps: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)
    grid: tuple[int, int] = (0, 0)

    def clear(self) -> None:
        self.query = self.key = self.text_key = self.rotary = self.mask = None


@dataclass(frozen=True)
class DiTReduction:
    """What is kept of a layer's text attention (see :class:`cemaps.probes.attention_scores.Reduction`)."""

    rows: slice | None
    mean_heads: bool
    kept: torch.Tensor | None  # context positions kept (None: all)
    spatial: int | str
    dtype: torch.dtype


def layer_hooks(slot: LayerSlot, attn: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Read-only hooks that fill ``slot`` with the layer's inputs as its processor uses them."""

    def keep(attribute: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            setattr(slot, attribute, output)

        return hook

    def on_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
        slot.rotary = kwargs.get("image_rotary_emb")
        slot.mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)

    handles = [
        attn.register_forward_pre_hook(on_call, with_kwargs=True),
        attn.to_q.register_forward_hook(keep("query")),
        attn.to_k.register_forward_hook(keep("key")),
    ]
    if slot.layer.kind == "joint":
        handles.append(attn.add_k_proj.register_forward_hook(keep("text_key")))
    return handles


def layer_maps(
    slot: LayerSlot, attn: nn.Module, text_length: int, latent_hw: tuple[int, int], reduction: DiTReduction
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """Kept maps of one layer call: ``[rows, head, y*x, token]``, text mass ``[rows, head, y*x]`` or None, (y, x)."""
    if slot.query is None or slot.key is None:
        raise RuntimeError(f"layer {slot.name!r} ran without its query/key projections being seen")
    rows = reduction.rows if reduction.rows is not None else slice(None)
    if slot.layer.kind == "cross":
        probs, mass = _cross(slot, attn, rows, reduction.kept), None
    else:
        probs, mass = _joint(slot, attn, rows, text_length, reduction)
    if reduction.mean_heads and slot.layer.kind == "cross":
        probs = probs.mean(dim=1, keepdim=True, dtype=torch.float32)
    height, width = layer_grid(latent_hw, probs.shape[2])
    pooled = pooled_grid(height, width, reduction.spatial)
    if pooled != (height, width):
        probs = _pool(probs, height, width, pooled)
        mass = None if mass is None else _pool(mass.unsqueeze(-1), height, width, pooled).squeeze(-1)
    probs = probs.to(reduction.dtype, copy=True)
    mass = None if mass is None else mass.to(reduction.dtype, copy=True)
    return probs, mass, pooled


def _cross(slot: LayerSlot, attn: Attention, rows: slice, kept: torch.Tensor | None) -> torch.Tensor:
    query, key = slot.query[rows], slot.key[rows]
    batch = query.shape[0]
    q, k = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    mask = None
    if slot.mask is not None:
        # as diffusers' AttnProcessor2_0 prepares it: repeated per head, [batch * heads, 1, tokens]
        mask = attn.prepare_attention_mask(slot.mask[rows], k.shape[1], batch)
    probs = attn.get_attention_scores(q, k, mask)
    probs = probs.view(batch, attn.heads, probs.shape[1], probs.shape[2])
    return probs if kept is None else probs.index_select(-1, kept.to(probs.device))


def _joint(
    slot: LayerSlot, attn: nn.Module, rows: slice, text_length: int, reduction: DiTReduction
) -> tuple[torch.Tensor, torch.Tensor]:
    heads = attn.heads
    head_dim = slot.query.shape[-1] // heads
    if slot.mask is not None:
        raise CemapsError(f"layer {slot.name!r} was given an attention mask; joint attention with a mask is not read")

    def split(x: torch.Tensor) -> torch.Tensor:  # [batch, seq, heads * d] -> [batch, seq, heads, d]
        return x[rows].unflatten(-1, (heads, head_dim))

    query, key = split(slot.query), split(slot.key)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if slot.layer.kind == "joint":
        text_key = split(slot.text_key)
        if getattr(attn, "norm_added_k", None) is not None:
            text_key = attn.norm_added_k(text_key)
        text_length = text_key.shape[1]
        key = torch.cat([text_key, key] if slot.layer.text_first else [key, text_key], dim=1)
    else:
        query = query[:, text_length:]  # single stream: [text, image] queries; keep the image ones
    if slot.rotary is not None:
        # rotary positions run over [text, image] (Flux's ids = cat(txt_ids, img_ids))
        cos, sin = slot.rotary
        key = apply_rotary_emb(key, (cos, sin), sequence_dim=1)
        query = apply_rotary_emb(query, (cos[-query.shape[1] :], sin[-query.shape[1] :]), sequence_dim=1)
    keys = key.shape[1]
    text = slice(0, text_length) if slot.layer.text_first else slice(keys - text_length, keys)
    return joint_text_block(
        query.transpose(1, 2), key.transpose(1, 2), text, reduction.kept, mean_heads=reduction.mean_heads
    )


def _pool(values: torch.Tensor, height: int, width: int, pooled: tuple[int, int]) -> torch.Tensor:
    """Average-pools ``[rows, head, y*x, channels]`` over (y, x) to ``pooled``."""
    rows, heads, _, channels = values.shape
    grid = values.float().permute(0, 1, 3, 2).reshape(rows * heads, channels, height, width)
    out = F.adaptive_avg_pool2d(grid, pooled)
    return out.reshape(rows, heads, channels, -1).permute(0, 1, 3, 2)
