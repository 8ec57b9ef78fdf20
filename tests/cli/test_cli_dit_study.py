"""`cemaps capture --config` on saved SD3, Flux and PixArt-Sigma folders, then analysis and the report."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from cemaps.store import open_store

BUILDERS = {"sd3": "tiny_sd3_pipeline", "flux": "tiny_flux_pipeline", "pixart": "tiny_pixart_sigma_pipeline"}
LAYERS = {
    "sd3": ["transformer_blocks.0.attn", "transformer_blocks.1.attn"],
    "flux": [
        "transformer_blocks.0.attn",
        "transformer_blocks.1.attn",
        "single_transformer_blocks.0.attn",
        "single_transformer_blocks.1.attn",
    ],
    "pixart": ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each family's tiny pipeline saved as a diffusers folder; SD3 and Flux with a LoRA file beside it."""
    from cemaps.models import tiny_dit

    root = tmp_path_factory.mktemp("dit")
    out = {}
    for family, builder in BUILDERS.items():
        pipe = getattr(tiny_dit, builder)(seed=0)
        pipe.save_pretrained(root / family)
        if family != "pixart":
            config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
            pipe.transformer.add_adapter(config, adapter_name="trained")
            layers = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
            type(pipe).save_lora_weights(root / f"{family}-lora", transformer_lora_layers=layers)
        out[family] = root / family
    return out


def _study(folder: Path, family: str, tmp_path: Path) -> Path:
    personalized = (
        f"personalized:\n  - {{id: lora1, method: lora, subject: object1, path: {folder.parent / (family + '-lora')}}}\n"
        if family != "pixart"
        else ""
    )
    config = tmp_path / "study.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        base: {folder}
        prompts: [a red mug, freedom]
        seeds: [0]
        generation: {{steps: 2, batch_size: 2, guidance_scale: 4.0, height: 64, width: 64}}
        capture: {{timesteps: 2}}
        """)
        + personalized
    )
    return config


@pytest.mark.parametrize("family", ["sd3", "flux", "pixart"])
def test_capture_a_dit_family_folder(folders, family, tmp_path, run_cli):
    code, _, err = run_cli(
        "capture", "--config", _study(folders[family], family, tmp_path), "--store", tmp_path / "s.h5", "--no-progress"
    )
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as store:
        assert len(store.records) == (2 if family == "pixart" else 4)  # one record per image, LoRA twins paired
        capture = store.settings["capture"]
        assert capture["layers_selected"] == LAYERS[family]
        assert capture["half_labels"] == ["cond"]
        mass = [n for n in store.array_names if n.endswith(":text_mass")]
        assert len(mass) == (0 if family == "pixart" else len(LAYERS[family]))
        tokens = store.prompts.loc["q000", "tokens"]
        assert list(tokens) == (
            ["<|startoftext|>", "a</w>", "red</w>", "mug</w>", "<|endoftext|>"]
            if family == "sd3"
            else ["▁a", "▁red", "▁mug", "</s>"]
        )
        if family == "flux":
            deltas = store.table("weight_deltas")
            assert set(deltas["component"]) == {"transformer"} and "attn.to_q" in set(deltas["kind"])


def test_flux_study_analysis_and_report_order_layers_by_depth(folders, tmp_path, run_cli):
    from cemaps.analysis.clip_scorer import ClipScorer
    from cemaps.analysis.pipeline import run_analysis

    code, _, err = run_cli(
        "capture", "-c", _study(folders["flux"], "flux", tmp_path), "-o", tmp_path / "s.h5", "--no-progress"
    )
    assert code == 0, err
    run_analysis(tmp_path / "s.h5", tmp_path / "results", scorer=ClipScorer.tiny(seed=0), n_perm=99, progress=False)
    import pandas as pd

    layers = pd.read_csv(tmp_path / "results" / "layers.csv")
    assert list(layers.sort_values("order")["layer"]) == LAYERS["flux"]  # double- then single-stream blocks
    shift = pd.read_csv(tmp_path / "results" / "attention_shift.csv")
    assert set(shift["layer"]) == set(LAYERS["flux"])  # text mass is not a layer
    code, _, err = run_cli("report", tmp_path / "results", "-o", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "figures" / "attention_shift_layers.png").is_file()


def test_a_tiny_dit_alias_captures_through_the_cli(tmp_path, run_cli):
    config = tmp_path / "study.yaml"
    config.write_text(
        "base: cemaps/tiny-pixart-sigma\nprompts: [a red mug, freedom]\nseeds: [0]\n"
        "generation: {steps: 2, batch_size: 2, guidance_scale: 4.0, height: 64, width: 64}\ncapture: {timesteps: 1}\n"
    )
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--no-progress")
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as store:
        assert store.base["model_id"] == "cemaps/tiny-pixart-sigma" and len(store.records) == 2


def test_the_planner_calibrates_on_a_flux_folder(folders, tmp_path, run_cli):
    config = _study(folders["flux"], "flux", tmp_path)
    code, out, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--dry-run")
    assert code == 0, err
    assert "2 models x 2 prompts x 1 seeds = 4 records" in out and "calibration on cpu" in out
    assert not (tmp_path / "s.h5").exists()
