"""A Stable Diffusion 2.x-shaped base folder (v-prediction, linear projections, per-block head sizes) through `cemaps capture`.

SD 2.x (stabilityai/stable-diffusion-2-1) differs from SD 1.x in what cemaps touches: the
scheduler's ``prediction_type: v_prediction``, ``use_linear_projection: true`` (``proj_in`` is
a Linear), a head size per block (``attention_head_dim: [5, 10, 20, 20]``), a GELU OpenCLIP text
encoder of width 1024. The tiny folder here has the same structure at toy sizes.
"""

from __future__ import annotations

import sys
import textwrap

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cemaps.models import clip_tokenizer, tiny_pipeline
from cemaps.models.loading import load_pipeline
from cemaps.store import open_store


def write_sd2_folder(folder) -> None:
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_act="gelu",
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=48,
        attention_head_dim=(2, 4, 8, 8),
        use_linear_projection=True,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_pipeline(seed=0).vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def test_sd2_v_prediction_folder_captures_through_the_cli(tmp_path, monkeypatch):
    from cemaps.cli import main

    write_sd2_folder(tmp_path / "sd2")
    loaded = load_pipeline(str(tmp_path / "sd2"), device="cpu")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert isinstance(loaded.unet.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    (tmp_path / "study.yaml").write_text(
        textwrap.dedent(f"""
        base: {tmp_path / "sd2"}
        prompts: [a red mug, freedom]
        seeds: [0]
        generation: {{steps: 2, batch_size: 2, guidance_scale: 7.5}}
        capture: {{timesteps: 2, heads: all}}
    """)
    )
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "cemaps",
            "capture",
            "--config",
            str(tmp_path / "study.yaml"),
            "--store",
            str(tmp_path / "s.h5"),
            "--no-progress",
        ],
    )
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    with open_store(tmp_path / "s.h5") as store:
        assert len(store.records) == 2
        for block in ("down_blocks.0", "down_blocks.1", "up_blocks.3"):  # a different head count per block
            layer = f"{block}.attentions.0.transformer_blocks.0.attn2"
            array = next(n for n in store.array_names if n.endswith(layer))
            heads = store.axes(array).index("head")
            assert store.read_one(array, 0).shape[heads] == loaded.unet.get_submodule(layer).heads
