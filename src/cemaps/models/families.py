"""The model-family layer: one registry entry per family, read by everything that touches a pipeline.

A family (SD 1.x/2.x, SDXL, SD3, Flux, PixArt, ...) is one :class:`ModelFamily`, keyed by the
pipeline class names that a diffusers folder's ``model_index.json`` names (``_class_name``). The
entry says what a caller would otherwise hard-code: which attribute holds the denoiser
(``unet`` / ``transformer``), which text encoders feed which slice of the denoiser's text context
(:class:`TextStream`), how classifier-free guidance shows in the batch, how an attention layer's
latent grid is derived, which components a personalization touches (read from diffusers' own
``_lora_loadable_modules``, not copied), and the scheduler's time convention. Loading, the hook
context, probes, loaders, weight deltas, the runner, the planner and the trainers ask the registry
(:func:`family_of`, :func:`family_of_folder`, :func:`family_by_key`); none of them names a family.

Entries declare themselves: a module calls :func:`register_family` at import, and the modules
listed in ``BUILTIN_FAMILY_MODULES`` are imported on the first lookup (nothing happens when this
module is imported). A class outside the registry is refused with one line naming it and the
supported families.

Example:
    >>> from cemaps.models.tiny import tiny_pipeline
    >>> family = family_of(tiny_pipeline(seed=0))
    >>> family.key, family.denoiser, family.lora_components()
    ('sd', 'unet', ('unet', 'text_encoder'))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

from cemaps.errors import ModelLoadError

# Modules whose import registers the families cemaps ships; a family module adds itself here.
BUILTIN_FAMILY_MODULES: tuple[str, ...] = ("cemaps.models.families_unet", "cemaps.models.families_dit")

GuidanceLayout = Literal["uncond_cond_halves", "embedded_scale"]
LatentGrid = Literal["unet_downsampling", "patch_tokens"]
AttentionKind = Literal["cross", "joint"]
TimeConvention = Literal["ddpm_discrete", "flow_matching"]


@dataclass(frozen=True)
class TextStream:
    """One text encoder of a family and the part of the denoiser's text context it fills.

    The context (``encoder_hidden_states``, ``[batch, tokens, features]``) is laid out in token
    blocks: streams with the same ``token_block`` are concatenated on the feature axis in the
    order listed (SDXL: CLIP ViT-L's 768 features, then OpenCLIP ViT-bigG's 1280, both over the
    same 77 tokens); blocks follow each other on the token axis (SD3: the CLIP block, then T5's).
    A stream with ``token_block=None`` gives only a pooled vector (Flux's CLIP).

    Attributes:
        encoder: pipeline attribute of the text encoder (``"text_encoder"``, ``"text_encoder_2"``).
        tokenizer: pipeline attribute of its tokenizer.
        token_block: index of the token block it fills, or None for a pooled-only stream.
        labels_tokens: its token ids name the positions of its block (one stream per block does;
            SDXL's tokenizer 2 pads with ``!`` where tokenizer 1 pads with the end token, so the
            block is labelled by tokenizer 1).
        hidden_state: which encoder output the pipeline puts into the context by default:
            ``"last"`` (``last_hidden_state``, after the final layer norm: SD 1.x/2.x) or
            ``"penultimate"`` (``hidden_states[-2]``, no final norm: SDXL), as in the family's
            diffusers ``encode_prompt``.
        pooled: the stream also gives the pooled text embedding (SDXL's ``add_text_embeds``).
        embedding_key: the key of this encoder's vectors in a multi-encoder Textual Inversion file
            (``"clip_l"`` / ``"clip_g"``, the SDXL embedding layout of kohya sd-scripts and A1111);
            None for a family whose embeddings are a single tensor.
    """

    encoder: str
    tokenizer: str
    token_block: int | None = 0
    labels_tokens: bool = True
    hidden_state: Literal["last", "penultimate"] = "last"
    pooled: bool = False
    embedding_key: str | None = None


@dataclass(frozen=True)
class ContextSlice:
    """Where one stream sits in the text context: ``context[:, tokens, features]``."""

    stream: TextStream
    tokens: slice
    features: slice


@dataclass(frozen=True)
class ModelFamily:
    """What cemaps needs to know about one family of diffusers pipelines.

    Attributes:
        key: short identifier written to stores and configs (``"sd"``, ``"sdxl"``).
        name: the family's name in messages (``"SD 1.x/2.x"``, ``"SDXL"``).
        pipeline_classes: diffusers pipeline class names of this family, as ``model_index.json``
            names them; the first is the text-to-image class cemaps builds.
        denoiser: pipeline attribute of the denoiser (``"unet"`` or ``"transformer"``).
        text_streams: the text encoders, in the order their features enter the context.
        guidance: ``"uncond_cond_halves"``: classifier-free guidance doubles the denoiser batch,
            unconditional half first (diffusers' ``torch.cat([negative, prompt])``);
            ``"embedded_scale"``: guidance-distilled, the scale is a denoiser input and the batch
            is not doubled (Flux dev).
        attention: ``"cross"``: text enters through separate cross-attention layers (``attn2``);
            ``"joint"``: image and text tokens attend together in one softmax (MM-DiT).
        latent_grid: ``"unet_downsampling"``: a layer's query grid is the latent grid halved per
            down block (derived from the query length and the latent aspect ratio);
            ``"patch_tokens"``: the latent grid divided by the denoiser's ``patch_size``.
        time_convention: ``"ddpm_discrete"``: integer timesteps in ``[0, num_train_timesteps)`` of
            a DDPM noise schedule (training noises with ``scheduler.add_noise``);
            ``"flow_matching"``: timesteps are ``sigma * 1000`` of a rectified flow.
        single_file_types: diffusers' names for this family's original-layout checkpoints
            (``diffusers.loaders.single_file_utils.infer_diffusers_model_type``).
        weight_markers: key fragments that only this family's personalization or checkpoint files
            have (kohya, SGM, diffusers layouts), to name a file's family when it meets a base of
            another; the context width of the text encoders names the rest.
        denoiser_time_scale: what the denoiser's ``timestep`` input is multiplied by to give the
            scheduler's timestep (Flux's pipeline passes ``timestep / 1000``: 1000; others 1).
    """

    key: str
    name: str
    pipeline_classes: tuple[str, ...]
    denoiser: str
    text_streams: tuple[TextStream, ...]
    guidance: GuidanceLayout = "uncond_cond_halves"
    attention: AttentionKind = "cross"
    latent_grid: LatentGrid = "unet_downsampling"
    time_convention: TimeConvention = "ddpm_discrete"
    single_file_types: tuple[str, ...] = ()
    weight_markers: tuple[str, ...] = ()
    denoiser_time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.pipeline_classes:
            raise ValueError(f"family {self.key!r} names no pipeline class")
        if not self.text_streams:
            raise ValueError(f"family {self.key!r} has no text stream")
        blocks = {s.token_block for s in self.text_streams if s.token_block is not None}
        for block in blocks:
            labelling = [s for s in self.text_streams if s.token_block == block and s.labels_tokens]
            if len(labelling) != 1:
                raise ValueError(f"family {self.key!r}: token block {block} needs exactly one labelling stream")

    @property
    def pipeline_class_name(self) -> str:
        """The text-to-image pipeline class cemaps builds for this family."""
        return self.pipeline_classes[0]

    def pipeline_class(self) -> type:
        """The diffusers class of :attr:`pipeline_class_name` (imports diffusers)."""
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def lora_components(self) -> tuple[str, ...]:
        """Pipeline attributes a LoRA may touch: diffusers' ``_lora_loadable_modules`` of the pipeline class.

        Empty for a pipeline class without diffusers' LoRA loader (PixArt-Sigma): no LoRA loads there.
        """
        return tuple(getattr(self.pipeline_class(), "_lora_loadable_modules", ()))

    @property
    def encoders(self) -> tuple[str, ...]:
        """Pipeline attributes of the text encoders, in stream order."""
        return tuple(s.encoder for s in self.text_streams)

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(s.tokenizer for s in self.text_streams)

    @property
    def swappable_components(self) -> tuple[str, ...]:
        """Components a DreamBooth model may replace: the denoiser and the text encoders."""
        return (self.denoiser, *self.encoders)

    @property
    def labelling_stream(self) -> TextStream:
        """The stream whose token ids label the first token block of the context."""
        first = min(s.token_block for s in self.text_streams if s.token_block is not None)
        return next(s for s in self.text_streams if s.token_block == first and s.labels_tokens)

    def feature_sharing(self, stream: TextStream) -> tuple[str, ...]:
        """Encoders whose features share ``stream``'s token positions (its block), in feature order."""
        return tuple(s.encoder for s in self.text_streams if s.token_block == stream.token_block)

    def embedding_streams(self) -> tuple[TextStream, ...]:
        """Streams a Textual Inversion embedding goes into: those with an ``embedding_key``, else the first."""
        keyed = tuple(s for s in self.text_streams if s.embedding_key is not None)
        return keyed or self.text_streams[:1]

    def denoiser_of(self, pipe: Any) -> Any:
        return getattr(pipe, self.denoiser)

    def context_slices(self, pipe: Any) -> tuple[ContextSlice, ...]:
        """Where each stream with a token block sits in the context, from the encoders' and tokenizers' sizes.

        Widths are the encoders' ``config.hidden_size``, block lengths the labelling tokenizer's
        ``model_max_length``; nothing is assumed about 77 tokens or 768 features.
        """
        slices = []
        token_start = 0
        for block in sorted({s.token_block for s in self.text_streams if s.token_block is not None}):
            members = [s for s in self.text_streams if s.token_block == block]
            labelling = next(s for s in members if s.labels_tokens)
            length = int(getattr(pipe, labelling.tokenizer).model_max_length)
            feature_start = 0
            for stream in members:
                width = int(getattr(pipe, stream.encoder).config.hidden_size)
                slices.append(
                    ContextSlice(
                        stream, slice(token_start, token_start + length), slice(feature_start, feature_start + width)
                    )
                )
                feature_start += width
            token_start += length
        return tuple(slices)

    def context_width(self, pipe: Any) -> int:
        """Features of the first token block: the denoiser's ``cross_attention_dim`` for cross-attention families."""
        return max(s.features.stop for s in self.context_slices(pipe) if s.tokens.start == 0)


_REGISTRY: dict[str, ModelFamily] = {}
_BY_KEY: dict[str, ModelFamily] = {}
_loaded = False


def register_family(family: ModelFamily) -> ModelFamily:
    """Adds ``family`` to the registry under each of its pipeline class names; returns it.

    Raises:
        ValueError: a class name or key is already registered to another family.
    """
    for name in family.pipeline_classes:
        if name in _REGISTRY and _REGISTRY[name] != family:
            raise ValueError(f"pipeline class {name!r} is already registered to family {_REGISTRY[name].key!r}")
    if family.key in _BY_KEY and _BY_KEY[family.key] != family:
        raise ValueError(f"family key {family.key!r} is already registered")
    _BY_KEY[family.key] = family
    _REGISTRY.update(dict.fromkeys(family.pipeline_classes, family))
    return family


def _ensure_builtin() -> None:
    global _loaded
    if not _loaded:
        for module in BUILTIN_FAMILY_MODULES:
            import_module(module)
        _loaded = True


def families() -> tuple[ModelFamily, ...]:
    """The registered families, in registration order."""
    _ensure_builtin()
    return tuple(_BY_KEY.values())


def supported() -> str:
    """``SD 1.x/2.x (StableDiffusionPipeline, ...), SDXL (...)``: the supported families in one phrase."""
    return "; ".join(f"{f.name} ({', '.join(f.pipeline_classes)})" for f in families())


def family_by_class_name(class_name: str, what: str = "pipeline class") -> ModelFamily:
    """The family of a pipeline class name.

    Raises:
        ModelLoadError: the name is not in the registry (the message lists the supported families).
    """
    _ensure_builtin()
    family = _REGISTRY.get(class_name)
    if family is None:
        raise ModelLoadError(f"{what} {class_name!r}: not a supported model family; supported: {supported()}")
    return family


def family_by_key(key: str) -> ModelFamily:
    """The family with ``key`` (``"sd"``, ``"sdxl"``, ...).

    Raises:
        ModelLoadError: no family has that key.
    """
    _ensure_builtin()
    if key not in _BY_KEY:
        raise ModelLoadError(f"model family {key!r} is unknown; expected one of {', '.join(_BY_KEY)}")
    return _BY_KEY[key]


def family_of(pipe: Any) -> ModelFamily:
    """The family of a pipeline object: its class, or the nearest registered base class (a user subclass).

    Raises:
        ModelLoadError: neither the class nor a base class is registered.
    """
    _ensure_builtin()
    for cls in type(pipe).__mro__:
        if cls.__name__ in _REGISTRY:
            return _REGISTRY[cls.__name__]
    return family_by_class_name(type(pipe).__name__)


def labelling_tokenizer(pipe: Any) -> Any:
    """The tokenizer whose ids label the context's token axis (the family's labelling stream)."""
    return getattr(pipe, family_of(pipe).labelling_stream.tokenizer)


def family_of_folder(folder: str | Path) -> ModelFamily:
    """The family named by a diffusers folder's ``model_index.json`` (its ``_class_name``).

    Raises:
        ModelLoadError: the file is missing or unreadable, names no class, or an unsupported one.
    """
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"cannot read {str(index)!r}: expected a diffusers model_index.json ({error})") from error
    if not isinstance(class_name, str):
        raise ModelLoadError(f"{str(index)!r} names no _class_name; expected a diffusers pipeline class name")
    return family_by_class_name(class_name, what=f"{str(index)!r} names pipeline class")


def family_of_single_file_type(model_type: str) -> ModelFamily:
    """The family of diffusers' single-file model type (``"v1"``, ``"xl_base"``, ...).

    Raises:
        ModelLoadError: no registered family reads checkpoints of that type.
    """
    for family in families():
        if model_type in family.single_file_types:
            return family
    readable = ", ".join(t for f in families() for t in f.single_file_types)
    raise ModelLoadError(
        f"single-file checkpoint of type {model_type!r}: not a supported model family; supported types: {readable}"
    )
