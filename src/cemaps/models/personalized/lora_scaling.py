"""A LoRA file's scaling (alpha, rank, rsLoRA) and DoRA magnitudes, read from its tensors and its header.

peft applies ``delta W = scale * lora_alpha / r * B @ A`` (``lora_alpha / sqrt(r)`` with rsLoRA).
Where the alpha lives depends on the tool that wrote the file:

- ``.alpha`` tensors (kohya sd-scripts ``networks/lora.py``, LyCORIS): one per module;
- diffusers' safetensors header entry ``lora_adapter_metadata`` (``LORA_ADAPTER_METADATA_KEY`` in
  ``diffusers/loaders/lora_base.py``): JSON of each component's peft ``LoraConfig``, keys prefixed
  ``"unet."``/``"text_encoder."``, written by ``save_lora_weights(..., unet_lora_adapter_metadata=...)``
  as diffusers' training scripts do since PR #11324 (issue #6087); ``load_lora_weights(path)`` builds
  the ``LoraConfig`` from it (``_create_lora_config``), so ``r``, ``lora_alpha``, ``rank_pattern``,
  ``alpha_pattern``, ``use_rslora`` and ``use_dora`` decide the update;
- kohya's header entries ``ss_network_alpha``/``ss_network_dim`` (and ``conv_alpha``/``conv_dim``
  in ``ss_network_args`` for 3x3 LoCon layers), which cemaps uses only where no ``.alpha`` tensor
  exists (kohya writes both; other tools keep only the header);
- none of these: alpha = r (scaling 1), the diffusers/peft and kohya convention.

cemaps reads the header itself (``safetensors.safe_open(...).metadata()``, its own JSON parse and
pattern matching), so its expected scaling does not come from the code that loads the file; a
header that cannot fix the scaling (malformed JSON, a component without its config, a rank that
contradicts the file's matrices, ``"Dynamic"`` alphas without tensors, a peft option that changes
the update in a way cemaps does not verify) is refused instead of measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from cemaps.errors import ModelLoadError

# diffusers' LORA_ADAPTER_METADATA_KEY (diffusers/loaders/lora_base.py); imported there at load time
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# LoraConfig fields that do not change a loaded adapter's update (naming, training, initialisation).
_INERT_FIELDS = {
    "alpha_pattern", "rank_pattern", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules",
    "exclude_modules", "auto_mapping", "base_model_name_or_path", "revision", "task_type", "inference_mode",
    "init_lora_weights", "lora_dropout", "megatron_config", "megatron_core", "peft_type", "peft_version",
    "layers_pattern", "layers_to_transform", "qalora_group_size", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "ensure_weight_tying", "bias",
}  # fmt: skip


def file_header(path: Path) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (empty for other files and for files without one)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})


def _pattern_value(patterns: Mapping[str, object], path: str) -> object | None:
    """peft's rank/alpha pattern lookup: a key matches a module whose name is it or ends with ``.<key>``."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", path):
            return value
    return None


