"""Mixed precision and gradient checkpointing run (CPU autocast) and leave no flag behind."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from cemaps.errors import ConfigError
from cemaps.models.train import TrainSettings, personalize


@pytest.mark.parametrize("mixed_precision", ["bf16", "fp16"])
def test_mixed_precision_with_checkpointing_trains_and_restores_flags(tiny_pipe, tmp_path, mixed_precision):
    training_mode = tiny_pipe.unet.training
    settings = TrainSettings(method="lora", steps=2, mixed_precision=mixed_precision, gradient_checkpointing=True)
    result = personalize(
        tiny_pipe, "lora", [Image.new("RGB", (64, 64), "white")], "sks", "dog", tmp_path / "o", settings, progress=False
    )
    assert all(math.isfinite(loss) for loss in result.losses)
    assert not tiny_pipe.unet.is_gradient_checkpointing and tiny_pipe.unet.training == training_mode
    assert tiny_pipe.unet.dtype == torch.float32


def test_textual_inversion_refuses_a_half_precision_text_encoder(tiny_pipe, tmp_path):
    tiny_pipe.text_encoder.to(torch.float16)
    with pytest.raises(ConfigError, match="float32"):
        personalize(
            tiny_pipe, "textual_inversion", [Image.new("RGB", (64, 64))], "<t>", "dog", tmp_path / "o", progress=False
        )
