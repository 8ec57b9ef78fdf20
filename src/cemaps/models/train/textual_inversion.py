"""Textual Inversion, as diffusers' ``examples/textual_inversion/textual_inversion.py``.

A new token is added (to a copy of the tokenizer), its embedding row starts as the initializer
token's row, and only that row is trained: after every optimiser step all other rows are put
back, as the script does (AdamW's weight decay would otherwise move them). The row is saved as
``learned_embeds.safetensors`` ``{token: tensor[dim]}``, which ``pipe.load_textual_inversion(folder)``
reads. The training table is a separate ``nn.Embedding`` swapped in for the run, so the caller's
tokenizer, embedding module and weights are exactly the originals afterwards.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from cemaps.errors import ConfigError, SettingError
from cemaps.models.train.common import (
    TrainingData,
    TrainSettings,
    enable_gradient_checkpointing,
    preserved_pipeline_state,
    tokenize,
)
from cemaps.models.train.loop import run_denoising_training

TI_WEIGHTS_NAME = "learned_embeds.safetensors"


def check_inputs(pipe: StableDiffusionPipeline, token: str, class_word: str, settings: TrainSettings) -> TrainSettings:
    """Checks the new token and the initializer; returns settings with the initializer resolved.

    Raises:
        ConfigError: the token is already known to the tokenizer, the initializer is not exactly
            one token, or the text encoder is not float32.
    """
    vocab = pipe.tokenizer.get_vocab()
    # "dog" is in CLIP's vocabulary as "dog</w>": as an added token it would replace the word in every prompt.
    if token in vocab or f"{token}</w>" in vocab or copy.deepcopy(pipe.tokenizer).add_tokens(token) != 1:
        raise ConfigError(
            f"token {token!r} is already in the tokenizer; textual inversion needs a new token, e.g. '<my-{class_word}>'"
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


def train(
    pipe: StableDiffusionPipeline, data: TrainingData, settings: TrainSettings, save_dir: Path, progress: bool
) -> list[float]:
    """Trains one new embedding row, writes ``save_dir/learned_embeds.safetensors``, restores the encoder.

    Returns:
        The loss of every step.
    """
    token = data.token
    tokenizer = copy.deepcopy(pipe.tokenizer)
    tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    initializer_id = tokenizer.encode(settings.initializer_token, add_special_tokens=False)[0]
    text_encoder = pipe.text_encoder
    original_embeddings = text_encoder.get_input_embeddings()
    # The script's resize_token_embeddings + copy of the initializer row, on a separate table.
    trained_embeddings = torch.nn.Embedding(
        len(tokenizer),
        original_embeddings.embedding_dim,
        device=original_embeddings.weight.device,
        dtype=original_embeddings.weight.dtype,
    )
    with torch.no_grad():
        trained_embeddings.weight[: original_embeddings.num_embeddings] = original_embeddings.weight
        trained_embeddings.weight[token_id] = original_embeddings.weight[initializer_id]
    frozen_rows = torch.ones(len(tokenizer), dtype=torch.bool, device=trained_embeddings.weight.device)
    frozen_rows[token_id] = False
    reference_weights = trained_embeddings.weight.detach().clone()

    def restore_frozen_rows() -> None:
        with torch.no_grad():
            trained_embeddings.weight[frozen_rows] = reference_weights[frozen_rows]

    ids = tokenize(tokenizer, data.instance_prompt).to(text_encoder.device)
    with preserved_pipeline_state(pipe, settings.seed):
        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        text_encoder.set_input_embeddings(trained_embeddings)
        try:
            trained_embeddings.weight.requires_grad_(True)
            text_encoder.train()
            if settings.gradient_checkpointing:
                enable_gradient_checkpointing(pipe, text_encoder_too=True)
            losses = run_denoising_training(
                pipe,
                [trained_embeddings.weight],
                data,
                lambda: text_encoder(ids)[0],
                None,
                settings,
                progress,
                after_optimizer_step=restore_frozen_rows,
            )
            learned = trained_embeddings.weight[token_id].detach().to("cpu", torch.float32).clone()
            save_file({token: learned}, str(save_dir / TI_WEIGHTS_NAME), metadata={"format": "pt"})
        finally:
            text_encoder.set_input_embeddings(original_embeddings)
    return losses
