"""kohya sd-scripts and LyCORIS LoCon files converted to peft keys with diffusers' own converters.

diffusers' ``load_lora_weights`` infers a file's layout from its keys, and for kohya text-encoder
keys that inference fails when only some projections are trained ("Could not automatically infer
state dict type": it looks for ``to_out_lora`` or ``lora_linear_layer`` keys, which a file training
only ``q_proj`` or ``k_proj`` lacks). cemaps therefore calls the converters itself, one kohya module
at a time, with the source type stated:

- :func:`diffusers.loaders.lora_conversion_utils._convert_non_diffusers_lora_to_diffusers`
  renames ``lora_unet_*``/``lora_te_*`` keys (and reads their ``.alpha`` tensors);
- :func:`diffusers.utils.state_dict_utils.convert_unet_state_dict_to_peft` and
  :func:`~diffusers.utils.state_dict_utils.convert_state_dict_to_peft` (``StateDictType.DIFFUSERS_OLD``)
  turn the result into peft's ``<module>.lora_A.weight``/``.lora_B.weight``.

Converting one module at a time gives the exact kohya-module -> installed-module map, which
also places DoRA magnitudes (LyCORIS ``dora_scale``, written ``[out, 1]`` by ``wd_on_out=True``;
peft's ``lora_magnitude_vector`` is ``[out]``) and the per-module alphas in a peft
``LoraConfig`` (``r``/``lora_alpha`` plus ``rank_pattern``/``alpha_pattern`` keyed ``^<path>``, as
diffusers' ``load_lora_adapter`` keys its own rank patterns).

LyCORIS LoCon with Tucker decomposition (``lora_mid`` ``[r, r, kh, kw]`` between
``lora_down`` ``[r, in, 1, 1]`` and ``lora_up`` ``[out, r, 1, 1]``; LyCORIS ``locon.py``
``rebuild_tucker``) is composed into an ordinary conv LoRA: since ``up`` is 1x1,
``delta = up . mid . down`` equals ``up @ A`` with ``A[i, c, k, l] = sum_j mid[i, j, k, l] down[j, c]``,
the same rank and the same update.
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Mapping

import torch

from cemaps.errors import ModelLoadError

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")  # te1/te2: SDXL's two encoders
DORA_SCALE = ".dora_scale"
TUCKER_MID = ".lora_mid.weight"
_TEXT_MODEL = "text_model."


def is_kohya(state: Mapping[str, object]) -> bool:
    """Whether every key is a kohya sd-scripts / LyCORIS one (``lora_unet_*``, ``lora_te_*``, ``lora_te1_*``, ``lora_te2_*``)."""
    return bool(state) and all(key.startswith(KOHYA_PREFIXES) for key in state)


def compose_tucker(down: torch.Tensor, mid: torch.Tensor, what: str, key: str) -> torch.Tensor:
    """The conv LoRA down matrix ``[r, in, kh, kw]`` equal to LyCORIS' Tucker ``mid`` after ``down``.

    Args:
        down: ``lora_down`` ``[r, in, 1, 1]``.
        mid: ``lora_mid`` ``[r, r, kh, kw]``.

    Raises:
        ModelLoadError: the shapes are not a Tucker LoCon's.
    """
    if down.ndim != 4 or down.shape[2:] != (1, 1) or mid.ndim != 4 or mid.shape[1] != down.shape[0]:
        raise ModelLoadError(
            f"{what}: {key!r} is a LyCORIS Tucker LoCon (lora_mid {tuple(mid.shape)}) whose lora_down has shape "
            f"{tuple(down.shape)}; expected lora_down [r, in, 1, 1] and lora_mid [r, r, kh, kw]"
        )
    composed = torch.einsum("ijkl,jc->ickl", mid.float(), down.float().flatten(1))
    return composed.to(down.dtype)


def compose_tucker_keys(state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``state`` with every ``lora_mid`` folded into its ``lora_down`` (see :func:`compose_tucker`)."""
    out = dict(state)
    for key in [k for k in state if k.endswith(TUCKER_MID)]:
        down_key = key.removesuffix(TUCKER_MID) + ".lora_down.weight"
        if down_key not in state:
            raise ModelLoadError(f"{what} has key {key!r} without its lora_down matrix")
        out[down_key] = compose_tucker(state[down_key], out.pop(key), what, key)
    return out


def _module_names(state: Mapping[str, object]) -> list[str]:
    return sorted({key.split(".", 1)[0] for key in state if key.endswith(".lora_down.weight")})


