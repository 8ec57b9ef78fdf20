"""LoRA: read the file's low-rank matrices, check them against the pipeline, load them with diffusers, verify.

Key layouts read (each a row of the "Input forms" table of docs/conformance.md):

- diffusers/peft: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` and
  ``text_encoder.<module>.lora_A.weight``, with or without the ``text_model.`` prefix that
  transformers 4 put in CLIP module names (transformers 5 dropped it);
- legacy attention processors (diffusers < 0.21): ``unet.<block>.attn1.processor.to_q_lora.down.weight``,
  ``text_encoder.<layer>.self_attn.to_q_lora.down.weight``;
- kohya sd-scripts (``networks/lora.py``): ``lora_unet_<module_path_with_underscores>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha`` and ``lora_te_text_model_encoder_layers_<i>_self_attn_q_proj.*``;
  LoCon convolutions (``lora_down`` ``[r, in, kh, kw]``, ``lora_up`` ``[out, r, 1, 1]``); for SDXL
  ``lora_te1_`` / ``lora_te2_`` (the two text encoders) and the SGM UNet block names
  (``input_blocks``/``middle_block``/``output_blocks``, renamed with diffusers' own converter, see
  :mod:`cemaps.models.personalized.lora_sgm`).

Which components a file may touch is the base's family's (diffusers' ``_lora_loadable_modules``:
``unet``, ``text_encoder`` and, for SDXL, ``text_encoder_2``).

cemaps parses every layout into :class:`LoraMatrices` (component, module path in the
installed model, down ``A``, up ``B``, alpha), checks each against the module it targets
(exists, widths, rank, finite), hands the file to diffusers' ``load_lora_weights`` (which
reads all these layouts), and then checks that every module it names was wrapped with
exactly the file's ``A``, ``B`` and ``scaling = scale * alpha / r`` (so peft adds
``delta W = scale * alpha / r * B @ A``) — so a diffusers/peft/transformers version
that maps keys differently fails loudly instead of silently changing other weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.families import family_of
from cemaps.models.hashing import source_sha256
from cemaps.models.personalized.lora_kohya import DORA_SCALE, TUCKER_MID, compose_tucker_keys, dora_magnitude, is_kohya
from cemaps.models.personalized.lora_load import load_adapter
from cemaps.models.personalized.lora_load import verify_loaded as _verify_loaded
from cemaps.models.personalized.lora_scaling import apply_file_scaling, file_header, scaling
from cemaps.models.personalized.lora_sgm import sgm_block_names
from cemaps.models.personalized.spec import (
    AppliedModel,
    PersonalizedSpec,
    adapter_names,
    check_finite,
    context_width_hint,
    family_hint,
    refuse_other_kind,
    resolve_weight_file,
)
from cemaps.models.safety import load_weights

PREFERRED_FILES = ("pytorch_lora_weights.safetensors",)
_TEXT_MODEL = "text_model."
# kohya sd-scripts: lora_te_ (one text encoder), lora_te1_/lora_te2_ (SDXL's two)
_KOHYA_COMPONENT = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
_KOHYA = re.compile(r"^lora_(unet|te|te1|te2)_(?P<flat>.+)\.(?P<role>lora_down|lora_up)\.weight$")
_COMPONENT = r"(?:(?P<component>unet|transformer|text_encoder(?:_\d)?)\.)?"
_PEFT = re.compile(rf"^{_COMPONENT}(?P<path>.+)\.lora_(?P<role>A|B)\.weight$")
_LEGACY = re.compile(
    rf"^{_COMPONENT}(?P<path>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$"
)
_OLD_DIFFUSERS = re.compile(rf"^{_COMPONENT}(?P<path>.+)\.lora\.(?P<role>down|up)\.weight$")
_LEGACY_PROJ = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
_DOWN_ROLES = {"lora_down", "A", "down"}
_PEFT_MAGNITUDE = ".lora_magnitude_vector"
_MAGNITUDE_SUFFIXES = (DORA_SCALE, _PEFT_MAGNITUDE)


@dataclass(frozen=True)
class LoraMatrices:
    """One module's LoRA update as read from a file.

    Attributes:
        component: ``"unet"`` or ``"text_encoder"``.
        module: the module path in the installed component (``named_modules()`` name).
        down: ``A``, ``[r, in]`` or ``[r, in, kh, kw]`` (LoCon convolutions; a Tucker LoCon's
            ``lora_mid`` already composed in, see :mod:`cemaps.models.personalized.lora_kohya`).
        up: ``B``, ``[out, r]`` or ``[out, r, 1, 1]``.
        alpha: the file's alpha (tensor or header, see :mod:`cemaps.models.personalized.lora_scaling`);
            None means alpha = r (scaling 1), as in kohya and peft files without one.
        down_key: the file's key of ``down`` (named in errors).
        rslora: scaling ``alpha / sqrt(r)`` (peft ``use_rslora``) instead of ``alpha / r``.
        magnitude: DoRA's magnitude ``m`` ``[out]`` (peft ``lora_magnitude_vector``, kohya/LyCORIS
            ``dora_scale``), or None for a plain LoRA.
    """

    component: str
    module: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None
    down_key: str
    rslora: bool = False
    magnitude: torch.Tensor | None = None

    def scaling(self, scale: float = 1.0) -> float:
        """``scale * alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), the factor peft puts on ``B @ A``."""
        return scale * scaling(self.alpha, self.down.shape[0], self.rslora)

    def delta(self, scale: float = 1.0, base: torch.Tensor | None = None) -> torch.Tensor:
        """The weight update in the base weight's shape (convolutions: ``[out, in, kh, kw]``), float32.

        A plain LoRA: ``scaling * B @ A``. DoRA (Liu et al. 2024, as peft's ``DoraLinearLayer``
        computes it): ``m / ||W + scaling B A||_row * (W + scaling B A) - W``, norms over each
        output row, so ``base`` (``W``) is needed.

        Raises:
            ValueError: a DoRA update without ``base``.
        """
        product = self.up.float().flatten(1) @ self.down.float().flatten(1)
        shape = (self.up.shape[0], *self.down.shape[1:])
        update = (product * self.scaling(scale)).reshape(shape)
        if self.magnitude is None:
            return update
        if base is None:
            raise ValueError(f"{self.down_key}: a DoRA update depends on the base weight; pass base=")
        adapted = base.float() + update
        norm = adapted.flatten(1).norm(dim=1).reshape(-1, *[1] * (adapted.ndim - 1))
        return self.magnitude.float().reshape(norm.shape) / norm * adapted - base.float()


def _lora_components(pipe: StableDiffusionPipeline) -> tuple[str, ...]:
    return family_of(pipe).lora_components()


def _module_names(pipe: StableDiffusionPipeline) -> dict[str, dict[str, torch.nn.Module]]:
    return {
        c: dict(getattr(pipe, c).named_modules()) for c in _lora_components(pipe) if getattr(pipe, c, None) is not None
    }


def _resolve_dotted(path: str, names: Mapping[str, object]) -> str | None:
    """The installed module path for ``path``, bridging CLIP's ``text_model.`` prefix both ways."""
    for candidate in (path, path.removeprefix(_TEXT_MODEL), _TEXT_MODEL + path):
        if candidate in names:
            return candidate
    return None


