"""LoRA files read into :class:`LoraMatrices`: each key layout resolved to a module of the installed pipeline.

Key layouts read (each a row of the "Input forms" table of docs/conformance.md):

- diffusers/peft: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` and
  ``text_encoder.<module>.lora_A.weight``, with or without the ``text_model.`` prefix that
  transformers 4 put in CLIP module names (transformers 5 dropped it); DoRA magnitudes
  ``<module>.lora_magnitude_vector``;
- legacy attention processors (diffusers < 0.21): ``unet.<block>.attn1.processor.to_q_lora.down.weight``,
  ``text_encoder.<layer>.self_attn.to_q_lora.down.weight``;
- kohya sd-scripts (``networks/lora.py``) and LyCORIS: ``lora_unet_<module_path_with_underscores>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``, ``.dora_scale`` and ``lora_te_text_model_encoder_layers_<i>_self_attn_q_proj.*``;
  LoCon convolutions (``lora_down`` ``[r, in, kh, kw]``, ``lora_up`` ``[out, r, 1, 1]``); for SDXL
  ``lora_te1_`` / ``lora_te2_`` (the two text encoders); SGM block names and Tucker ``lora_mid``
  factors are rewritten before parsing (:mod:`cemaps.models.personalized.lora_sgm`,
  :mod:`cemaps.models.personalized.lora_kohya`).

Which components a file may touch is the base's family's (diffusers' ``_lora_loadable_modules``:
``unet``, ``text_encoder`` and, for SDXL, ``text_encoder_2``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from cemaps.errors import ModelLoadError
from cemaps.models.families import family_of
from cemaps.models.personalized.lora_kohya import DORA_SCALE, TUCKER_MID, dora_magnitude
from cemaps.models.personalized.lora_scaling import scaling
from cemaps.models.personalized.spec import context_width_hint, refuse_other_kind

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


def lora_components(pipe: StableDiffusionPipeline) -> tuple[str, ...]:
    """The pipeline attributes a LoRA may touch (its family's diffusers ``_lora_loadable_modules``)."""
    return family_of(pipe).lora_components()


def module_names(pipe: StableDiffusionPipeline) -> dict[str, dict[str, torch.nn.Module]]:
    """component -> ``named_modules()`` of each LoRA component the pipeline has."""
    return {
        c: dict(getattr(pipe, c).named_modules()) for c in lora_components(pipe) if getattr(pipe, c, None) is not None
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
    modules = module_names(pipe)
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
