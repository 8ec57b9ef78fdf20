"""Textual Inversion: read an embedding file, check it, add its token(s), remove them exactly.

Layouts read (rows of the README's "Input forms" table):

- diffusers ``learned_embeds.safetensors`` / ``.bin``: ``{"<token>": [dim] or [n_vectors, dim]}``;
- A1111 ``.pt`` (``modules/textual_inversion/textual_inversion.py``): ``{"string_to_param":
  {"*": [n_vectors, dim]}, "name": ..., "step": ...}``, read only with ``allow_pickle``;
- A1111 ``.safetensors``: ``{"emb_params": [n_vectors, dim]}`` (token from the spec or the file name);
- a bare tensor (``torch.save(tensor)``) with ``token=`` in the spec.

SDXL embeddings (``clip_l``/``clip_g``) and LoRA or full-model files are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.hashing import source_sha256, weights_fingerprint
from cemaps.models.personalized.spec import (
    AppliedModel,
    PersonalizedSpec,
    check_finite,
    family_hint,
    refuse_other_kind,
    resolve_weight_file,
)
from cemaps.models.safety import load_weights

PREFERRED_FILES = ("learned_embeds.safetensors", "learned_embeds.bin")


def embedding_from_weights(state: dict, spec: PersonalizedSpec, source: Path) -> tuple[str, torch.Tensor, str]:
    """(token, vectors ``[dim]`` or ``[n, dim]``, layout) of a diffusers, A1111 or raw-tensor embedding file.

    Raises:
        ModelLoadError: the file is another kind of model (named), or its embedding entry is malformed.
    """
    what = f"embedding file {str(source)!r}"
    refuse_other_kind(state, ("a Textual Inversion embedding",), what)
    if "string_to_param" in state:
        table = state["string_to_param"]
        if not isinstance(table, dict) or "*" not in table:
            raise ModelLoadError(f"{what}: 'string_to_param' has no '*' entry; expected an A1111 embedding")
        token, vectors, layout = spec.token or str(state.get("name") or source.stem), table["*"], "a1111"
    elif "emb_params" in state:
        token, vectors, layout = spec.token or source.stem, state["emb_params"], "a1111"
    else:
        key, vectors = next(iter(state.items()))
        if key == "" and spec.token is None:
            raise ModelLoadError(f"{what} holds a bare tensor; pass token='<name>' in the spec")
        token, layout = spec.token or key, "diffusers" if key else "tensor"
    if not isinstance(vectors, torch.Tensor):
        raise ModelLoadError(f"{what}: the embedding for {token!r} is a {type(vectors).__name__}, not a tensor")
    return token, vectors, layout


def check_embedding(pipe: StableDiffusionPipeline, token: str, vectors: torch.Tensor, what: str) -> torch.Tensor:
    """Returns ``vectors`` as ``[n_vectors, dim]`` after checking width, finiteness and that ``token`` is new.

    Raises:
        ModelLoadError: wrong width (naming the model family of the width, e.g. 1024 = SD 2.x),
            NaN/inf values, or a token the tokenizer already has.
    """
    width = pipe.text_encoder.get_input_embeddings().embedding_dim
    if vectors.ndim not in (1, 2) or vectors.shape[-1] != width:
        raise ModelLoadError(
            f"{what}: embedding for {token!r} has shape {tuple(vectors.shape)}; expected [{width}] or "
            f"[n_vectors, {width}] for this text encoder{family_hint(vectors.shape[-1], width)}"
        )
    check_finite({token: vectors}, what)
    if token in pipe.tokenizer.get_vocab():
        raise ModelLoadError(f"{what}: token {token!r} is already in the tokenizer; choose another token= in the spec")
    return vectors.reshape(-1, width)


def read_embedding(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> tuple[str, torch.Tensor, str, str, str]:
    """(token, vectors ``[n, dim]``, layout, source, sha256) of a spec, checked; ``pipe`` is not changed."""
    if spec.embedding is not None:
        token, vectors = str(spec.token), spec.embedding.detach().cpu()
        source, layout, digest = "<tensor>", "tensor", weights_fingerprint({token: vectors})
    else:
        file = resolve_weight_file(spec, PREFERRED_FILES)
        token, vectors, layout = embedding_from_weights(load_weights(file, spec.allow_pickle), spec, file)
        source, digest = str(file), source_sha256(spec.path)  # type: ignore[arg-type]
    return token, check_embedding(pipe, token, vectors, f"model {spec.model_id!r}"), layout, source, digest


def check_textual_inversion(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> str:
    """Everything :func:`applied_textual_inversion` checks, without changing ``pipe``; returns the layout."""
    return read_embedding(pipe, spec)[2]


@contextmanager
def applied_textual_inversion(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    """Adds the token(s) and vectors; on exit removes them, restoring tokenizer and embedding table sizes and values."""
    token, vectors, layout, source, digest = read_embedding(pipe, spec)
    vocab_before = set(pipe.tokenizer.get_vocab())
    added: list[str] = []
    try:
        pipe.load_textual_inversion(vectors, token=token)
        added = sorted(set(pipe.tokenizer.get_vocab()) - vocab_before, key=pipe.tokenizer.convert_tokens_to_ids)
        yield AppliedModel(
            spec=spec,
            sha256=digest,
            source=source,
            format=layout,
            n_tensors_changed=1,
            n_params_changed=vectors.numel(),
            tokens=tuple(added),
        )
    finally:
        added = added or sorted(set(pipe.tokenizer.get_vocab()) - vocab_before)
        if added:
            pipe.unload_textual_inversion(added)