def kohya_to_peft(
    state: Mapping[str, torch.Tensor], installed: Mapping[str, Collection[str]], what: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, object]], dict[str, str]]:
    """A kohya/LyCORIS LoRA as peft keys and one ``LoraConfig`` per component, via diffusers' converters.

    Args:
        state: the file's tensors (``lora_mid`` already composed, every module with an ``.alpha``
            when the file's scaling is known; see :mod:`cemaps.models.personalized.lora_scaling`).
        installed: each component's module names (CLIP's ``text_model.`` prefix, which the
            converter writes and transformers 5 dropped, is removed where the installed model lacks it).
        what: how errors name the file.

    Returns:
        (``"<component>.<module path>.lora_A.weight"``-style state, ``{component: LoraConfig kwargs}``,
        ``{kohya module name: "<component>.<module path>"}``).

    Raises:
        ModelLoadError: a key diffusers' converter leaves unconverted, or a DoRA scale whose shape
            peft cannot hold (LyCORIS ``wd_on_out=False`` writes ``[1, in]``).
    """
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    peft_state: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    ranks: dict[str, dict[str, int]] = collections.defaultdict(dict)
    alphas: dict[str, dict[str, float]] = collections.defaultdict(dict)
    dora: set[str] = set()
    for module in _module_names(state):
        sub = {k: v for k, v in state.items() if k.split(".", 1)[0] == module and not k.endswith(DORA_SCALE)}
        try:
            converted, network_alphas = _convert_non_diffusers_lora_to_diffusers(dict(sub))
        except (ValueError, KeyError) as error:
            raise ModelLoadError(
                f"{what}: diffusers' kohya converter could not convert {module!r}: {str(error).strip().splitlines()[0]}"
            ) from error
        component = next(iter(converted)).split(".", 1)[0]
        inner = {k.removeprefix(component + "."): v for k, v in converted.items()}
        if component == "unet":
            inner = convert_unet_state_dict_to_peft(inner)
        else:
            inner = convert_state_dict_to_peft(inner, original_type=StateDictType.DIFFUSERS_OLD)
        inner = {k.replace(".processor.", "."): v for k, v in inner.items()}
        down_key = next((k for k in inner if k.endswith(".lora_A.weight")), None)
        if down_key is None or len(inner) != 2:
            raise ModelLoadError(f"{what}: diffusers' kohya converter made {sorted(inner)} of {module!r}")
        path = down_key.removesuffix(".lora_A.weight")
        if path not in installed.get(component, ()) and path.removeprefix(_TEXT_MODEL) in installed.get(component, ()):
            inner = {k.removeprefix(_TEXT_MODEL): v for k, v in inner.items()}
            path, down_key = path.removeprefix(_TEXT_MODEL), down_key.removeprefix(_TEXT_MODEL)
        names[module] = f"{component}.{path}"
        peft_state |= {f"{component}.{k}": v for k, v in inner.items()}
        ranks[component][path] = int(inner[down_key].shape[0])
        if network_alphas:
            alphas[component][path] = float(next(iter(network_alphas.values())))
        if module + DORA_SCALE in state:
            peft_state[f"{component}.{path}.lora_magnitude_vector"] = dora_magnitude(
                state[module + DORA_SCALE], inner[f"{path}.lora_B.weight"].shape[0], what, module + DORA_SCALE
            )
            dora.add(component)
    configs = {
        component: lora_config_kwargs(ranks[component], alphas.get(component, {}), component in dora)
        for component in ranks
    }
    return peft_state, configs, names


def dora_magnitude(scale: torch.Tensor, out_features: int, what: str, key: str) -> torch.Tensor:
    """LyCORIS ``dora_scale`` (``[out, 1]`` or ``[out, 1, 1, 1]``) as peft's ``lora_magnitude_vector`` ``[out]``.

    Raises:
        ModelLoadError: any other shape, e.g. LyCORIS ``wd_on_out=False``'s ``[1, in]`` (a norm
            over input columns, which peft's DoRA does not compute).
    """
    if scale.numel() != out_features or scale.shape[0] != out_features:
        raise ModelLoadError(
            f"{what}: {key!r} has shape {tuple(scale.shape)}; expected [{out_features}, 1] (DoRA with its norm over "
            "each output row, LyCORIS wd_on_out=True, as peft computes it)"
        )
    return scale.reshape(out_features)


def lora_config_kwargs(ranks: Mapping[str, int], alphas: Mapping[str, float], use_dora: bool) -> dict[str, object]:
    """peft ``LoraConfig`` arguments that give each module its own rank and alpha.

    A module without an alpha gets alpha = rank (scaling 1), kohya's ``LoRAModule`` default.
    ``r``/``lora_alpha`` are the most common values; the others go into ``rank_pattern`` /
    ``alpha_pattern`` keyed ``^<path>`` (anchored, as diffusers' ``load_lora_adapter`` does).
    """
    full_alphas = {path: alphas.get(path, float(rank)) for path, rank in ranks.items()}
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(full_alphas.values()).most_common(1)[0][0]
    return {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(ranks),
        "rank_pattern": {f"^{p}": r for p, r in ranks.items() if r != rank},
        "alpha_pattern": {f"^{p}": a for p, a in full_alphas.items() if a != alpha},
        "use_dora": use_dora,
    }
