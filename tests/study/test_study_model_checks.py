"""Every personalized model is checked before the first image is generated or the store is touched (issue 13, item 3).

Before this check a NaN LoRA was found only in the weight-delta SVD (``torch._C._LinAlgError``),
after the store had been created and the base model's records written.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from cemaps.errors import ModelLoadError
from cemaps.probes import CrossAttentionSettings
from cemaps.study.config import GenerationSettings, PersonalizedEntry, StudyConfig
from cemaps.study.runner import run_study

TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _config(*entries: PersonalizedEntry) -> StudyConfig:
    return StudyConfig(
        prompts=["a red mug", "freedom"],
        seeds=(0,),
        generation=GenerationSettings(steps=2, batch_size=2),
        capture=CrossAttentionSettings(timesteps=2),
        personalized=tuple(entries),
    )


def _lora(path, down_width: int = 32, value: float = 0.1):
    down = torch.full((2, down_width), value)
    save_file(
        {
            f"{TO_K}.lora_down.weight": down,
            f"{TO_K}.lora_up.weight": torch.full((32, 2), 0.1),
            f"{TO_K}.alpha": torch.tensor(2.0),
        },
        path,
    )
    return str(path)


def _unet_calls(pipe) -> list[int]:
    calls: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def _folder_digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _bad_entry(kind: str, models) -> tuple[PersonalizedEntry, str]:
    if kind == "missing file":
        return PersonalizedEntry("m", "lora", str(models / "nope.safetensors")), "does not exist"
    if kind == "truncated safetensors":
        data = (models / "good.safetensors").read_bytes()
        (models / "cut.safetensors").write_bytes(data[: len(data) // 2])
        return PersonalizedEntry("m", "lora", str(models / "cut.safetensors")), "not a readable safetensors file"
    if kind == "wrong-shaped LoRA":
        return PersonalizedEntry(
            "m", "lora", _lora(models / "sd2.safetensors", down_width=1024)
        ), "input width 32, not 1024"
    if kind == "in-vocab TI token":
        save_file({"emb_params": torch.zeros(1, 32)}, models / "cat.safetensors")
        return PersonalizedEntry(
            "m", "textual_inversion", str(models / "cat.safetensors"), token="cat</w>"
        ), "already in the tokenizer"
    save_file({"emb_params": torch.zeros(1, 32)}, models / "e.safetensors")
    return PersonalizedEntry("m", "lora", str(models / "e.safetensors")), "looks like a Textual Inversion embedding"


@pytest.mark.parametrize(
    "kind", ["missing file", "truncated safetensors", "wrong-shaped LoRA", "in-vocab TI token", "TI file as LoRA"]
)
def test_bad_model_is_refused_before_anything_is_generated_or_written(tmp_path, tiny_pipe, kind):
    models = tmp_path / "models"
    models.mkdir()
    good = PersonalizedEntry("good", "lora", _lora(models / "good.safetensors"))
    bad, message = _bad_entry(kind, models)
    calls = _unet_calls(tiny_pipe)
    (tmp_path / "out").mkdir()
    with pytest.raises(ModelLoadError, match=message):
        run_study(_config(good, bad), tmp_path / "out" / "study.h5", progress=False, pipe=tiny_pipe)
    assert calls == [] and list((tmp_path / "out").iterdir()) == []


def test_nan_lora_added_to_an_existing_study_leaves_the_store_byte_identical(tmp_path, tiny_pipe):
    models = tmp_path / "models"
    models.mkdir()
    good = PersonalizedEntry("good", "lora", _lora(models / "good.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    first = run_study(_config(good), out / "study.h5", progress=False, pipe=tiny_pipe)
    assert first.written == 4
    before = _folder_digest(out)
    nan = PersonalizedEntry("nan", "lora", _lora(models / "nan.safetensors", value=float("nan")))
    calls = _unet_calls(tiny_pipe)
    with pytest.raises(
        ModelLoadError, match=rf"nan\.safetensors'?: tensor '{TO_K}\.lora_down\.weight' has 64 non-finite"
    ):
        run_study(_config(good, nan), out / "study.h5", progress=False, pipe=tiny_pipe)
    assert calls == [] and _folder_digest(out) == before
