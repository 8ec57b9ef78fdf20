"""Personalized models (LoRA, Textual Inversion, DreamBooth) applied to one base pipeline and removed again.

A study keeps a single base pipeline in memory. ``applied(pipe, spec)`` turns it
into the personalized model for the duration of a ``with`` block and restores the
base exactly on exit, also after an exception:

- LoRA goes through diffusers' own ``load_lora_weights`` (diffusers/peft and
  kohya/A1111 key layouts) and ``set_adapters``; on exit the adapter is deleted
  and, when it was the last one, ``unload_lora_weights`` makes the modules plain again.
- Textual Inversion goes through ``load_textual_inversion`` and
  ``unload_textual_inversion``; the tokenizer and the embedding table return to
  their original sizes and values.
- DreamBooth copies the tuned UNet (and text encoder, when the checkpoint has one)
  into the base modules in place, and copies the base back from a CPU snapshot
  (:class:`BaseWeights`, taken once per study).

Example:
    >>> from cemaps.models import tiny_pipeline
    >>> pipe = tiny_pipeline(seed=0)
    >>> spec = PersonalizedSpec("cat-ti", "textual_inversion", path=None, token="<cat>",
    ...                         embedding=torch.ones(pipe.text_encoder.config.hidden_size))
    >>> with applied(pipe, spec) as model:
    ...     model.tokens
    ('<cat>',)
    >>> "<cat>" in pipe.tokenizer.get_vocab()
    False
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.loading import file_sha256, weights_fingerprint
from cemaps.models.safety import SAFETENSORS_SUFFIX, is_pickle_file, load_weights

Method = Literal["lora", "textual_inversion", "dreambooth"]
METHODS: tuple[str, ...] = ("lora", "textual_inversion", "dreambooth")
SWAPPABLE_COMPONENTS: tuple[str, ...] = ("unet", "text_encoder")

# Key fragments that only SDXL-family checkpoints have; SD v1.x modules lack them.
_SDXL_MARKERS = ("add_embedding", "text_encoder_2", "lora_te2_", "conditioner.embedders.1", "label_emb")
# Non-persistent buffers that older transformers versions saved; they carry no weights.
_IGNORED_SUFFIXES = ("position_ids",)


@dataclass(frozen=True)
class PersonalizedSpec:
    """Where a personalized model's weights are and how to apply them.

    Attributes:
        model_id: the name the study and the store use; also the LoRA adapter name.
        method: ``"lora"``, ``"textual_inversion"`` or ``"dreambooth"``.
        path: a weight file or folder; None only for a Textual Inversion given as ``embedding``.
        subject_id: the personalized subject (for analysis), if any.
        token: the placeholder token (Textual Inversion); overrides the name stored in the file.
        scale: LoRA strength passed to ``set_adapters``.
        allow_pickle: read ``.ckpt/.bin/.pt`` files with ``torch.load(weights_only=True)``.
        embedding: a Textual Inversion vector ``[dim]`` or vectors ``[n_vectors, dim]``
            given directly instead of a file.
    """

    model_id: str
    method: Method
    path: str | None
    subject_id: str | None = None
    token: str | None = None
    scale: float = 1.0
    allow_pickle: bool = False
    embedding: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.model_id:
            raise ModelLoadError("PersonalizedSpec.model_id is empty; expected a name for the model")
        if self.method not in METHODS:
            raise ModelLoadError(f"model {self.model_id!r}: method {self.method!r} is not one of {list(METHODS)}")
        if self.embedding is not None and self.method != "textual_inversion":
            raise ModelLoadError(f"model {self.model_id!r}: embedding= is only for method 'textual_inversion'")
        if self.path is None and self.embedding is None:
            raise ModelLoadError(f"model {self.model_id!r}: path is None; expected a weight file or folder")
        if self.embedding is not None and self.token is None:
            raise ModelLoadError(f"model {self.model_id!r}: an embedding given as a tensor needs token='<name>'")
        if not math.isfinite(self.scale):
            raise ModelLoadError(f"model {self.model_id!r}: scale {self.scale!r} is not a finite number")


@dataclass(frozen=True)
class AppliedModel:
    """What ``applied`` put into the pipeline.

    Attributes:
        spec: the applied spec.
        sha256: digest of the weight file(s), or of the embedding tensor when given directly.
        source: the file or folder read, or ``"<tensor>"``.
        format: the layout recognised, e.g. ``"diffusers"``, ``"kohya"``, ``"a1111"``, ``"ldm"``.
        n_tensors_changed: parameter tensors whose effective value changed or that were added.
        n_params_changed: scalar parameters in those tensors.
        tokens: tokens added to the tokenizer (Textual Inversion), else empty.
    """

    spec: PersonalizedSpec
    sha256: str
    source: str
    format: str
    n_tensors_changed: int
    n_params_changed: int
    tokens: tuple[str, ...] = ()


class BaseWeights:
    """CPU copies of a base pipeline's UNet and text-encoder weights, taken once, for exact restores.

    Example:
        >>> from cemaps.models import tiny_pipeline
        >>> pipe = tiny_pipeline(seed=0)
        >>> base = BaseWeights(pipe)
        >>> sorted({name.split(".")[0] for name in base.state_dict()})
        ['text_encoder', 'unet']
    """

    def __init__(self, pipe: StableDiffusionPipeline, components: tuple[str, ...] = SWAPPABLE_COMPONENTS) -> None:
        self.components: dict[str, dict[str, torch.Tensor]] = {}
        for component in components:
            module = getattr(pipe, component, None)
            if module is None:
                continue
            _refuse_adapters(pipe, f"snapshotting {component} weights")
            self.components[component] = {
                name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()
            }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All snapshotted tensors, keyed ``"<component>.<parameter name>"`` (CPU)."""
        return {f"{component}.{name}": tensor for component, state in self.components.items() for name, tensor in state.items()}

    def restore(self, pipe: StableDiffusionPipeline, components: tuple[str, ...] | None = None) -> None:
        """Copies the snapshot back into ``pipe``'s modules in place (bit-exact)."""
        for component in components if components is not None else tuple(self.components):
            _copy_into(getattr(pipe, component), self.components[component])


