"""Where personalization changed the weights: per-parameter norms, spectra and subspace overlap.

``weight_delta_table`` compares two state dicts (base and tuned, keys
``"<component>.<parameter>"`` as :meth:`cemaps.models.personalized.BaseWeights.state_dict`
makes them, or bare UNet names) and returns one row per parameter that differs:

- ``fro_norm`` = ||dW||_F and ``rel_norm`` = ||dW||_F / ||W||_F;
- ``singular_values``: the top-k singular values of dW (conv kernels reshaped to
  ``[out, in*kh*kw]``);
- ``effective_rank`` = exp(H(p)), p = s / sum(s) over all singular values of dW
  (Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007);
- ``subspace_overlap`` = ||U_W,k^T U_dW,k||_F^2 / k for the top-k left singular
  vectors of W and dW: 1 when the update writes into W's dominant output
  directions, about k/out for a random direction.

Vector parameters (biases, norms) get the norms only; their spectral columns are NaN.

Example:
    >>> import torch
    >>> base = {"unet.conv_in.weight": torch.eye(4).reshape(4, 4, 1, 1)}
    >>> tuned = {"unet.conv_in.weight": base["unet.conv_in.weight"] * 2}
    >>> row = weight_delta_table(base, tuned, "demo").iloc[0]
    >>> (row.module, row.kind, round(float(row.rel_norm), 3), round(float(row.effective_rank), 3))
    ('conv_in', 'conv', 1.0, 4.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import pandas as pd
import torch
from scipy.stats import percentileofscore

from cemaps.errors import ModelLoadError
from cemaps.models.families import families, family_of

# SD 1.x/2.x's components; the registry adds every family's (text_encoder_2, transformer, ...).
COMPONENTS: tuple[str, ...] = ("unet", "text_encoder")


def known_components() -> tuple[str, ...]:
    """Component names of every registered family (denoisers, text encoders), for splitting keys."""
    names = dict.fromkeys(COMPONENTS)
    for family in families():
        names.update(dict.fromkeys((*family.swappable_components, *family.lora_components())))
    return tuple(names)


COLUMNS: tuple[str, ...] = (
    "model_id", "component", "module", "param", "block", "block_index", "resolution_level", "kind",
    "shape", "numel", "fro_norm", "rel_norm", "singular_values", "effective_rank", "subspace_overlap",
)  # fmt: skip

_BLOCK = re.compile(r"^(down|up)_blocks\.(\d+)\.|^(mid)_block\.")
_ATTENTION = re.compile(r"\.(attn\d?)\.(to_q|to_k|to_v|to_out)(\.\d+)?$")
_CONV = re.compile(r"(^|\.)(conv\w*|downsamplers\.\d+\.conv|upsamplers\.\d+\.conv)$")


def split_component(key: str) -> tuple[str, str]:
    """``"unet.conv_in.weight"`` -> ``("unet", "conv_in.weight")``; unprefixed keys are UNet keys."""
    head, _, rest = key.partition(".")
    return (head, rest) if head in known_components() and rest else ("unet", key)


def parameter_kind(module: str) -> str:
    """Classifies a module path: attn1/attn2 projections, ff, conv, norm, proj, time_emb or other."""
    attention = _ATTENTION.search("." + module)
    if attention:
        return f"{attention.group(1)}.{attention.group(2)}"
    last = module.rsplit(".", 1)[-1]
    if ".ff." in f".{module}." or re.search(r"(^|\.)(mlp|fc\d)(\.|$)", module):
        return "ff"
    if "time_emb" in module or module.startswith("time_embedding"):
        return "time_emb"
    if "norm" in last:  # before conv: "conv_norm_out" is a GroupNorm
        return "norm"
    if _CONV.search(module):
        return "conv"
    if last.startswith("proj") or last in {"q_proj", "k_proj", "v_proj", "out_proj"}:
        return "proj"
    return "other"


def block_position(module: str, n_down_blocks: int, n_up_blocks: int) -> tuple[str, int | None, int | None]:
    """(block, block_index, resolution_level) of a UNet module path.

    The resolution level counts downsamplings from the input: ``down_blocks.i`` is at
    level i, ``mid_block`` at the deepest level, ``up_blocks.i`` at level
    ``n_up_blocks - 1 - i``. Both counts come from the state dict, not from SD v1.5.
    """
    match = _BLOCK.match(module)
    if match is None:
        return "other", None, None
    if match.group(3) == "mid":
        return "mid", 0, max(n_down_blocks - 1, 0)
    index = int(match.group(2))
    level = index if match.group(1) == "down" else n_up_blocks - 1 - index
    return match.group(1), index, level


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """[out, in, kh, kw] -> [out, in*kh*kw]; matrices stay. float32 for a stable SVD."""
    return tensor.reshape(tensor.shape[0], -1).float()


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalised singular values (Roy & Vetterli 2007)."""
    total = singular_values.sum()
    if total <= 0:
        return float("nan")
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def subspace_overlap(weight: torch.Tensor, delta: torch.Tensor, k: int) -> float:
    """||U_W,k^T U_dW,k||_F^2 / k for the top-k left singular vectors of two [out, in] matrices."""
    k = min(k, weight.shape[0], weight.shape[1], delta.shape[1])
    if k == 0:
        return float("nan")
    u_weight = torch.linalg.svd(weight, full_matrices=False).U[:, :k]
    u_delta = torch.linalg.svd(delta, full_matrices=False).U[:, :k]
    return float((u_weight.T @ u_delta).square().sum() / k)


