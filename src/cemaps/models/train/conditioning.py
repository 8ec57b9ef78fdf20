"""Text conditioning for training, as the base's model family encodes prompts (one encoder or several).

What diffusers' training scripts compute per family, read from the registry
(:mod:`cemaps.models.families`) instead of being written per family: each text stream's tokens
through its encoder, ``last_hidden_state`` or the penultimate hidden state as the stream says,
concatenated on the feature axis (SDXL: ``train_dreambooth_lora_sdxl.py``'s ``encode_prompt``),
and the pooled embedding of the stream that gives one (SDXL's ``text_embeds``). A UNet with
``addition_embed_type="text_time"`` (SDXL) also gets ``time_ids``: original size, crop top-left and
target size, ``(res, res, 0, 0, res, res)`` for the centre-cropped square instance images cemaps
trains on (the scripts' ``compute_time_ids`` with ``crops_coords_top_left = (0, 0)``).

Example:
    >>> from cemaps.models.tiny import tiny_sdxl_pipeline
    >>> pipe = tiny_sdxl_pipeline(seed=0)
    >>> text = encode_text(pipe, "a photo of sks dog")
    >>> tuple(text.states.shape), tuple(text.pooled.shape)
    ((1, 77, 64), (1, 32))
    >>> added_conditions(pipe, text.pooled, resolution=64)["time_ids"].tolist()
    [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cemaps.models.families import family_of


@dataclass(frozen=True)
class TextConditioning:
    """The denoiser's text inputs for one prompt.

    Attributes:
        states: ``[1, tokens, features]`` (``encoder_hidden_states``).
        pooled: ``[1, pooled_dim]`` from the family's pooled stream, or None when it has none.
    """

    states: torch.Tensor
    pooled: torch.Tensor | None = None


def tokenize(tokenizer: Any, prompt: str) -> torch.Tensor:
    """[1, model_max_length] token ids, padded as diffusers' scripts pad."""
    return tokenizer(
        prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def encode_text(pipe: Any, prompt: str, tokenizers: Mapping[str, Any] | None = None) -> TextConditioning:
    """Encodes ``prompt`` with every text stream of the pipeline's family (gradients flow when enabled).

    Args:
        pipe: the pipeline; its family says which encoders, which hidden state, which pooled output.
        prompt: the text.
        tokenizers: replacements by pipeline attribute (Textual Inversion trains with copies that
            know the new token).
    """
    parts, pooled = [], None
    for stream in family_of(pipe).text_streams:
        tokenizer = (tokenizers or {}).get(stream.tokenizer, getattr(pipe, stream.tokenizer))
        encoder = getattr(pipe, stream.encoder)
        output = encoder(tokenize(tokenizer, prompt).to(encoder.device), output_hidden_states=True)
        if stream.token_block is not None:
            parts.append(output.last_hidden_state if stream.hidden_state == "last" else output.hidden_states[-2])
        if stream.pooled:
            pooled = output.text_embeds if hasattr(output, "text_embeds") else output.pooler_output
    return TextConditioning(torch.cat(parts, dim=-1), pooled)


def frozen_conditioning(pipe: Any, prompt: str) -> Callable[[], TextConditioning]:
    """The frozen text encoders' conditioning for ``prompt``, computed once."""
    with torch.no_grad():
        text = encode_text(pipe, prompt)
    return lambda: text


def added_conditions(pipe: Any, pooled: torch.Tensor | None, resolution: int) -> dict[str, torch.Tensor] | None:
    """``added_cond_kwargs`` for a UNet that takes them (``addition_embed_type="text_time"``), else None.

    Args:
        pooled: ``[batch, pooled_dim]``.
        resolution: the square training resolution in pixels.

    Raises:
        ValueError: the UNet needs a pooled embedding and the family's streams gave none.
    """
    denoiser = family_of(pipe).denoiser_of(pipe)
    if getattr(denoiser.config, "addition_embed_type", None) != "text_time":
        return None
    if pooled is None:
        raise ValueError("the denoiser takes text_time conditions, but no text stream gives a pooled embedding")
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=pooled.dtype)
    return {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device).expand(pooled.shape[0], -1)}
