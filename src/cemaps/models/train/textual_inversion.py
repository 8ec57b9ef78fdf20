"""Textual Inversion, as diffusers' ``examples/textual_inversion/textual_inversion.py``.

A new token is added (to a copy of the tokenizer), its embedding row starts as the initializer
token's row, and only that row is trained: after every optimiser step all other rows are put
back, as the script does (AdamW's weight decay would otherwise move them). The row is saved as
``learned_embeds.safetensors`` ``{token: tensor[dim]}``, which ``pipe.load_textual_inversion(folder)``
reads. With ``num_vectors`` n > 1 (the script's ``--num_vectors``) the tokens ``token, token_1, ...,
token_{n-1}`` are added, each starting at the initializer, the instance prompt spells all of them
where it says ``token``, and the file holds ``{token: tensor[n, dim]}``, which diffusers expands
back into the n tokens when it loads the file and when a prompt says ``token``. The training
table is a separate ``nn.Embedding`` swapped in for the run, so the caller's tokenizer,
embedding module and weights are exactly the originals afterwards.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from cemaps.errors import ConfigError, SettingError
from cemaps.models.families import TextStream, family_of
from cemaps.models.train.common import (
    TrainingData,
    TrainSettings,
    enable_gradient_checkpointing,
    preserved_pipeline_state,
)
from cemaps.models.train.conditioning import encode_text
from cemaps.models.train.loop import run_denoising_training

TI_WEIGHTS_NAME = "learned_embeds.safetensors"


def check_inputs(pipe: StableDiffusionPipeline, token: str, class_word: str, settings: TrainSettings) -> TrainSettings:
    """Checks the new token and the initializer; returns settings with the initializer resolved.

    Raises:
        ConfigError: the token (or one of its vector tokens ``token_1``, ...) is already known to
            the tokenizer, the initializer is not exactly one token, or the text encoder is not float32.
    """
    vocab = pipe.tokenizer.get_vocab()
    # "dog" is in CLIP's vocabulary as "dog</w>": as an added token it would replace the word in every prompt.
    # A known "token_1" would be spelled after the token by diffusers' maybe_convert_prompt, even for one vector.
    for name in vector_tokens(token, max(settings.num_vectors, 2)):
        if name in vocab or f"{name}</w>" in vocab or copy.deepcopy(pipe.tokenizer).add_tokens(name) != 1:
            raise ConfigError(
                f"token {name!r} is already in the tokenizer; textual inversion needs a new token, "
                f"e.g. '<my-{class_word}>'"
            )
    initializer = settings.initializer_token if settings.initializer_token is not None else class_word
    initializer_ids = pipe.tokenizer.encode(initializer, add_special_tokens=False)
    if len(initializer_ids) != 1:
        raise SettingError(
            "TrainSettings",
            "initializer_token",
            initializer,
            f"a word the tokenizer keeps as a single token (it is {len(initializer_ids)} tokens)",
        )
    weight_dtype = pipe.text_encoder.get_input_embeddings().weight.dtype
    if weight_dtype != torch.float32:
        raise ConfigError(
            f"textual inversion trains the text encoder's embeddings in float32, but they are {weight_dtype}; "
            "expected a float32 base (use mixed_precision='fp16' or 'bf16' for speed)"
        )
    return replace(settings, initializer_token=initializer)


def vector_tokens(token: str, num_vectors: int) -> list[str]:
    """The tokens one multi-vector embedding occupies, named as diffusers names them.

    Example:
        >>> vector_tokens("<cat>", 3)
        ['<cat>', '<cat>_1', '<cat>_2']
    """
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


@dataclass
class _TrainedTable:
    """One text encoder's training table: the tokenizer copy, the swapped-in embedding, its frozen rows."""

    stream: TextStream
    tokenizer: object
    token_ids: list[int]
    original: torch.nn.Embedding
    trained: torch.nn.Embedding
    frozen_rows: torch.Tensor
    reference: torch.Tensor

    def restore_frozen_rows(self) -> None:
        with torch.no_grad():
            self.trained.weight[self.frozen_rows] = self.reference[self.frozen_rows]


def _training_table(pipe: StableDiffusionPipeline, stream: TextStream, tokens: list[str], initializer: str):
    tokenizer = copy.deepcopy(getattr(pipe, stream.tokenizer))
    tokenizer.add_tokens(tokens)
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    initializer_id = tokenizer.encode(initializer, add_special_tokens=False)[0]
    original = getattr(pipe, stream.encoder).get_input_embeddings()
    # The script's resize_token_embeddings + copy of the initializer row, on a separate table.
    trained = torch.nn.Embedding(
        len(tokenizer), original.embedding_dim, device=original.weight.device, dtype=original.weight.dtype
    )
    with torch.no_grad():
        trained.weight[: original.num_embeddings] = original.weight
        trained.weight[token_ids] = original.weight[initializer_id]
    frozen_rows = torch.ones(len(tokenizer), dtype=torch.bool, device=trained.weight.device)
    frozen_rows[token_ids] = False
    return _TrainedTable(stream, tokenizer, token_ids, original, trained, frozen_rows, trained.weight.detach().clone())


def train(
    pipe: StableDiffusionPipeline, data: TrainingData, settings: TrainSettings, save_dir: Path, progress: bool
) -> list[float]:
    """Trains the new embedding row(s), writes ``save_dir/learned_embeds.safetensors``, restores the encoders.

    The rows are trained in every text encoder the family's embeddings go into
    (:meth:`ModelFamily.embedding_streams`): SDXL trains ``text_encoder`` and ``text_encoder_2`` together
    and writes ``{"clip_l": [n, 768-wide], "clip_g": [n, 1280-wide]}`` (the SDXL embedding layout; the
    token is the one given at training, recorded in ``cemaps_train.json``); one-encoder families
    write ``{token: tensor}``.

    Returns:
        The loss of every step.
    """
    token = data.token
    tokens = vector_tokens(token, settings.num_vectors)
    tables = [
        _training_table(pipe, stream, tokens, str(settings.initializer_token))
        for stream in family_of(pipe).embedding_streams()
    ]
    tokenizers = {t.stream.tokenizer: t.tokenizer for t in tables}
    # the prompt spells every vector's token, as diffusers' maybe_convert_prompt does at inference
    prompt = data.instance_prompt.replace(token, " ".join(tokens))

    def restore_frozen_rows() -> None:
        for table in tables:
            table.restore_frozen_rows()

    with preserved_pipeline_state(pipe, settings.seed):
        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        try:
            for table in tables:
                encoder = getattr(pipe, table.stream.encoder)
                encoder.requires_grad_(False)
                encoder.set_input_embeddings(table.trained)
                table.trained.weight.requires_grad_(True)
                encoder.train()
            if settings.gradient_checkpointing:
                enable_gradient_checkpointing(pipe, text_encoder_too=True)
            losses = run_denoising_training(
                pipe,
                [t.trained.weight for t in tables],
                data,
                lambda: encode_text(pipe, prompt, tokenizers),
                None,
                settings,
                progress,
                after_optimizer_step=restore_frozen_rows,
            )
            learned = {}
            for table in tables:
                vectors = table.trained.weight[table.token_ids].detach().to("cpu", torch.float32).clone()
                key = table.stream.embedding_key
                learned[key if key is not None else token] = vectors[0] if len(tokens) == 1 and key is None else vectors
            save_file(learned, str(save_dir / TI_WEIGHTS_NAME), metadata={"format": "pt"})
        finally:
            for table in tables:
                getattr(pipe, table.stream.encoder).set_input_embeddings(table.original)
    return losses