@contextmanager
def applied(pipe: StableDiffusionPipeline, spec: PersonalizedSpec, base: BaseWeights | None = None) -> Iterator[AppliedModel]:
    """Applies a personalized model to ``pipe`` for the ``with`` block, then restores the base exactly.

    Args:
        pipe: the base pipeline; modified in place inside the block only.
        spec: which weights to apply and how.
        base: a snapshot of ``pipe``'s base weights for DreamBooth restores; taken here when
            None (pass one when switching many DreamBooth models, to copy the base only once).

    Yields:
        An :class:`AppliedModel` describing what was applied.

    Raises:
        ModelLoadError: the weights are missing, unsafe, or made for another architecture;
            ``pipe`` is left as it was.
    """
    if spec.method == "dreambooth":
        context = _applied_dreambooth(pipe, spec, base)
    elif spec.method == "lora":
        context = _applied_lora(pipe, spec)
    else:
        context = _applied_textual_inversion(pipe, spec)
    with context as model:
        yield model


# --------------------------------------------------------------------------- LoRA


def resolve_weight_file(spec: PersonalizedSpec, preferred_names: tuple[str, ...]) -> Path:
    """The weight file a spec points at: the path itself, or the best file inside a folder.

    Inside a folder, ``preferred_names`` come first, then any ``.safetensors`` file, then
    (pickle-based) ``.bin/.pt/.ckpt`` files, which ``load_weights`` refuses without opt-in.
    """
    path = Path(spec.path).expanduser()  # type: ignore[arg-type]
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelLoadError(f"model {spec.model_id!r}: path {str(path)!r} does not exist")
    named = [path / name for name in preferred_names if (path / name).is_file()]
    safetensors = sorted(path.glob(f"*{SAFETENSORS_SUFFIX}"))
    pickled = sorted(p for p in path.iterdir() if is_pickle_file(p))
    candidates = named + safetensors + pickled
    if not candidates:
        raise ModelLoadError(
            f"model {spec.model_id!r}: folder {str(path)!r} has no weight file; expected one of {list(preferred_names)}"
        )
    return candidates[0]