def _parameter_row(base: torch.Tensor, tuned: torch.Tensor, top_k: int) -> dict[str, object]:
    delta = tuned.float() - base.float()
    fro = float(torch.linalg.vector_norm(delta))
    base_norm = float(torch.linalg.vector_norm(base.float()))
    row: dict[str, object] = {
        "shape": tuple(base.shape),
        "numel": base.numel(),
        "fro_norm": fro,
        "rel_norm": fro / base_norm if base_norm > 0 else math.inf,
        "singular_values": [fro],
        "effective_rank": math.nan,
        "subspace_overlap": math.nan,
    }
    if base.ndim >= 2:
        delta_matrix = _as_matrix(delta)
        singular_values = torch.linalg.svdvals(delta_matrix)
        row["singular_values"] = singular_values[:top_k].tolist()
        row["effective_rank"] = effective_rank(singular_values)
        row["subspace_overlap"] = subspace_overlap(_as_matrix(base), delta_matrix, top_k)
    return row


def weight_delta_table(
    base_state: Mapping[str, torch.Tensor],
    tuned_state: Mapping[str, torch.Tensor],
    model_id: str,
    top_k: int = 8,
) -> pd.DataFrame:
    """One row per parameter whose value differs between ``base_state`` and ``tuned_state``.

    Args:
        base_state: name -> tensor, keys ``"unet.<param>"``/``"text_encoder.<param>"`` or bare UNet names.
        tuned_state: the same names (a subset is fine: absent names count as unchanged).
        model_id: written into every row.
        top_k: how many singular values to keep, and the subspace size for the overlap.

    Returns:
        A DataFrame with columns ``COLUMNS``; ``singular_values`` holds lists (length <= top_k).

    Raises:
        ModelLoadError: a tuned name is absent from the base or has another shape.
    """
    if top_k < 1:
        raise ModelLoadError(f"top_k={top_k} for weight deltas of {model_id!r}; expected a positive integer")
    unet_modules = [split_component(k)[1] for k in base_state if split_component(k)[0] == "unet"]
    n_down = 1 + max((int(m.split(".")[1]) for m in unet_modules if m.startswith("down_blocks.")), default=-1)
    n_up = 1 + max((int(m.split(".")[1]) for m in unet_modules if m.startswith("up_blocks.")), default=-1)
    rows = []
    for name in sorted(tuned_state):
        if name not in base_state:
            raise ModelLoadError(f"weight delta for {model_id!r}: parameter {name!r} is not in the base state dict")
        base, tuned = base_state[name], tuned_state[name].to(base_state[name].device)
        if base.shape != tuned.shape:
            raise ModelLoadError(
                f"weight delta for {model_id!r}: {name!r} has shape {tuple(tuned.shape)}, the base {tuple(base.shape)}"
            )
        if torch.equal(base, tuned.to(base.dtype)):
            continue
        component, parameter = split_component(name)
        module, _, param = parameter.rpartition(".")
        block, block_index, level = (
            block_position(module, n_down, n_up) if component == "unet" else ("other", None, None)
        )
        rows.append(
            {
                "model_id": model_id,
                "component": component,
                "module": module,
                "param": param,
                "block": block,
                "block_index": block_index,
                "resolution_level": level,
                "kind": parameter_kind(module),
                **_parameter_row(base, tuned, top_k),
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"block_index": "Int64", "resolution_level": "Int64"})