def _flat_index(names: Mapping[str, object]) -> dict[str, str]:
    """kohya's flattened names (dots -> underscores) of every module, with and without ``text_model_``."""
    index: dict[str, str] = {}
    for name in names:
        if name:
            flat = name.replace(".", "_")
            index[flat] = name
            index.setdefault(_TEXT_MODEL.replace(".", "_") + flat, name)
            index.setdefault(flat.removeprefix(_TEXT_MODEL.replace(".", "_")), name)
    return index


def parse_lora(
    state: Mapping[str, torch.Tensor], pipe: StableDiffusionPipeline, what: str
) -> tuple[list[LoraMatrices], str]:
    """Reads every LoRA matrix pair of a state dict and resolves it to an installed module.

    Args:
        state: the file's tensors.
        pipe: the base pipeline (its module names; nothing is changed).
        what: how errors name the file.

    Returns:
        (one :class:`LoraMatrices` per targeted module, layout name ``"diffusers"``, ``"kohya"`` or ``"legacy"``).

    Raises:
        ModelLoadError: the file is another kind of model, for another architecture, or a key
            is neither a LoRA matrix nor an alpha.
    """
    refuse_other_kind(state, ("a LoRA",), what, pipe)
    modules = _module_names(pipe)
    flat = {c: _flat_index(names) for c, names in modules.items()}
    pairs: dict[tuple[str, str], dict[str, object]] = {}
    alphas: dict[tuple[str, str], float] = {}
    layouts: set[str] = set()
    unresolved: list[tuple[str, str, str]] = []
    magnitudes = {key: tensor for key, tensor in state.items() if key.endswith(_MAGNITUDE_SUFFIXES)}
    for key, tensor in state.items():
        if key.endswith(".alpha") or key in magnitudes:
            continue
        if key.endswith(TUCKER_MID):
            raise ModelLoadError(f"{what} has key {key!r}, a LyCORIS Tucker LoCon factor outside a kohya-layout file")
        found = _parse_key(key)
        if found is None:
            raise ModelLoadError(
                f"{what} has key {key!r}, which is neither a LoRA matrix (lora_A/lora_B, lora_down/lora_up) nor an alpha"
            )
        component, raw_path, role, layout = found
        layouts.add(layout)
        if component not in modules:
            raise ModelLoadError(f"{what} has key {key!r} for component {component!r}, which the pipeline lacks")
        path = flat[component].get(raw_path) if layout == "kohya" else _resolve_dotted(raw_path, modules[component])
        if path is None:
            unresolved.append((key, component, raw_path))
            continue
        entry = pairs.setdefault((component, path), {})
        entry["down" if role in _DOWN_ROLES else "up"] = tensor
        entry["down_key" if role in _DOWN_ROLES else "up_key"] = key
        alpha_key = _alpha_key(key, layout)
        if alpha_key is not None and alpha_key in state:
            alphas[(component, path)] = float(state[alpha_key])
    if unresolved:
        key, component, raw_path = unresolved[0]
        raise ModelLoadError(
            f"{what} has key {key!r}: {component} has no module {raw_path!r} (another architecture?)"
            f"{context_width_hint(state, pipe)}"
        )
    entries = []
    for (component, path), entry in sorted(pairs.items()):
        if "down" not in entry or "up" not in entry:
            present = entry.get("down_key") or entry.get("up_key")
            raise ModelLoadError(f"{what} has key {present!r} without its {'up' if 'down' in entry else 'down'} matrix")
        down_key = str(entry["down_key"])
        magnitude = magnitudes.pop(_magnitude_key(down_key), None)
        if magnitude is not None:
            magnitude = dora_magnitude(magnitude, entry["up"].shape[0], what, _magnitude_key(down_key))  # type: ignore[union-attr]
        entries.append(
            LoraMatrices(
                component, path, entry["down"], entry["up"], alphas.get((component, path)), down_key, False, magnitude
            )
        )  # type: ignore[arg-type]
    if magnitudes:
        raise ModelLoadError(f"{what} has DoRA magnitude {next(iter(magnitudes))!r} without its LoRA matrices")
    if not entries:
        raise ModelLoadError(
            f"{what} has no LoRA weights (keys like '*.lora_A.weight' or 'lora_unet_*.lora_down.weight')"
        )
    return entries, "kohya" if "kohya" in layouts else ("legacy" if "legacy" in layouts else "diffusers")