def _check_sdxl(keys: list[str], what: str) -> None:
    for key in keys:
        for marker in _SDXL_MARKERS:
            if marker in key:
                raise ModelLoadError(
                    f"{what} has key {key!r}, which belongs to an SDXL-family model; expected weights for SD v1.x"
                )


def _lora_module_paths(converted: dict[str, torch.Tensor]) -> dict[str, tuple[str, str, str, torch.Size]]:
    """Maps each LoRA matrix to (component, module path, role, shape); role is 'down' (A) or 'up' (B).

    ``converted`` is ``lora_state_dict``'s output (component-prefixed keys, old or new
    diffusers naming); each component is brought to peft naming the way diffusers'
    own loaders do, so the module paths are the ones ``load_lora_weights`` will wrap.
    """
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    entries: dict[str, tuple[str, str, str, torch.Size]] = {}
    for component in {key.partition(".")[0] for key in converted}:
        part = {k[len(component) + 1 :]: v for k, v in converted.items() if k.startswith(component + ".") and not k.endswith("alpha")}
        if any(".lora_A." not in k and ".lora_B." not in k for k in part):
            part = convert_unet_state_dict_to_peft(part) if component == "unet" else convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        for key, tensor in part.items():
            for marker, role in ((".lora_A.", "down"), (".lora_B.", "up")):
                if marker in key:
                    entries[f"{component}.{key}"] = (component, key.split(marker)[0], role, tensor.shape)
    return entries


def _check_lora_matches(pipe: StableDiffusionPipeline, raw: dict[str, torch.Tensor], source: Path) -> str:
    """Validates a LoRA state dict against the pipeline's modules; returns its format name."""
    keys = list(raw)
    what = f"LoRA file {str(source)!r}"
    _check_sdxl(keys, what)
    layout = "kohya" if any(k.startswith(("lora_unet_", "lora_te_")) for k in keys) else "diffusers"
    try:
        converted = pipe.lora_state_dict(dict(raw))[0]
    except (ValueError, KeyError) as error:
        raise ModelLoadError(f"{what} is not a LoRA that diffusers can read: {str(error).splitlines()[0]}") from error
    entries = _lora_module_paths(converted)
    if not entries:
        raise ModelLoadError(f"{what} has no LoRA weights (keys like '*.lora_A.weight' or 'lora_unet_*.lora_down.weight')")
    modules = {component: dict(getattr(pipe, component).named_modules()) for component in SWAPPABLE_COMPONENTS if getattr(pipe, component, None) is not None}
    for key, (component, module_path, role, shape) in sorted(entries.items()):
        if component not in modules:
            raise ModelLoadError(f"{what} has key {key!r} for component {component!r}, which the pipeline lacks")
        module = modules[component].get(module_path)
        if module is None:
            raise ModelLoadError(f"{what} has key {key!r}: {component} has no module {module_path!r} (another architecture?)")
        layer = getattr(module, "base_layer", module)
        in_dim = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        out_dim = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        actual, expected = (shape[1], in_dim) if role == "down" else (shape[0], out_dim)
        if expected is not None and actual != expected:
            raise ModelLoadError(
                f"{what} has key {key!r} of shape {tuple(shape)}, but {component}.{module_path} has "
                f"{'input' if role == 'down' else 'output'} width {expected}, not {actual} (another architecture?)"
            )
    return layout


def _adapter_names(pipe: StableDiffusionPipeline) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _refuse_adapters(pipe: StableDiffusionPipeline, doing: str) -> None:
    try:
        present = _adapter_names(pipe)
    except ValueError:  # diffusers raises when peft never touched the pipeline
        present = set()
    if present:
        raise ModelLoadError(f"cannot do {doing}: the pipeline still has LoRA adapters {sorted(present)}; unload them first")


