"""Textual Inversion: read an embedding file, check it, add its token(s), remove them exactly.

Layouts read (rows of the "Input forms" table of docs/conformance.md):

- diffusers ``learned_embeds.safetensors`` / ``.bin``: ``{"<token>": [dim] or [n_vectors, dim]}``;
- A1111 ``.pt`` (``modules/textual_inversion/textual_inversion.py``): ``{"string_to_param":
  {"*": [n_vectors, dim]}, "name": ..., "step": ...}``, read only with ``allow_pickle``;
- A1111 ``.safetensors``: ``{"emb_params": [n_vectors, dim]}`` (token from the spec or the file name);
- a bare tensor (``torch.save(tensor)``) with ``token=`` in the spec.

- SDXL (kohya sd-scripts ``sdxl_train_textual_inversion.py``, A1111): ``{"clip_l": [n_vectors, 768],
  "clip_g": [n_vectors, 1280]}``, one key per text encoder (the family's ``TextStream.embedding_key``);
  the vectors go into both encoders under one token (``load_textual_inversion`` with each
  encoder and tokenizer, as diffusers documents for SDXL).

Which encoders an embedding goes into is the base's family's (:meth:`ModelFamily.embedding_streams`);
an embedding of another family, and LoRA or full-model files, are refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.families import TextStream, family_of
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


def embedding_from_weights(
    state: dict, spec: PersonalizedSpec, source: Path, pipe: StableDiffusionPipeline | None = None
) -> tuple[str, dict[str, torch.Tensor], str]:
    """(token, vectors per text encoder ``{encoder: [dim] or [n, dim]}``, layout) of an embedding file.

    Args:
        pipe: the base pipeline, whose family says which encoders an embedding fills (the first
            text encoder when None).

    Raises:
        ModelLoadError: the file is another kind of model or another family's (named), or its
            embedding entry is malformed.
    """
    what = f"embedding file {str(source)!r}"
    refuse_other_kind(state, ("a Textual Inversion embedding",), what, pipe)
    streams = family_of(pipe).embedding_streams() if pipe is not None else ()
    keyed = [s for s in streams if s.embedding_key is not None]
    if keyed:
        missing = [s.embedding_key for s in keyed if s.embedding_key not in state]
        if missing:
            raise ModelLoadError(
                f"{what} has keys {sorted(map(str, state))[:4]}; expected one entry per text encoder "
                f"{[s.embedding_key for s in keyed]} (missing {missing[0]!r})"
            )
        vectors = {s.encoder: state[s.embedding_key] for s in keyed}
        token, layout = spec.token or source.stem, "+".join(str(s.embedding_key) for s in keyed)
    else:
        token, single, layout = _single_encoder_embedding(state, spec, source, what)
        vectors = {streams[0].encoder if streams else "text_encoder": single}
    for encoder, tensor in vectors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelLoadError(
                f"{what}: the embedding for {token!r} ({encoder}) is a {type(tensor).__name__}, not a tensor"
            )
    return token, vectors, layout


def _single_encoder_embedding(state: dict, spec: PersonalizedSpec, source: Path, what: str) -> tuple[str, object, str]:
    """(token, vectors, layout) of a one-encoder file: diffusers, A1111 ``.pt``/``.safetensors`` or a bare tensor."""
    if "string_to_param" in state:
        table = state["string_to_param"]
        if not isinstance(table, dict) or "*" not in table:
            raise ModelLoadError(f"{what}: 'string_to_param' has no '*' entry; expected an A1111 embedding")
        return spec.token or str(state.get("name") or source.stem), table["*"], "a1111"
    if "emb_params" in state:
        return spec.token or source.stem, state["emb_params"], "a1111"
    key, vectors = next(iter(state.items()))
    if key == "" and spec.token is None:
        raise ModelLoadError(f"{what} holds a bare tensor; pass token='<name>' in the spec")
    return spec.token or key, vectors, "diffusers" if key else "tensor"


def check_embedding(
    pipe: StableDiffusionPipeline, token: str, vectors: torch.Tensor, what: str, stream: TextStream | None = None
) -> torch.Tensor:
    """Returns ``vectors`` as ``[n_vectors, dim]`` after checking width, finiteness and that ``token`` is new.

    Args:
        stream: the text encoder the vectors go into (default: the family's first embedding stream).

    Raises:
        ModelLoadError: wrong width (naming the model family of the width, e.g. 1024 = SD 2.x),
            NaN/inf values, or a token the tokenizer already has.
    """
    stream = stream if stream is not None else family_of(pipe).embedding_streams()[0]
    encoder = getattr(pipe, stream.encoder)
    width = encoder.get_input_embeddings().embedding_dim
    which = "this text encoder" if stream.embedding_key is None else f"{stream.encoder} ({stream.embedding_key})"
    if vectors.ndim not in (1, 2) or vectors.shape[-1] != width:
        raise ModelLoadError(
            f"{what}: embedding for {token!r} has shape {tuple(vectors.shape)}; expected [{width}] or "
            f"[n_vectors, {width}] for {which}{family_hint(vectors.shape[-1], width)}"
        )
    check_finite({token: vectors}, what)
    if token in getattr(pipe, stream.tokenizer).get_vocab():
        raise ModelLoadError(f"{what}: token {token!r} is already in the tokenizer; choose another token= in the spec")
    return vectors.reshape(-1, width)


def read_embedding(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec
) -> tuple[str, dict[str, torch.Tensor], str, str, str]:
    """(token, vectors ``{encoder: [n, dim]}``, layout, source, sha256) of a spec, checked; ``pipe`` is not changed.

    Raises:
        ModelLoadError: see :func:`embedding_from_weights` and :func:`check_embedding`; also when the
            encoders' vectors differ in number (one token spans the same positions in every encoder).
    """
    streams = {s.encoder: s for s in family_of(pipe).embedding_streams()}
    if spec.embedding is not None:
        if len(streams) > 1:
            raise ModelLoadError(
                f"model {spec.model_id!r}: embedding= gives one tensor, but this base's embeddings fill "
                f"{len(streams)} text encoders {list(streams)}; pass a file with one entry per encoder"
            )
        token, vectors = str(spec.token), {next(iter(streams)): spec.embedding.detach().cpu()}
        source, layout = "<tensor>", "tensor"
        digest = weights_fingerprint({token: next(iter(vectors.values()))})
    else:
        file = resolve_weight_file(spec, PREFERRED_FILES)
        token, vectors, layout = embedding_from_weights(load_weights(file, spec.allow_pickle), spec, file, pipe)
        source, digest = str(file), source_sha256(spec.path)  # type: ignore[arg-type]
    what = f"model {spec.model_id!r}"
    checked = {encoder: check_embedding(pipe, token, v, what, streams[encoder]) for encoder, v in vectors.items()}
    counts = {encoder: v.shape[0] for encoder, v in checked.items()}
    if len(set(counts.values())) > 1:
        raise ModelLoadError(f"{what}: the text encoders' vectors differ in number {counts}; expected the same count")
    return token, checked, layout, source, digest


def check_textual_inversion(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> str:
    """Everything :func:`applied_textual_inversion` checks, without changing ``pipe``; returns the layout."""
    return read_embedding(pipe, spec)[2]


@contextmanager
def applied_textual_inversion(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    """Adds the token(s) and vectors to every embedding encoder; on exit removes them, restoring sizes and values.

    A multi-vector embedding adds ``token``, ``token_1``, ... (diffusers' spelling) to each tokenizer.
    """
    token, vectors, layout, source, digest = read_embedding(pipe, spec)
    streams = [s for s in family_of(pipe).embedding_streams() if s.encoder in vectors]
    before = {s.tokenizer: set(getattr(pipe, s.tokenizer).get_vocab()) for s in streams}
    added: dict[str, list[str]] = {}
    try:
        for stream in streams:
            tokenizer = getattr(pipe, stream.tokenizer)
            pipe.load_textual_inversion(
                vectors[stream.encoder], token=token, tokenizer=tokenizer, text_encoder=getattr(pipe, stream.encoder)
            )
            added[stream.tokenizer] = sorted(
                set(tokenizer.get_vocab()) - before[stream.tokenizer], key=tokenizer.convert_tokens_to_ids
            )
        first = added[streams[0].tokenizer]
        yield AppliedModel(
            spec=spec,
            sha256=digest,
            source=source,
            format=layout,
            n_tensors_changed=len(vectors),
            n_params_changed=sum(v.numel() for v in vectors.values()),
            tokens=tuple(first),
        )
    finally:
        for stream in streams:
            tokenizer = getattr(pipe, stream.tokenizer)
            new = sorted(set(tokenizer.get_vocab()) - before[stream.tokenizer])
            if new:
                pipe.unload_textual_inversion(new, tokenizer=tokenizer, text_encoder=getattr(pipe, stream.encoder))
