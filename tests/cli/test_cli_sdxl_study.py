"""An SDXL study through the CLI: plan, capture (base folder + LoRA, TI, DreamBooth), inspect, analyze, report."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file

from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.analysis.pipeline import run_analysis
from cemaps.models.tiny import tiny_sdxl_pipeline
from cemaps.store import open_store


@pytest.fixture(scope="module")
def sdxl_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl-study")
    base = tiny_sdxl_pipeline(seed=0)
    base.save_pretrained(folder / "base")
    generator = torch.Generator().manual_seed(0)
    layer = base.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    name = "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k"
    save_file(
        {
            f"{name}.lora_down.weight": torch.randn(2, layer.in_features, generator=generator),
            f"{name}.lora_up.weight": torch.randn(layer.out_features, 2, generator=generator),
            f"{name}.alpha": torch.tensor(2.0),
        },
        folder / "kohya-xl.safetensors",
    )
    save_file(
        {"clip_l": torch.randn(2, 24, generator=generator), "clip_g": torch.randn(2, 40, generator=generator)},
        folder / "ti-xl.safetensors",
    )
    tiny_sdxl_pipeline(seed=5).unet.save_pretrained(folder / "db-unet")
    (folder / "study.yaml").write_text(
        textwrap.dedent(
            f"""
            base: {folder / "base"}
            prompts: [a red mug, freedom, a cat on a table]
            seeds: [0]
            generation: {{steps: 2, batch_size: 2, negative_prompt: blurry}}
            capture: {{timesteps: 2}}
            store: {folder / "study.h5"}
            personalized:
              - {{id: lora1, method: lora, subject: object1, path: {folder / "kohya-xl.safetensors"}}}
              - {{id: ti1, method: textual_inversion, subject: object1, token: "<xl>", path: {folder / "ti-xl.safetensors"}}}
              - {{id: db1, method: dreambooth, subject: object1, path: {folder / "db-unet"}}}
            """
        )
    )
    return folder


@pytest.mark.slow
def test_sdxl_study_plans_captures_analyzes_and_reports(sdxl_study, cli, tmp_path):
    config = sdxl_study / "study.yaml"
    code, out, err = cli("capture", "-c", config, "--dry-run")
    assert code == 0, err
    assert "12" in out  # 4 models x 3 prompts x 1 seed
    assert not (sdxl_study / "study.h5").exists()

    code, _, err = cli("capture", "-c", config, "-q")
    assert code == 0, err
    with open_store(sdxl_study / "study.h5") as store:
        assert len(store.records) == 12
        assert sorted(set(store.records["model_id"])) == ["base", "db1", "lora1", "ti1"]
        assert store.base["text_encoder_2_sha256"] and store.base["text_encoder_sha256"]
        assert store.provenance["model_family"] == "sdxl"
        assert list(store.prompts["tokens"].iloc[0]) == [
            "<|startoftext|>",
            "a</w>",
            "red</w>",
            "mug</w>",
            "<|endoftext|>",
        ]
        deltas = store.table("weight_deltas")
        assert set(deltas["model_id"]) == {"lora1", "db1"}
        assert set(store.table("textual_inversion")["component"]) == {"text_encoder", "text_encoder_2"}
    code, out, err = cli("inspect", sdxl_study / "study.h5")
    assert code == 0, err
    assert "mid_block.attentions.0.transformer_blocks.1.attn2" in out

    # a folder base gets no default scorer (the CLI asks for --clip-weights); the analysis is the CLI's own
    results = tmp_path / "results"
    run_analysis(sdxl_study / "study.h5", results, scorer=ClipScorer.tiny(seed=0), n_perm=99, progress=False)
    assert (results / "summary.json").is_file()
    code, _, err = cli("report", results, "--out", tmp_path / "report")
    assert code == 0, err
    html = (tmp_path / "report" / "report.html").read_text()
    assert "mid_block.attentions.0" in html and all(model in html for model in ("lora1", "ti1", "db1"))
