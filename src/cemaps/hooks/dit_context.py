"""The capture context of transformer (DiT) families: SD3 / SD3.5, Flux, PixArt-Sigma.

It places each transformer call in the denoising schedule as :class:`CaptureContext` does
for UNets, reading the call's arguments by name (``hidden_states``, ``timestep``,
``encoder_hidden_states``, ``encoder_attention_mask``, Flux's ``img_ids``), and reads the
rest from the model-family registry (:mod:`cemaps.models.families`):

- time: the denoiser's ``timestep`` times the family's ``denoiser_time_scale`` (Flux's pipeline
  passes ``timestep / 1000``) is matched to the nearest value of ``scheduler.timesteps``
  (flow-matching schedules hold ``sigma * 1000``, not integers; a half-precision timestep is
  matched within half the smallest gap of the schedule);
- guidance: ``embedded_scale`` families (Flux) have no unconditional half; SD3 says so with
  ``do_classifier_free_guidance``; PixArt, which has no such property, is read from which rows
  of the context its prompt encoding fills (all of them: no guidance; the second half: guidance);
- text: the context is laid out in token blocks (SD3: CLIP-L+G's 77 tokens, then T5's), each
  labelled by one stream's token ids (:class:`TextLayout`). A block's encodings are matched to
  the context rows by exact equality where the encoder's output enters the context unchanged
  (every T5 block), and the other blocks' encodings are paired with them by call order (SD3's
  ``encode_prompt`` runs CLIP-L, CLIP-G, T5 for the prompt, then for the negative prompt);
- the grid: latents ``[batch, channels, h, w]`` (SD3, PixArt) give ``(h, w)``, halved by the patch
  embedding (:func:`cemaps.probes.attention_scores.layer_grid`); Flux's packed latents give the token
  grid of ``img_ids``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cemaps.errors import CemapsError
from cemaps.hooks.compiled import refuse_traced_call
from cemaps.hooks.context import CaptureContext, _repeated_rows
from cemaps.hooks.steps import Generation
from cemaps.models.families import family_of

_KEPT_ENCODINGS = 8


@dataclass(frozen=True)
class TextBlock:
    """One token block of the text context.

    Attributes:
        stream: the encoders that fill it, joined by ``+`` (``"text_encoder+text_encoder_2"``).
        tokenizer: the tokenizer whose ids label it.
        start: first context position of the block.
        length: its tokens.
        prompt_ids: ``[prompts, length]`` token ids of the prompts, or None when unknown.
        negative_ids: ``[prompts, length]`` of the negative prompts, or None.
    """

    stream: str
    tokenizer: Any
    start: int
    length: int
    prompt_ids: np.ndarray | None = None
    negative_ids: np.ndarray | None = None


@dataclass(frozen=True)
class TextLayout:
    """The text context of one generation: its blocks and the model's own mask.

    Attributes:
        blocks: the token blocks in context order.
        mask: ``[images, tokens]`` the cond half's ``encoder_attention_mask`` (1 = attended), or None
            when the model masks no text position (SD3, Flux).
        negative_mask: likewise for the uncond half.
    """

    blocks: tuple[TextBlock, ...]
    mask: np.ndarray | None = None
    negative_mask: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        return sum(b.length for b in self.blocks)

    def prompt_positions(self, image: int, prompt: int) -> np.ndarray:
        """Context positions of image ``image``'s prompt tokens.

        Where the model masks text (PixArt), the positions it attends to (its mask is the
        definition); otherwise, per block, the tokens up to and including the first end token,
        or the whole block when its tokens are unknown.
        """
        if self.mask is not None:
            return np.flatnonzero(self.mask[image] > 0)
        positions = []
        for block in self.blocks:
            length = block.length
            eos = getattr(block.tokenizer, "eos_token_id", None)
            if block.prompt_ids is not None and eos is not None:
                ends = np.flatnonzero(block.prompt_ids[prompt] == eos)
                length = int(ends[0]) + 1 if ends.size else block.length
            positions.append(np.arange(block.start, block.start + min(length, block.length)))
        return np.concatenate(positions)

    def labels(self, prompt: int, positions: np.ndarray, negative: bool = False) -> list[str | None]:
        """The token string at each context position (None where the tokens are unknown)."""
        out: list[str | None] = []
        for position in positions:
            block = self.block_of(int(position))
            ids = block.negative_ids if negative else block.prompt_ids
            offset = int(position) - block.start
            if ids is None or offset >= ids.shape[1]:
                out.append(None)
            else:
                out.append(block.tokenizer.convert_ids_to_tokens(int(ids[prompt, offset])))
        return out

    def streams(self, positions: np.ndarray) -> list[str]:
        return [self.block_of(int(p)).stream for p in positions]

    def block_of(self, position: int) -> TextBlock:
        for block in self.blocks:
            if block.start <= position < block.start + block.length:
                return block
        raise IndexError(f"context position {position} is outside the {self.tokens} text tokens")


class DiTCaptureContext(CaptureContext):
    """:class:`CaptureContext` for a transformer family; adds :attr:`layouts` and :attr:`text_length`.

    Attributes:
        family: the pipeline's :class:`~cemaps.models.families.ModelFamily`.
        layouts: the :class:`TextLayout` of each generation, by generation index.
        text_length: text tokens of the current transformer call (Flux's single-stream blocks
            see text and image tokens as one sequence, text first).
    """

    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.layouts: dict[int, TextLayout] = {}
        self.text_length = 0
        self._stream_encodings: dict[str, list[tuple[np.ndarray, torch.Tensor]]] = {}
        self._signature = inspect.signature(self.unet.forward)

    def attach(self) -> list[RemovableHandle]:
        handles = [self.entry.register_forward_pre_hook(self._on_unet_call, with_kwargs=True, prepend=True)]
        for stream in self.family.text_streams:
            encoder = getattr(self.pipe, stream.encoder, None)
            if encoder is not None:
                handles.append(encoder.register_forward_hook(self._on_encoder(stream.encoder), with_kwargs=True))
        return handles

    def _on_encoder(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._text_encoder_called = True
            input_ids = args[0] if args else kwargs.get("input_ids")
            hidden = output if isinstance(output, torch.Tensor) else output[0]  # last_hidden_state
            if input_ids is not None and isinstance(hidden, torch.Tensor):
                kept = self._stream_encodings.setdefault(name, [])
                kept.append((input_ids.detach().cpu().numpy(), hidden))
                del kept[:-_KEPT_ENCODINGS]

        return hook

    def _on_unet_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        refuse_traced_call(f"pipe.{self.family.denoiser}")
        call = self._signature.bind_partial(*args, **kwargs).arguments
        hidden = call["hidden_states"]
        context = call.get("encoder_hidden_states")
        self.text_length = int(context.shape[1]) if isinstance(context, torch.Tensor) else 0
        value = float(torch.as_tensor(call["timestep"]).flatten()[0].item()) * self.family.denoiser_time_scale
        grid = _token_grid(hidden, call.get("img_ids"))
        mask = call.get("encoder_attention_mask")
        self._refuse_split_calls(self._snap(value))
        self._advance(
            self._snap(value), lambda schedule: self._new_dit_generation(hidden, context, mask, schedule, grid)
        )
        self._stream_encodings = {}

    def _refuse_split_calls(self, t: int) -> None:
        """A second call at the step's timestep within one generation: guidance run as separate calls."""
        if not self.generations or self._text_encoder_called:
            return
        generation = self.generation
        if generation.timesteps and generation.timesteps[-1] == t and len(generation.positions(t)) < 2:
            raise CemapsError(
                f"{type(self.pipe).__name__} called the transformer twice at timestep {t} (guidance run as separate "
                "calls: Flux's true_cfg_scale > 1 with a negative prompt, SD3's skip_guidance_layers); capture reads "
                "one call per step: use guidance_scale alone"
            )

    def _snap(self, value: float) -> int:
        """The schedule's timestep (as :class:`Generation` keys it) nearest to a call's ``value``."""
        schedule = torch.as_tensor(self.pipe.scheduler.timesteps).double().flatten()
        if schedule.numel() == 0:
            return int(value)
        distance = (schedule - value).abs()
        nearest = int(distance.argmin())
        gaps = (schedule[1:] - schedule[:-1]).abs()
        gaps = gaps[gaps > 0]
        tolerance = float(gaps.min()) / 2 if gaps.numel() else 0.5
        return int(schedule[nearest].item()) if float(distance[nearest]) <= tolerance else int(value)

    def _new_dit_generation(
        self, hidden: torch.Tensor, context: Any, mask: Any, schedule_tensor: Any, grid: tuple[int, int]
    ) -> Generation:
        schedule = tuple(int(v) for v in torch.as_tensor(schedule_tensor).flatten().tolist())
        rows = int(hidden.shape[0])
        guidance = self._guidance(rows, context)
        if guidance and rows % 2:
            raise RuntimeError(f"guidance is on but the transformer batch ({rows}) is odd")
        batch = rows // 2 if guidance else rows
        layout = self._layout(context, mask, batch, guidance)
        first = layout.blocks[0]
        prompts = first.prompt_ids.shape[0] if first.prompt_ids is not None else None
        generation = Generation(
            index=len(self.generations),
            batch_size=batch,
            guidance=guidance,
            latent_hw=grid,
            total_steps=len(schedule),
            token_ids=first.prompt_ids,
            negative_token_ids=first.negative_ids,
            images_per_prompt=max(1, batch // prompts) if prompts and batch % prompts == 0 else 1,
            schedule=schedule,
        )
        self.layouts[generation.index] = layout
        return generation

    def _guidance(self, rows: int, context: Any) -> bool:
        if self.family.guidance == "embedded_scale":
            return False
        if isinstance(getattr(type(self.pipe), "do_classifier_free_guidance", None), property):
            return bool(self.pipe.do_classifier_free_guidance)
        last = self._last_block_stream()
        for _, hidden in self._stream_encodings.get(last.encoder, []):
            tail = context[:, -hidden.shape[1] :] if isinstance(context, torch.Tensor) else None
            if tail is None:
                break
            if _repeated_rows(hidden, tail):
                return False
            if rows % 2 == 0 and _repeated_rows(hidden, tail[rows // 2 :]):
                return True
        raise CemapsError(
            f"{type(self.pipe).__name__}: cannot tell whether the transformer batch holds guidance halves "
            "(no prompt encoding matches the text context); pass the prompt as text, not prompt_embeds"
        )

    def _last_block_stream(self) -> Any:
        last = max(s.token_block for s in self.family.text_streams if s.token_block is not None)
        return next(s for s in self.family.text_streams if s.token_block == last and s.labels_tokens)

    def _layout(self, context: Any, mask: Any, batch: int, guidance: bool) -> TextLayout:
        streams = self.family.text_streams
        numbers = sorted({s.token_block for s in streams if s.token_block is not None})
        total = int(context.shape[1]) if isinstance(context, torch.Tensor) else 0
        # every block but the last is as long as its tokenizer's window; the last takes the rest
        # (T5's max_sequence_length is a call argument, not a tokenizer property)
        lengths = [int(getattr(self.pipe, self._labelling(n).tokenizer).model_max_length) for n in numbers[:-1]]
        lengths.append(total - sum(lengths))
        # which encoding (by call order) is the prompt and which the negative: matched in the last block
        last = self._labelling(numbers[-1])
        start_last = total - lengths[-1]
        prompt_call, negative_call = _match(
            self._stream_encodings.get(last.encoder, []), context, start_last, batch, guidance
        )
        blocks, start = [], 0
        for number, length in zip(numbers, lengths, strict=True):
            labelling = self._labelling(number)
            encodings = self._stream_encodings.get(labelling.encoder, [])
            blocks.append(
                TextBlock(
                    stream="+".join(s.encoder for s in streams if s.token_block == number),
                    tokenizer=getattr(self.pipe, labelling.tokenizer),
                    start=start,
                    length=length,
                    prompt_ids=_ids(encodings, prompt_call),
                    negative_ids=_ids(encodings, negative_call),
                )
            )
            start += length
        masks = None if mask is None else (torch.as_tensor(mask).detach().cpu().numpy())
        return TextLayout(
            blocks=tuple(blocks),
            mask=None if masks is None else (masks[batch:] if guidance else masks),
            negative_mask=None if masks is None or not guidance else masks[:batch],
        )

    def _labelling(self, number: int) -> Any:
        return next(s for s in self.family.text_streams if s.token_block == number and s.labels_tokens)


def _match(
    encodings: list[tuple[np.ndarray, torch.Tensor]], context: Any, start: int, batch: int, guidance: bool
) -> tuple[int | None, int | None]:
    """Call indices of the (prompt, negative) encodings whose output fills ``context[:, start:]``."""
    if not isinstance(context, torch.Tensor):
        return None, None
    block = context[:, start:]
    cond = block[batch:] if guidance else block
    uncond = block[:batch] if guidance else None
    prompt = negative = None
    for index, (_, hidden) in enumerate(encodings):
        if prompt is None and _repeated_rows(hidden, cond):
            prompt = index
        elif negative is None and uncond is not None and _repeated_rows(hidden, uncond):
            negative = index
    return prompt, negative


def _ids(encodings: list[tuple[np.ndarray, torch.Tensor]], call: int | None) -> np.ndarray | None:
    """Token ids of encoding number ``call`` (None if unknown or not there)."""
    return encodings[call][0] if call is not None and call < len(encodings) else None


def _token_grid(hidden: torch.Tensor, img_ids: Any) -> tuple[int, int]:
    """``(h, w)`` of the latents, or of Flux's packed token grid (from ``img_ids``)."""
    if hidden.dim() == 4:
        return int(hidden.shape[-2]), int(hidden.shape[-1])
    if img_ids is None:
        raise RuntimeError(f"packed latents {tuple(hidden.shape)} without img_ids: cannot tell the token grid")
    ids = torch.as_tensor(img_ids).reshape(-1, 3)
    return int(ids[:, 1].max().item()) + 1, int(ids[:, 2].max().item()) + 1


def capture_context(pipe: Any) -> CaptureContext:
    """The capture context for ``pipe``: :class:`DiTCaptureContext` for a transformer family.

    Raises:
        ModelLoadError: ``pipe`` is of no registered family.
    """
    if family_of(pipe).denoiser == "transformer":
        return DiTCaptureContext(pipe)
    return CaptureContext(pipe)
