"""What the three loaders share: the spec, the record of what was applied, the base snapshot, file lookup.

Also the one place that says what a weight file looks like from its keys
(:func:`describe_weights`), so that a file given under the wrong ``method`` is refused
with one line naming what it is (a full model, an SDXL LoRA, a LyCORIS LoHa, an embedding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.families import ModelFamily, families, family_of
from cemaps.models.methods import METHODS, Method
from cemaps.models.safety import SAFETENSORS_SUFFIX, is_pickle_file

# The components a DreamBooth model of SD 1.x/2.x replaces; other families say theirs in the
# registry (``ModelFamily.swappable_components``), which every loader asks.
SWAPPABLE_COMPONENTS: tuple[str, ...] = ("unet", "text_encoder")

# LyCORIS network types diffusers' LoRA loader cannot apply, by the key suffix LyCORIS writes.
LYCORIS_MARKERS = {
    ".hada_w1_a": "a LyCORIS LoHa",
    ".lokr_w1": "a LyCORIS LoKr",
    ".on_input": "a LyCORIS (IA)^3",
    ".oft_blocks": "a LyCORIS OFT",
}
# Text-encoder widths of the published model families, to name the family of a file that does not fit.
FAMILY_OF_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL (OpenCLIP ViT-bigG)", 2048: "SDXL"}
_LORA_FRAGMENTS = (
    ".lora_A.",
    ".lora_B.",
    ".lora_down.",
    ".lora_up.",
    "_lora.down.",
    "_lora.up.",
    ".lora.down.",
    ".lora.up.",
)


def family_hint(width: int, expected: int) -> str:
    """`` (1024 is SD 2.x's context width)`` when ``width`` names another model family, else ``""``."""
    family = FAMILY_OF_WIDTH.get(int(width))
    return f" (width {width} is {family}'s; this base has {expected})" if family and width != expected else ""


def context_width_hint(state: Mapping[str, object], pipe: object) -> str:
    """``; its cross-attention width 768 is SD 1.x's, the base model is SDXL (width 2048)`` or ``""``.

    The width is the input width of the file's first ``attn2.to_k`` matrix (LoRA down/A or full
    weight): the context width of the family it was made for. Used where a file of a family without
    ``weight_markers`` (SD 1.x) fails to fit a base of another.
    """
    base = family_of(pipe)
    expected = base.context_width(pipe)
    for key, tensor in state.items():
        flat = key.replace("_", ".")
        is_down = any(role in key for role in ("lora_down", "lora_A", "lora.down")) or "lora" not in key
        if "attn2.to.k" in flat and is_down and isinstance(tensor, torch.Tensor) and tensor.ndim == 2:
            width = int(tensor.shape[1])
            if width != expected:
                family = FAMILY_OF_WIDTH.get(width, "another family")
                return (
                    f"; its cross-attention width {width} is {family}'s, the base model is {base.name} "
                    f"(width {expected})"
                )
            return ""
    return ""


def _article(name: str) -> str:
    """``an`` before a family name read with a vowel sound (``an SDXL``), else ``a``."""
    return "an" if name[:1].upper() in "AEFHILMNORSX" else "a"


def marked_family(keys: Iterable[str], skip: ModelFamily | None = None) -> tuple[ModelFamily, str] | None:
    """(family, key): the first registered family (other than ``skip``) whose ``weight_markers`` a key holds."""
    keys = list(keys)
    for family in families():
        if family is skip or not family.weight_markers:
            continue
        key = next((k for k in keys if any(marker in k for marker in family.weight_markers)), None)
        if key is not None:
            return family, key
    return None


def embedding_family(keys: Iterable[str], skip: ModelFamily | None = None) -> tuple[ModelFamily, str] | None:
    """(family, key): the family whose multi-encoder embedding keys (``clip_l``/``clip_g``) a file has."""
    keys = set(keys)
    for family in families():
        named = {s.embedding_key for s in family.text_streams if s.embedding_key is not None}
        if family is not skip and named & keys:
            return family, sorted(named & keys)[0]
    return None


def describe_weights(state: Mapping[str, object]) -> str:
    """What a weight file's keys look like, in a few words: the kind of model it holds.

    Returns one of ``"an SDXL model"``, ``"an SDXL LoRA"``, a LyCORIS type (see
    ``LYCORIS_MARKERS``), ``"an SDXL Textual Inversion embedding"``, ``"a full original-SD
    checkpoint"``, ``"a LoRA"``, ``"a Textual Inversion embedding"``, ``"a full model"``, or
    ``"unrecognised weights"``. Layouts: kohya sd-scripts ``networks/lora.py`` and LyCORIS for
    LoRA keys, A1111 ``modules/textual_inversion/textual_inversion.py`` for embeddings
    (``string_to_param``, ``emb_params``, ``clip_l``/``clip_g``), CompVis ``ldm`` for
    ``model.diffusion_model.*``.
    """
    return identify_weights(state)[0]


def identify_weights(state: Mapping[str, object], base: ModelFamily | None = None) -> tuple[str, str]:
    """(:func:`describe_weights`' answer, the first key that decided it).

    ``base``: the family of the pipeline the file is for; its own markers then name no family
    (an SDXL LoRA on an SDXL base is just "a LoRA").
    """
    keys = list(state)

    def first(test) -> str | None:
        return next((key for key in keys if test(key)), None)

    for marker, name in LYCORIS_MARKERS.items():
        if (key := first(lambda k, m=marker: m in k)) is not None:
            return name, key
    lora = first(lambda k: k.startswith(("lora_unet_", "lora_te")) or any(f in k for f in _LORA_FRAGMENTS))
    if (found := embedding_family(keys, skip=base)) is not None:
        return f"{_article(found[0].name)} {found[0].name} Textual Inversion embedding", found[1]
    if (found := marked_family(keys, skip=base)) is not None:
        return f"{_article(found[0].name)} {found[0].name} {'LoRA' if lora else 'model'}", found[1]
    if lora is not None:
        return "a LoRA", lora
    if (key := first(lambda k: k.startswith("model.diffusion_model."))) is not None:
        return "a full original-SD checkpoint", key
    if (key := first(lambda k: k in ("string_to_param", "emb_params"))) is not None:
        return "a Textual Inversion embedding", key
    if base is not None and (found := embedding_family(keys)) is not None:
        return "a Textual Inversion embedding", found[1]
    if len(keys) == 1 and isinstance(state[keys[0]], torch.Tensor) and state[keys[0]].ndim <= 2:  # type: ignore[union-attr]
        return "a Textual Inversion embedding", keys[0]
    if (key := first(lambda k: k.removeprefix("unet.").startswith(("conv_in.", "down_blocks.")))) is not None:
        return "a full model", key
    return "unrecognised weights", keys[0] if keys else ""


SUGGESTED_METHOD = {
    "a LoRA": "lora",
    "a Textual Inversion embedding": "textual_inversion",
    "a full original-SD checkpoint": "dreambooth",
    "a full model": "dreambooth",
}


def refuse_other_kind(
    state: Mapping[str, object], accepted: tuple[str, ...], what: str, pipe: object | None = None
) -> str:
    """Returns ``describe_weights(state)`` when it is ``accepted``; otherwise raises one line saying what it looks like.

    Args:
        pipe: the base pipeline; weights of another registered family are then refused naming
            both families, and the base family's own markers are accepted.

    Raises:
        ModelLoadError: e.g. ``LoRA file 'x' looks like a full original-SD checkpoint
            (model.diffusion_model.* keys); use method: dreambooth``, or ``LoRA file 'x' is for
            SDXL (key 'lora_te2_...'), but the base model is SD 1.x/2.x (StableDiffusionPipeline)``.
    """
    base = family_of(pipe) if pipe is not None else None
    if base is not None:
        check_family(state, pipe, what)
    kind, example = identify_weights(state, base)
    if kind in accepted:
        return kind
    method = SUGGESTED_METHOD.get(kind)
    advice = (
        f"; use method: {method}" if method else "; cemaps loads SD v1.x LoRA, Textual Inversion and DreamBooth weights"
    )
    raise ModelLoadError(f"{what} looks like {kind} (key {example!r}), not what its method expects{advice}")


def check_family(keys: Iterable[str], pipe: object, what: str) -> None:
    """Raises one line naming both families when a key belongs to a family other than the base's.

    A family is recognised by its ``weight_markers`` and its embedding keys (the registry); a file
    of a family without markers (SD 1.x on an SDXL base) is named by its widths where the loaders
    check them (:func:`family_hint`).
    """
    base = family_of(pipe)
    keys = list(keys)
    found = marked_family(keys, skip=base) or embedding_family(keys, skip=base)
    if found is not None:
        family, key = found
        raise ModelLoadError(
            f"{what} is for {family.name} (key {key!r}), but the base model is {base.name} "
            f"({type(pipe).__name__}); expected weights made for {base.name}"
        )


def check_finite(state: Mapping[str, object], what: str) -> None:
    """Raises naming the first tensor that holds NaN or infinity (nested dicts are searched too)."""
    for key, value in state.items():
        if isinstance(value, Mapping):
            check_finite(value, f"{what} [{key!r}]")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ModelLoadError(
                f"{what}: tensor {key!r} has {bad} non-finite value(s) (NaN or inf); the file is corrupt"
            )


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
        sha256: :func:`cemaps.models.hashing.source_sha256` of ``spec.path`` (the same digest
            the study's model table records), or of the embedding tensor when given directly.
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

    def __init__(self, pipe: DiffusionPipeline, components: tuple[str, ...] | None = None) -> None:
        self.components: dict[str, dict[str, torch.Tensor]] = {}
        # default: what a DreamBooth model of the pipeline's family may replace (denoiser + text encoders)
        for component in components if components is not None else family_of(pipe).swappable_components:
            module = getattr(pipe, component, None)
            if module is None:
                continue
            refuse_adapters(pipe, f"snapshotting {component} weights")
            self.components[component] = {
                name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()
            }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All snapshotted tensors, keyed ``"<component>.<parameter name>"`` (CPU)."""
        return {
            f"{component}.{name}": tensor
            for component, state in self.components.items()
            for name, tensor in state.items()
        }

    def restore(self, pipe: DiffusionPipeline, components: tuple[str, ...] | None = None) -> None:
        """Copies the snapshot back into ``pipe``'s modules in place (bit-exact)."""
        for component in components if components is not None else tuple(self.components):
            copy_into(getattr(pipe, component), self.components[component])


def resolve_weight_file(spec: PersonalizedSpec, preferred_names: tuple[str, ...]) -> Path:
    """The weight file a spec points at: the path itself, or the best file inside a folder.

    Inside a folder, ``preferred_names`` come first, then any ``.safetensors`` file, then
    (pickle-based) ``.bin/.pt/.ckpt`` files, which ``load_weights`` refuses without opt-in.

    Raises:
        ModelLoadError: the path does not exist, or the folder holds no weight file.
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


def adapter_names(pipe: DiffusionPipeline) -> set[str]:
    """LoRA adapters loaded in any component (empty when peft never touched the pipeline)."""
    try:
        return {name for names in pipe.get_list_adapters().values() for name in names}
    except ValueError:  # diffusers raises when peft never touched the pipeline
        return set()


def refuse_adapters(pipe: DiffusionPipeline, doing: str) -> None:
    """Raises when a LoRA adapter is still loaded (weights would not be the base ones)."""
    present = adapter_names(pipe)
    if present:
        raise ModelLoadError(
            f"cannot do {doing}: the pipeline still has LoRA adapters {sorted(present)}; unload them first"
        )


def copy_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copies ``state`` into the module's own tensors (same storage, so no reallocation)."""
    targets = module.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            targets[name].copy_(tensor)
