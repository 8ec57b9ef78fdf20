"""Writes a diffusers SDXL pipeline as an original (Stability SGM) single-file checkpoint, for tests.

Imported as ``sdxl_checkpoints`` (tests/models is on sys.path). The key layout is the one
diffusers' ``loaders/single_file_utils.py`` reads back (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``):
``model.diffusion_model.*`` (UNet, SGM block names), ``first_stage_model.*`` (VAE),
``conditioner.embedders.0.transformer.*`` (CLIP ViT-L, Hugging Face names) and
``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG: fused ``in_proj``, ``text_projection``
transposed). Tests check the round trip tensor by tensor, so a wrong name here fails loudly.
"""

from __future__ import annotations

import torch

_RESNET_NAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _unet_prefixes(unet) -> list[tuple[str, str]]:
    """(diffusers prefix, SGM prefix) for every block of ``unet``, sizes and block types from its config."""
    config = unet.config
    layers = config.layers_per_block
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    n_blocks = len(config.block_out_channels)
    for i in range(n_blocks):
        for j in range(layers):
            pairs += [
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(layers + 1) * i + j + 1}.0."),
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(layers + 1) * i + j + 1}.1."),
            ]
        for j in range(layers + 1):
            pairs += [
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(layers + 1) * i + j}.0."),
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(layers + 1) * i + j}.1."),
            ]
        if i < n_blocks - 1:
            has_attention = "CrossAttn" in config.up_block_types[i]
            pairs += [
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(layers + 1) * (i + 1)}.0.op."),
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{(layers + 1) * i + layers}.{2 if has_attention else 1}.",
                ),
            ]
    return pairs


def unet_to_sgm(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under SGM names, prefixed ``model.diffusion_model.``."""
    prefixes = _unet_prefixes(unet)
    checkpoint = {}
    for name, tensor in unet.state_dict().items():
        original = name
        if "resnets" in name:
            for diffusers_name, sgm_name in _RESNET_NAMES:
                original = original.replace(diffusers_name, sgm_name)
        for diffusers_prefix, sgm_prefix in prefixes:
            if original.startswith(diffusers_prefix):
                original = sgm_prefix + original[len(diffusers_prefix) :]
                break
        else:
            raise KeyError(f"no SGM name for UNet key {name!r}")
        checkpoint[f"model.diffusion_model.{original}"] = tensor.clone().contiguous()
    return checkpoint


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights under CompVis names, prefixed ``first_stage_model.``."""
    n_up = len(vae.config.up_block_types)
    renames = [("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut.")]
    renames += [(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.") for j in range(2)]
    renames += [("mid_block.attentions.0.", "mid.attn_1.")]
    for i in range(len(vae.config.down_block_types)):
        renames += [
            (f"down_blocks.{i}.resnets.", f"down.{i}.block."),
            (f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."),
        ]
    for i in range(n_up):
        renames += [
            (f"up_blocks.{i}.resnets.", f"up.{n_up - 1 - i}.block."),
            (f"up_blocks.{i}.upsamplers.0.", f"up.{n_up - 1 - i}.upsample."),
        ]
    attention = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    checkpoint = {}
    for name, tensor in vae.state_dict().items():
        original = name
        for old, new in renames:
            original = original.replace(old, new)
        if ".attn_1." in original:
            for old, new in attention:
                original = original.replace(old, new)
            if tensor.ndim == 2:  # the original attention projections are 1x1 convolutions
                tensor = tensor[:, :, None, None]
        checkpoint[f"first_stage_model.{original}"] = tensor.clone().contiguous()
    return checkpoint


def open_clip_to_sgm(text_encoder, prefix: str = "conditioner.embedders.1.model.") -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's layout (fused q/k/v, transposed projection)."""
    state = text_encoder.state_dict()
    checkpoint = {
        f"{prefix}positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        f"{prefix}token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        f"{prefix}ln_final.weight": state["text_model.final_layer_norm.weight"],
        f"{prefix}ln_final.bias": state["text_model.final_layer_norm.bias"],
        f"{prefix}text_projection": state["text_projection.weight"].T,
    }
    renames = [
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        (".fc1.", ".c_fc."),
        (".fc2.", ".c_proj."),
        ("self_attn", "attn"),
    ]
    for layer in range(text_encoder.config.num_hidden_layers):
        source, target = f"text_model.encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            checkpoint[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{source}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
        for name, tensor in state.items():
            if name.startswith(source) and not any(f"self_attn.{p}_proj." in name for p in ("q", "k", "v")):
                rest = name[len(source) :]
                for old, new in renames:
                    rest = rest.replace(old, new)
                checkpoint[target + rest] = tensor
    return {k: v.clone().contiguous() for k, v in checkpoint.items()}


def sdxl_to_sgm(pipe) -> dict[str, torch.Tensor]:
    """The whole SDXL pipeline as one SGM checkpoint (UNet, VAE, both text encoders)."""
    checkpoint = unet_to_sgm(pipe.unet) | vae_to_ldm(pipe.vae)
    # transformers 5 drops CLIPTextModel's "text_model." from its state-dict keys; checkpoints keep it
    checkpoint |= {
        f"conditioner.embedders.0.transformer.text_model.{k.removeprefix('text_model.')}": v.clone().contiguous()
        for k, v in pipe.text_encoder.state_dict().items()
    }
    return checkpoint | open_clip_to_sgm(pipe.text_encoder_2)