def _lora_wrapped_modules(pipe: StableDiffusionPipeline, adapter: str) -> list[torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = []
    for component in SWAPPABLE_COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        wrapped += [m for m in module.modules() if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {})]
    return wrapped


@contextmanager
def _applied_lora(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    source = resolve_weight_file(spec, ("pytorch_lora_weights.safetensors",))
    raw = load_weights(source, allow_pickle=spec.allow_pickle)
    layout = _check_lora_matches(pipe, raw, source)
    try:
        existing = _adapter_names(pipe)
    except ValueError:
        existing = set()
    if spec.model_id in existing:
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    try:
        pipe.load_lora_weights(dict(raw), adapter_name=spec.model_id)
        pipe.set_adapters([spec.model_id], adapter_weights=[spec.scale])
        wrapped = _lora_wrapped_modules(pipe, spec.model_id)
        if not wrapped:
            raise ModelLoadError(f"LoRA file {str(source)!r} changed no module of the pipeline")
        yield AppliedModel(
            spec=spec,
            sha256=file_sha256(source),
            source=str(source),
            format=layout,
            n_tensors_changed=len(wrapped),
            n_params_changed=sum(m.base_layer.weight.numel() for m in wrapped),
        )
    finally:
        _remove_lora(pipe, spec.model_id)


def _remove_lora(pipe: StableDiffusionPipeline, adapter: str) -> None:
    try:
        present = _adapter_names(pipe)
    except ValueError:
        return
    if adapter in present:
        pipe.delete_adapters(adapter)
    if not present - {adapter}:
        # delete_adapters leaves empty peft wrappers; unloading makes the modules plain nn.Linear again
        pipe.unload_lora_weights()


# --------------------------------------------------------------------------- Textual Inversion


def _embedding_from_weights(state: dict, spec: PersonalizedSpec, source: Path) -> tuple[str, torch.Tensor, str]:
    """Finds (token, vectors [n, dim], format) in a diffusers, A1111 or raw-tensor embedding file."""
    what = f"embedding file {str(source)!r}"
    _check_sdxl(list(state), what)
    if "clip_g" in state or "clip_l" in state:
        raise ModelLoadError(f"{what} has keys {sorted(state)}, an SDXL embedding; expected one for SD v1.x")
    if "string_to_param" in state:
        table = state["string_to_param"]
        if not isinstance(table, dict) or "*" not in table:
            raise ModelLoadError(f"{what}: 'string_to_param' has no '*' entry; expected an A1111 embedding")
        token, vectors, layout = spec.token or str(state.get("name") or source.stem), table["*"], "a1111"
    elif "emb_params" in state:
        token, vectors, layout = spec.token or source.stem, state["emb_params"], "a1111"
    elif len(state) == 1:
        key, vectors = next(iter(state.items()))
        if key == "" and spec.token is None:
            raise ModelLoadError(f"{what} holds a bare tensor; pass token='<name>' in the spec")
        token, layout = spec.token or key, "diffusers" if key else "tensor"
    else:
        raise ModelLoadError(
            f"{what} has keys {sorted(state)[:5]}; expected one '<token>' key (diffusers), "
            "'string_to_param' or 'emb_params' (A1111)"
        )
    if not isinstance(vectors, torch.Tensor):
        raise ModelLoadError(f"{what}: the embedding for {token!r} is a {type(vectors).__name__}, not a tensor")
    return token, vectors, layout


def _check_embedding(pipe: StableDiffusionPipeline, token: str, vectors: torch.Tensor, what: str) -> torch.Tensor:
    width = pipe.text_encoder.get_input_embeddings().embedding_dim
    if vectors.ndim not in (1, 2) or vectors.shape[-1] != width:
        hint = " (an SDXL/OpenCLIP-G embedding?)" if vectors.shape[-1] == 1280 else ""
        raise ModelLoadError(
            f"{what}: embedding for {token!r} has shape {tuple(vectors.shape)}; expected [{width}] or "
            f"[n_vectors, {width}] for this text encoder{hint}"
        )
    if not torch.isfinite(vectors).all():
        raise ModelLoadError(f"{what}: embedding for {token!r} has non-finite values")
    if token in pipe.tokenizer.get_vocab():
        raise ModelLoadError(f"{what}: token {token!r} is already in the tokenizer; choose another token= in the spec")
    return vectors.reshape(-1, width)


@contextmanager
def _applied_textual_inversion(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    if spec.embedding is not None:
        source_name, layout = "<tensor>", "tensor"
        token, vectors = spec.token, spec.embedding.detach().cpu()
        digest = weights_fingerprint({token: vectors})
    else:
        source = resolve_weight_file(spec, ("learned_embeds.safetensors", "learned_embeds.bin"))
        token, vectors, layout = _embedding_from_weights(load_weights(source, spec.allow_pickle), spec, source)
        source_name, digest = str(source), file_sha256(source)
    vectors = _check_embedding(pipe, token, vectors, f"model {spec.model_id!r}")  # type: ignore[arg-type]
    vocab_before = set(pipe.tokenizer.get_vocab())
    added: list[str] = []
    try:
        pipe.load_textual_inversion(vectors, token=token)
        added = sorted(set(pipe.tokenizer.get_vocab()) - vocab_before, key=pipe.tokenizer.convert_tokens_to_ids)
        yield AppliedModel(
            spec=spec,
            sha256=digest,
            source=source_name,
            format=layout,
            n_tensors_changed=1,
            n_params_changed=vectors.numel(),
            tokens=tuple(added),
        )
    finally:
        added = added or sorted(set(pipe.tokenizer.get_vocab()) - vocab_before)
        if added:
            pipe.unload_textual_inversion(added)


# --------------------------------------------------------------------------- DreamBooth


def _component_weight_file(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Reads a diffusers/transformers component folder's weights, sharded or not."""
    for stem in ("diffusion_pytorch_model", "model"):
        index = folder / f"{stem}{SAFETENSORS_SUFFIX}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_weights(folder / shard).items()}
        for suffix in (SAFETENSORS_SUFFIX, ".bin"):
            if (folder / f"{stem}{suffix}").is_file():
                return load_weights(folder / f"{stem}{suffix}", allow_pickle)
    raise ModelLoadError(f"folder {str(folder)!r} has no diffusion_pytorch_model.safetensors or model.safetensors")


def _split_single_file(checkpoint: dict[str, torch.Tensor], pipe: StableDiffusionPipeline, what: str) -> tuple[dict[str, dict[str, torch.Tensor]], str]:
    """Splits a single-file checkpoint into diffusers-named component state dicts."""
    _check_sdxl(list(checkpoint), what)
    if any(key.startswith("model.diffusion_model.") for key in checkpoint):
        from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint

        try:
            states = {"unet": convert_ldm_unet_checkpoint(checkpoint, dict(pipe.unet.config))}
        except (KeyError, IndexError, RuntimeError) as error:
            raise ModelLoadError(f"{what}: cannot convert its original-SD UNet keys ({error!r}); another architecture?") from error
        if any(key.startswith("cond_stage_model.transformer.") for key in checkpoint):
            states["text_encoder"] = convert_ldm_clip_checkpoint(checkpoint)
        return states, "ldm"
    prefixed = {c: {k[len(c) + 1 :]: v for k, v in checkpoint.items() if k.startswith(c + ".")} for c in SWAPPABLE_COMPONENTS}
    if any(prefixed.values()):
        return {c: s for c, s in prefixed.items() if s}, "diffusers-single-file"
    return {"unet": checkpoint}, "unet-state-dict"


def _dreambooth_states(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> tuple[dict[str, dict[str, torch.Tensor]], str, str, str]:
    """Returns (component states, source, sha256, format) for a DreamBooth folder or file."""
    path = Path(spec.path).expanduser()  # type: ignore[arg-type]
    what = f"DreamBooth model {spec.model_id!r} at {str(path)!r}"
    if path.is_file():
        states, layout = _split_single_file(load_weights(path, spec.allow_pickle), pipe, what)
        return states, str(path), file_sha256(path), layout
    if not path.is_dir():
        raise ModelLoadError(f"{what}: path does not exist")
    if (path / "model_index.json").is_file():
        folders = {c: path / c for c in SWAPPABLE_COMPONENTS if (path / c).is_dir()}
        if "unet" not in folders:
            raise ModelLoadError(f"{what}: pipeline folder has no unet/ subfolder")
        layout = "diffusers-pipeline"
    elif (path / "config.json").is_file():
        folders, layout = {"unet": path}, "diffusers-unet"
    else:
        raise ModelLoadError(f"{what}: folder has neither model_index.json (pipeline) nor config.json (UNet only)")
    states = {c: _component_weight_file(folder, spec.allow_pickle) for c, folder in folders.items()}
    digest = hashlib.sha256()
    for component, folder in folders.items():
        for file in sorted(folder.iterdir()):
            if file.is_file():
                digest.update(f"{component}/{file.name}:{file_sha256(file)}\n".encode())
    return states, str(path), digest.hexdigest(), layout


def _check_state_matches(component: str, module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Returns ``state`` without ignorable buffers; raises on the first key or shape mismatch."""
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith(_IGNORED_SUFFIXES)}
    state = _align_text_model_prefix(state, set(expected))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        _check_sdxl(unexpected, what)
        raise ModelLoadError(f"{what}: {component} key {unexpected[0]!r} does not exist in the base {component} (another architecture?)")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(f"{what}: {component} key {missing[0]!r} is missing from the checkpoint")
    for name in sorted(expected):
        if state[name].shape != expected[name].shape:
            raise ModelLoadError(
                f"{what}: {component} parameter {name!r} has shape {tuple(state[name].shape)}, "
                f"the base has {tuple(expected[name].shape)}"
            )
    return state


def _align_text_model_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Bridges CLIP checkpoints saved with ``text_model.`` key prefixes and modules without them.

    transformers 5 names CLIPTextModel parameters without the prefix that SD v1.5 files
    (and transformers 4) use; it renames at load time, so an in-place copy must too.
    """
    prefix = "text_model."
    if set(state) == expected:
        return state
    if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        return {k[len(prefix) :]: v for k, v in state.items()}
    if all(k.startswith(prefix) for k in expected) and not any(k.startswith(prefix) for k in state):
        return {prefix + k: v for k, v in state.items()}
    return state


def _copy_into(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copies ``state`` into the module's own tensors (same storage, so no reallocation)."""
    targets = module.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            targets[name].copy_(tensor)


@contextmanager
def _applied_dreambooth(pipe: StableDiffusionPipeline, spec: PersonalizedSpec, base: BaseWeights | None) -> Iterator[AppliedModel]:
    _refuse_adapters(pipe, f"a DreamBooth swap to {spec.model_id!r}")
    states, source, digest, layout = _dreambooth_states(pipe, spec)
    what = f"DreamBooth model {spec.model_id!r} at {source!r}"
    states = {c: _check_state_matches(c, getattr(pipe, c), s, what) for c, s in states.items()}
    snapshot = base if base is not None else BaseWeights(pipe, tuple(states))
    missing = [c for c in states if c not in snapshot.components]
    if missing:
        raise ModelLoadError(f"{what}: the base snapshot has no {missing[0]!r}; take BaseWeights with that component")
    changed = [
        (c, name) for c, state in states.items() for name, tensor in state.items()
        if not torch.equal(tensor.to(snapshot.components[c][name].dtype), snapshot.components[c][name])
    ]
    swapped = tuple(states)
    try:
        for component in swapped:
            _copy_into(getattr(pipe, component), states.pop(component))
        yield AppliedModel(
            spec=spec,
            sha256=digest,
            source=source,
            format=layout,
            n_tensors_changed=len(changed),
            n_params_changed=sum(snapshot.components[c][name].numel() for c, name in changed),
        )
    finally:
        snapshot.restore(pipe, swapped)