def _adapter_configs(header: Mapping[str, str], what: str) -> dict[str, dict[str, object]] | None:
    raw = header.get(ADAPTER_METADATA_KEY)
    if raw is None:
        return None
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ModelLoadError(
            f"{what}: header entry {ADAPTER_METADATA_KEY!r} is not valid JSON ({error.msg}); its scaling cannot be read"
        ) from error
    if not isinstance(flat, dict):
        raise ModelLoadError(f"{what}: header entry {ADAPTER_METADATA_KEY!r} is not a JSON object")
    configs: dict[str, dict[str, object]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def _metadata_scaling(entry, config: Mapping[str, object], what: str):
    """``entry`` with the alpha, rank and rsLoRA of its component's ``LoraConfig`` (diffusers metadata)."""
    for field, value in config.items():
        if field not in _INERT_FIELDS and value not in (None, False, {}, [], "none", "LORA"):
            raise ModelLoadError(
                f"{what}: its {entry.component} LoraConfig sets {field}={value!r}, an option whose effect cemaps does "
                "not verify; refusing to measure it"
            )
    if config.get("peft_type", "LORA") != "LORA" or config.get("bias", "none") != "none":
        raise ModelLoadError(
            f"{what}: its {entry.component} config has peft_type={config.get('peft_type')!r}, "
            f"bias={config.get('bias')!r}; expected a LoRA without bias"
        )
    rank = _pattern_value(config.get("rank_pattern") or {}, entry.module)
    alpha = _pattern_value(config.get("alpha_pattern") or {}, entry.module)
    rank = config.get("r") if rank is None else rank
    alpha = config.get("lora_alpha") if alpha is None else alpha
    if not isinstance(rank, (int, float)) or not isinstance(alpha, (int, float)):
        raise ModelLoadError(
            f"{what}: its {entry.component} config lacks a numeric r/lora_alpha (r={rank!r}, lora_alpha={alpha!r}); "
            "its scaling cannot be determined"
        )
    if int(rank) != entry.down.shape[0]:
        raise ModelLoadError(
            f"{what}: its {entry.component} config gives {entry.component}.{entry.module} rank {rank}, but "
            f"{entry.down_key!r} has rank {entry.down.shape[0]}; its scaling cannot be determined"
        )
    if bool(config.get("use_dora", False)) != (entry.magnitude is not None):
        raise ModelLoadError(
            f"{what}: its {entry.component} config says use_dora={config.get('use_dora')!r}, but "
            f"{entry.component}.{entry.module} {'has' if entry.magnitude is not None else 'has no'} magnitude vector"
        )
    return dataclasses.replace(entry, alpha=float(alpha), rslora=bool(config.get("use_rslora", False)))


def _kohya_header_alpha(down: torch.Tensor, down_key: str, header: Mapping[str, str], what: str) -> float | None:
    """kohya's header alpha for a module without an ``.alpha`` tensor (None: no header alpha)."""
    alpha_text, dim_text = header.get("ss_network_alpha"), header.get("ss_network_dim")
    if down.ndim == 4 and down.shape[2:] != (1, 1):  # kohya's conv2d_3x3 modules use conv_dim/conv_alpha
        try:
            args = json.loads(header.get("ss_network_args", "{}"))
        except json.JSONDecodeError:
            args = {}
        if isinstance(args, dict) and "conv_alpha" in args:
            alpha_text, dim_text = str(args["conv_alpha"]), str(args.get("conv_dim", dim_text))
    if alpha_text is None:
        return None
    try:
        alpha = float(alpha_text)
    except ValueError:
        raise ModelLoadError(
            f"{what}: {down_key!r} has no .alpha tensor and the header's network alpha is {alpha_text!r}, not a "
            "number; its scaling cannot be determined"
        ) from None
    if dim_text is not None and dim_text.strip().isdigit() and int(dim_text) != down.shape[0]:
        raise ModelLoadError(
            f"{what}: {down_key!r} has rank {down.shape[0]} but the header's network dim is {dim_text} "
            f"(alpha {alpha_text}); its scaling cannot be determined"
        )
    return alpha


def apply_file_scaling(entries: list, layout: str, header: Mapping[str, str], what: str) -> list:
    """Each :class:`~cemaps.models.personalized.lora_parse.LoraMatrices` with the scaling its file records.

    Args:
        entries: parsed matrices (``alpha`` from ``.alpha`` tensors where the file has them).
        layout: ``"kohya"``, ``"diffusers"`` or ``"legacy"``.
        header: the file's safetensors ``__metadata__`` (:func:`file_header`).
        what: how errors name the file.

    Raises:
        ModelLoadError: the header cannot fix the scaling (see the module docstring).
    """
    configs = _adapter_configs(header, what)
    out = []
    for entry in entries:
        if configs is not None:
            if entry.component not in configs:
                raise ModelLoadError(
                    f"{what}: its {ADAPTER_METADATA_KEY!r} header has configs for {sorted(configs)} but not for "
                    f"{entry.component!r}, whose weights it holds; the scaling of {entry.down_key!r} cannot be determined"
                )
            entry = _metadata_scaling(entry, configs[entry.component], what)
        elif layout == "kohya" and entry.alpha is None:
            alpha = _kohya_header_alpha(entry.down, entry.down_key, header, what)
            entry = dataclasses.replace(entry, alpha=alpha) if alpha is not None else entry
        out.append(entry)
    return out


def kohya_header_alphas(
    state: Mapping[str, torch.Tensor], header: Mapping[str, str], what: str
) -> dict[str, torch.Tensor]:
    """``state`` (a kohya file) with an ``.alpha`` tensor from the header for each module that has none.

    For loaders that read only ``.alpha`` tensors (diffusers' kohya converters, e.g. Flux's, take
    alpha = r without one).

    Raises:
        ModelLoadError: the header's alpha is not a number, or its network dim contradicts a module's rank.
    """
    out = dict(state)
    for key, down in state.items():
        alpha_key = key.removesuffix(".lora_down.weight") + ".alpha"
        if key.endswith(".lora_down.weight") and alpha_key not in state:
            alpha = _kohya_header_alpha(down, key, header, what)
            if alpha is not None:
                out[alpha_key] = torch.tensor(alpha)
    return out


def kohya_alpha_tensors(entries: list, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with an ``.alpha`` tensor for each kohya module whose alpha came from the header."""
    out = dict(state)
    for entry in entries:
        alpha_key = entry.down_key.rsplit(".", 2)[0] + ".alpha"
        if entry.alpha is not None and alpha_key not in out:
            out[alpha_key] = torch.tensor(entry.alpha)
    return out


def scaling(alpha: float | None, rank: int, rslora: bool = False) -> float:
    """peft's ``scaling``: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA, Kalajdzievski 2023); 1 without an alpha."""
    if alpha is None:
        return 1.0
    return alpha / math.sqrt(rank) if rslora else alpha / rank