def _magnitude_key(down_key: str) -> str:
    """The DoRA magnitude key beside a down matrix: kohya/LyCORIS ``.dora_scale``, peft ``.lora_magnitude_vector``."""
    if down_key.endswith(".lora_down.weight"):
        return down_key.removesuffix(".lora_down.weight") + DORA_SCALE
    return down_key.removesuffix(".lora_A.weight") + _PEFT_MAGNITUDE


def _parse_key(key: str) -> tuple[str, str, str, str] | None:
    """(component, module path as written, role, layout) of one LoRA matrix key, or None."""
    if match := _KOHYA.match(key):
        return _KOHYA_COMPONENT[match.group(1)], match["flat"], match["role"], "kohya"
    if match := _LEGACY.match(key):
        component = match["component"] or "unet"
        names = _LEGACY_PROJ["text_encoder" if component.startswith("text_encoder") else "unet"]
        return component, f"{match['path']}.{names[match['proj']]}", match["role"], "legacy"
    for pattern in (_PEFT, _OLD_DIFFUSERS):
        if match := pattern.match(key):
            return match["component"] or "unet", match["path"], match["role"], "diffusers"
    return None


def _alpha_key(key: str, layout: str) -> str | None:
    """The key of a matrix's alpha: ``lora_unet_x.alpha`` (kohya), ``unet.x.alpha`` (diffusers/peft)."""
    if layout == "kohya":
        return key.rsplit(".", 2)[0] + ".alpha"
    alpha, replaced = re.subn(r"\.(lora_[AB]|lora\.(down|up))\.weight$", ".alpha", key)
    return alpha if replaced else None


