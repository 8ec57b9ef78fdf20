"""kohya LoRA files of an SGM-named UNet (SDXL): block names renamed with diffusers' own converter.

kohya sd-scripts trains SDXL on Stability's SGM UNet, so its files name UNet modules by the
original blocks (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``); diffusers'
``load_lora_weights`` renames them with ``_maybe_map_sgm_blocks_to_diffusers`` (input block ``i``
-> ``down_blocks.{(i-1)//(layers+1)}``, ...) using the UNet's ``layers_per_block``. cemaps calls the
same function on the same tensors before parsing, so that its reading of the file and diffusers'
load agree by construction, and then verifies the load module by module (see
:mod:`cemaps.models.personalized.lora`). ``input_blocks_0_0`` (``conv_in``), ``out_2`` (``conv_out``),
``time_embed`` and ``label_emb`` are passed through by diffusers' function, and it keeps the SGM
names inside a ResBlock (``in_layers_2``, ``out_layers_3``, ``emb_layers_1``, ``skip_connection``)
and a Downsample (``op``), which kohya's LoCon (``conv_dim``) trains; cemaps renames all of these
as diffusers' ``_convert_unet_lora_key`` does.

Example:
    >>> import torch
    >>> from cemaps.models.tiny import tiny_sdxl_pipeline
    >>> state = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(1, 4)}
    >>> list(sgm_block_names(state, tiny_sdxl_pipeline(seed=0), "file"))
    ['lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cemaps.errors import ModelLoadError, one_line
from cemaps.models.families import family_of

_SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
# SGM modules outside the block structure, as whole kohya module names (diffusers' _convert_unet_lora_key)
_OUTSIDE_BLOCKS = {
    "lora_unet_input_blocks_0_0": "lora_unet_conv_in",
    "lora_unet_out_2": "lora_unet_conv_out",
    "lora_unet_time_embed_0": "lora_unet_time_embedding_linear_1",
    "lora_unet_time_embed_2": "lora_unet_time_embedding_linear_2",
    "lora_unet_label_emb_0_0": "lora_unet_add_embedding_linear_1",
    "lora_unet_label_emb_0_2": "lora_unet_add_embedding_linear_2",
}
# diffusers' function renumbers blocks but keeps the SGM words; _convert_unet_lora_key renames them after
_BLOCK_WORDS = {
    "lora_unet_input_blocks_": "lora_unet_down_blocks_",
    "lora_unet_middle_block_": "lora_unet_mid_block_",
    "lora_unet_output_blocks_": "lora_unet_up_blocks_",
}
# SGM ResBlock / Downsample layers (kohya LoCon targets them) -> diffusers' ResnetBlock2D / Downsample2D,
# as _convert_unet_lora_key renames in_layers.2, out_layers.3, emb_layers.1, skip_connection and op
_RESNET_WORDS = {
    "_in_layers_2": "_conv1",
    "_out_layers_3": "_conv2",
    "_emb_layers_1": "_time_emb_proj",
    "_skip_connection": "_conv_shortcut",
    "_downsamplers_0_op": "_downsamplers_0_conv",
}


def sgm_block_names(state: Mapping[str, torch.Tensor], pipe: Any, what: str) -> dict[str, torch.Tensor]:
    """``state`` with kohya SGM UNet block names renamed to diffusers' (other keys unchanged).

    Args:
        state: the LoRA file's tensors (not modified).
        pipe: the base pipeline; its denoiser's config gives ``layers_per_block``.
        what: how errors name the file.

    Raises:
        ModelLoadError: diffusers' converter cannot place a block (another architecture).
    """
    if not any(key.startswith("lora_unet_") and any(b in key for b in _SGM_BLOCKS) for key in state):
        return dict(state)
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    denoiser = family_of(pipe).denoiser_of(pipe)
    try:
        renamed = _maybe_map_sgm_blocks_to_diffusers(dict(state), denoiser.config)
    except (ValueError, IndexError, KeyError) as error:
        raise ModelLoadError(
            f"{what}: cannot place its SGM UNet blocks ({one_line(error)}); another architecture?"
        ) from error
    result = {}
    for key, tensor in renamed.items():
        module, dot, rest = key.partition(".")
        if module in _OUTSIDE_BLOCKS:
            module = _OUTSIDE_BLOCKS[module]
        else:
            for old, new in _BLOCK_WORDS.items():
                if module.startswith(old):
                    module = new + module[len(old) :]
                    for word, diffusers_word in _RESNET_WORDS.items():
                        if module.endswith(word):
                            module = module[: -len(word)] + diffusers_word
                    break
        result[module + dot + rest] = tensor
    return result