def lora_delta_state(pipe, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The weight update of every LoRA-wrapped module, as peft computes it for merging.

    Args:
        pipe: a pipeline with a LoRA loaded (e.g. inside ``cemaps.models.applied``).
        adapter_name: which adapter; default the single active one.

    Returns:
        ``"<component>.<module path>.weight"`` -> delta tensor of the base weight's shape
        (peft's ``get_delta_weight``: B @ A * scaling, including the ``set_adapters`` scale;
        for DoRA the effective change, magnitude included: ``m / ||W + d||_row * (W + d) - W``
        with ``d`` that product, as peft merges a DoRA layer).
    """
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for component in family_of(pipe).lora_components():
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            adapters = [adapter_name] if adapter_name is not None else list(module.active_adapters)
            adapters = [a for a in adapters if a in module.lora_A]
            if len(adapters) > 1:
                raise ModelLoadError(
                    f"module {component}.{path} has several active LoRA adapters {adapters}; pass adapter_name"
                )
            if adapters:
                with torch.no_grad():
                    deltas[f"{component}.{path}.weight"] = _effective_delta(module, adapters[0])
    if not deltas:
        raise ModelLoadError(
            f"the pipeline has no LoRA-wrapped module{'' if adapter_name is None else f' for adapter {adapter_name!r}'}"
        )
    return deltas


def _effective_delta(module, adapter: str) -> torch.Tensor:
    """peft's ``get_delta_weight``, rescaled to the DoRA magnitude when the adapter is a DoRA one."""
    delta = module.get_delta_weight(adapter).detach()
    if not module.use_dora.get(adapter, False):
        return delta
    base = module.get_base_layer().weight.detach()
    adapted = base.float() + delta.float()
    norm = adapted.flatten(1).norm(dim=1).reshape(-1, *[1] * (adapted.ndim - 1))
    magnitude = module.lora_magnitude_vector[adapter].weight.detach().float().reshape(norm.shape)
    return (magnitude / norm * adapted - base.float()).to(delta.dtype)


def textual_inversion_stats(
    embedding: torch.Tensor,
    vocab_embeddings: torch.Tensor,
    tokenizer,
    k: int = 10,
) -> dict[str, list]:
    """How a learned token embedding sits in the text encoder's vocabulary.

    Args:
        embedding: one vector ``[dim]`` or several ``[n_vectors, dim]``.
        vocab_embeddings: the original token embedding table ``[vocab, dim]``.
        tokenizer: maps vocabulary ids to token strings.
        k: how many nearest vocabulary tokens to list.

    Returns:
        Lists with one entry per vector: ``norm``, ``norm_percentile`` (0-100, within the
        vocabulary's norms), ``nearest_tokens`` and ``nearest_cosine`` (top-k by cosine similarity).
    """
    vectors = embedding.detach().float().reshape(-1, embedding.shape[-1])
    vocab = vocab_embeddings.detach().float()
    if vocab.ndim != 2 or vocab.shape[1] != vectors.shape[1]:
        raise ModelLoadError(
            f"textual inversion embedding has width {vectors.shape[1]}; vocabulary table has shape {tuple(vocab.shape)}"
        )
    vocab_norms = torch.linalg.vector_norm(vocab, dim=1).numpy()
    cosine = torch.nn.functional.normalize(vectors, dim=1) @ torch.nn.functional.normalize(vocab, dim=1).T
    top = cosine.topk(min(k, vocab.shape[0]), dim=1)
    norms = torch.linalg.vector_norm(vectors, dim=1).tolist()
    return {
        "norm": norms,
        "norm_percentile": [float(percentileofscore(vocab_norms, n, kind="mean")) for n in norms],
        "nearest_tokens": [tokenizer.convert_ids_to_tokens(ids.tolist()) for ids in top.indices],
        "nearest_cosine": [values.tolist() for values in top.values],
    }


def weight_delta_for(pipe, spec, base_state: Mapping[str, torch.Tensor], top_k: int = 8) -> pd.DataFrame:
    """The weight-delta table of one personalized model against the base weights.

    LoRA and DreamBooth give :func:`weight_delta_table` rows (for LoRA, base + peft's delta
    per wrapped module), over the components of the pipeline's family (SDXL: ``unet``,
    ``text_encoder``, ``text_encoder_2``). Textual Inversion changes no weight but adds token
    vectors, so it gives one row per added token and text encoder (``component``) with the columns
    of :func:`textual_inversion_stats`.

    Args:
        pipe: the base pipeline (restored on return).
        spec: a :class:`cemaps.models.personalized.PersonalizedSpec`.
        base_state: the base weights, e.g. ``BaseWeights(pipe).state_dict()``.
        top_k: see :func:`weight_delta_table`.
    """
    from cemaps.models.personalized import applied

    family = family_of(pipe)
    if spec.method == "textual_inversion":
        # one block of rows per text encoder the embedding went into (SDXL: both), named in "component"
        streams = family.embedding_streams()
        vocabs = {s.encoder: getattr(pipe, s.encoder).get_input_embeddings().weight.detach().clone() for s in streams}
        vectors = {}
        with applied(pipe, spec) as model:
            for stream in streams:
                ids = getattr(pipe, stream.tokenizer).convert_tokens_to_ids(list(model.tokens))
                vectors[stream.encoder] = getattr(pipe, stream.encoder).get_input_embeddings().weight[ids].detach()
        tables = [
            pd.DataFrame(
                {
                    "model_id": spec.model_id,
                    "component": stream.encoder,
                    "token": list(model.tokens),
                    **textual_inversion_stats(
                        vectors[stream.encoder].clone(), vocabs[stream.encoder], getattr(pipe, stream.tokenizer)
                    ),
                }
            )
            for stream in streams
        ]
        return pd.concat(tables, ignore_index=True)
    with applied(pipe, spec):
        if spec.method == "lora":
            deltas = lora_delta_state(pipe, spec.model_id)
            tuned = {
                name: base_state[name] + delta.to(base_state[name].device, base_state[name].dtype)
                for name, delta in deltas.items()
            }
        else:
            tuned = {
                f"{c}.{n}": t.detach().to("cpu", copy=True)
                for c in family.swappable_components
                if getattr(pipe, c, None) is not None
                for n, t in getattr(pipe, c).state_dict().items()
            }
            tuned = {name: tensor for name, tensor in tuned.items() if name in base_state}
    return weight_delta_table(base_state, tuned, spec.model_id, top_k=top_k)


__all__ = [
    "COLUMNS",
    "block_position",
    "effective_rank",
    "lora_delta_state",
    "parameter_kind",
    "subspace_overlap",
    "textual_inversion_stats",
    "weight_delta_for",
    "weight_delta_table",
]