def check_matrices(entries: list[LoraMatrices], pipe: StableDiffusionPipeline, what: str) -> None:
    """Widths, rank, kernel and finiteness of every matrix against the module it targets.

    Raises:
        ModelLoadError: naming the key, its shape and the module's width (with the model family
            a width belongs to, e.g. 1024 for SD 2.x).
    """
    modules = _module_names(pipe)
    for entry in entries:
        layer = modules[entry.component][entry.module]
        layer = getattr(layer, "base_layer", layer)
        conv = isinstance(layer, torch.nn.Conv2d)
        in_dim = layer.in_channels if conv else getattr(layer, "in_features", None)
        out_dim = layer.out_channels if conv else getattr(layer, "out_features", None)
        if in_dim is None:
            raise ModelLoadError(
                f"{what} has key {entry.down_key!r} for {entry.component}.{entry.module}, a {type(layer).__name__}; LoRA targets Linear and Conv2d layers"
            )
        target = f"{entry.component}.{entry.module}"
        if entry.down.ndim != (4 if conv else 2) or entry.up.ndim != entry.down.ndim:
            raise ModelLoadError(
                f"{what} has key {entry.down_key!r} of shape {tuple(entry.down.shape)} with up {tuple(entry.up.shape)}; "
                f"{target} is a {'Conv2d' if conv else 'Linear'} layer"
            )
        if entry.down.shape[1] != in_dim:
            raise ModelLoadError(
                f"{what} has key {entry.down_key!r} of shape {tuple(entry.down.shape)}, but {target} has input width "
                f"{in_dim}, not {entry.down.shape[1]}{family_hint(entry.down.shape[1], in_dim)} (another architecture?)"
            )
        if entry.up.shape[0] != out_dim:
            raise ModelLoadError(
                f"{what}: the up matrix of {entry.down_key!r} has shape {tuple(entry.up.shape)}, but {target} has output width "
                f"{out_dim}, not {entry.up.shape[0]}{family_hint(entry.up.shape[0], out_dim)} (another architecture?)"
            )
        if entry.up.shape[1] != entry.down.shape[0]:
            raise ModelLoadError(
                f"{what}: {entry.down_key!r} has rank {entry.down.shape[0]} but its up matrix rank {entry.up.shape[1]}"
            )
        if conv and (tuple(entry.down.shape[2:]) != tuple(layer.kernel_size) or tuple(entry.up.shape[2:]) != (1, 1)):
            raise ModelLoadError(
                f"{what}: {entry.down_key!r} has kernel {tuple(entry.down.shape[2:])} (up {tuple(entry.up.shape[2:])}); "
                f"{target} has kernel {tuple(layer.kernel_size)} (expected up kernel (1, 1))"
            )


def read_lora(
    pipe: StableDiffusionPipeline, spec: PersonalizedSpec
) -> tuple[Path, dict[str, torch.Tensor], list[LoraMatrices], str]:
    """(file, tensors to load, parsed and checked matrices, layout) of a LoRA spec; the pipeline is not changed.

    The tensors are the file's, with a kohya Tucker LoCon's ``lora_mid`` composed into its
    ``lora_down``; each matrix carries the scaling the file records, in tensors or in its header
    (:func:`~cemaps.models.personalized.lora_scaling.apply_file_scaling`).
    """
    source = resolve_weight_file(spec, PREFERRED_FILES)
    raw = load_weights(source, allow_pickle=spec.allow_pickle)
    what = f"LoRA file {str(source)!r}"
    check_finite(raw, what)
    state = sgm_block_names(raw, pipe, what)
    state = compose_tucker_keys(state, what) if is_kohya(state) else state
    entries, layout = parse_lora(state, pipe, what)
    entries = apply_file_scaling(entries, layout, file_header(source), what)
    check_matrices(entries, pipe, what)
    return source, state, entries, layout


def check_lora(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> str:
    """Everything :func:`applied_lora` checks before loading, without changing ``pipe``; returns the layout."""
    if spec.model_id in adapter_names(pipe):
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    return read_lora(pipe, spec)[3]


@contextmanager
def applied_lora(pipe: StableDiffusionPipeline, spec: PersonalizedSpec) -> Iterator[AppliedModel]:
    """Loads a LoRA as adapter ``spec.model_id`` at ``spec.scale``; deletes it (and unloads peft) on exit."""
    if spec.model_id in adapter_names(pipe):
        raise ModelLoadError(f"model {spec.model_id!r}: a LoRA adapter of that name is already loaded")
    source, state, entries, layout = read_lora(pipe, spec)
    what = f"LoRA file {str(source)!r}"
    try:
        try:
            installed = {c: set(names) for c, names in _module_names(pipe).items()}
            load_adapter(pipe, source, state, entries, layout, installed, spec.model_id, what)
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise ModelLoadError(
                f"{what}: diffusers could not load it: {str(error).strip().splitlines()[0]}"
            ) from error
        pipe.set_adapters([spec.model_id], adapter_weights=[spec.scale])
        wrapped = _verify_loaded(pipe, entries, spec, what)
        yield AppliedModel(
            spec=spec,
            sha256=source_sha256(spec.path),  # type: ignore[arg-type]
            source=str(source),
            format=layout,
            n_tensors_changed=len(wrapped),
            n_params_changed=sum(m.base_layer.weight.numel() for m in wrapped.values()),
        )
    finally:
        remove_lora(pipe, spec.model_id)


def remove_lora(pipe: StableDiffusionPipeline, adapter: str) -> None:
    """Deletes ``adapter``; when it was the last one, makes the modules plain ``nn.Linear``/``nn.Conv2d`` again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    present = adapter_names(pipe)
    if adapter in present:
        pipe.delete_adapters(adapter)
    wrappers = any(
        isinstance(m, BaseTunerLayer)
        for c in _lora_components(pipe)
        if getattr(pipe, c, None) is not None
        for m in getattr(pipe, c).modules()
    )
    if wrappers and not present - {adapter}:
        # delete_adapters leaves empty peft wrappers; unloading makes the modules plain again
        pipe.unload_lora_weights()
