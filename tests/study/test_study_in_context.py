"""The in-context prompt set in the runner: placeholder per method, paired records, texts recorded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from cemaps.analysis.clip_scorer import ClipScorer
from cemaps.analysis.in_context import analyse_in_context
from cemaps.probes import CrossAttentionSettings
from cemaps.store import open_store
from cemaps.study.config import GenerationSettings, PersonalizedEntry, StudyConfig
from cemaps.study.prompt_sets import InContextSettings, in_context_store_path
from cemaps.study.runner import run_study

TEMPLATES = (
    "template_id,kind,template\n"
    "f1,face,a photo of {subject} on a beach\nf2,face,{subject} wearing a red hat\n"
    "o1,object,{subject} in the snow\ns1,style,a lighthouse in the style of {subject}\n"
)


def write_ti(folder: Path, width: int, token: str, vectors: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {token: torch.randn(vectors, width, generator=torch.Generator().manual_seed(1))},
        folder / "learned_embeds.safetensors",
    )
    return folder


def write_dreambooth(folder: Path) -> Path:
    """A DreamBooth UNet folder: the tiny UNet with one cross-attention key projection shifted."""
    from cemaps.models import tiny_pipeline

    unet = tiny_pipeline(seed=0).unet
    with torch.no_grad():
        next(p for n, p in unet.named_parameters() if n.endswith("attn2.to_k.weight")).add_(0.5)
    unet.save_pretrained(folder)
    return folder


@pytest.fixture()
def study(tmp_path, tiny_pipe):
    templates = tmp_path / "templates.csv"
    templates.write_text(TEMPLATES, encoding="utf-8")
    width = tiny_pipe.text_encoder.config.hidden_size
    personalized = (
        PersonalizedEntry(
            "ti-face1",
            "textual_inversion",
            str(write_ti(tmp_path / "ti", width, "<sks-face1>")),
            subject="face1",
            token="<sks-face1>",
        ),
        PersonalizedEntry(
            "db-object1", "dreambooth", str(write_dreambooth(tmp_path / "db")), subject="object1", token="sks"
        ),
    )
    return StudyConfig(
        prompts=["a red mug"],
        seeds=(0,),
        generation=GenerationSettings(steps=2, batch_size=2),
        capture=CrossAttentionSettings(timesteps=2),
        personalized=personalized,
        prompt_sets=("unrelated", "in_context"),
        in_context=InContextSettings(prompts=str(templates)),
    )


def test_in_context_records_are_paired_with_per_model_texts(tmp_path, tiny_pipe, study):
    result = run_study(study, tmp_path / "s.h5", progress=False, pipe=tiny_pipe)
    assert result.in_context is not None and result.in_context.store == tmp_path / "s.in_context.h5"
    assert result.written == 3  # the unrelated store: one prompt x (base + 2 models)
    with open_store(result.in_context.store) as store:
        records = store.records
        texts = store.table("in_context_texts").set_index(["model_id", "prompt_id"])
        prompts = store.prompts
    # Base: every subject's templates of its kind; each model: its own subject's only.
    assert sorted(records.loc[records.model_id == "base", "prompt_id"]) == ["f1@face1", "f2@face1", "o1@object1"]
    assert sorted(records.loc[records.model_id == "ti-face1", "prompt_id"]) == ["f1@face1", "f2@face1"]
    assert sorted(records.loc[records.model_id == "db-object1", "prompt_id"]) == ["o1@object1"]
    assert result.in_context.written == 6
    assert prompts.loc["f1@face1", "text"] == "a photo of a woman on a beach"
    assert texts.loc[("base", "f1@face1"), "text"] == "a photo of a woman on a beach"
    assert texts.loc[("ti-face1", "f1@face1"), "text"] == "a photo of <sks-face1> on a beach"
    assert texts.loc[("db-object1", "o1@object1"), "text"] == "a sks mug in the snow"
    # The Textual Inversion token is one word while its model is applied; the subject span is found.
    ti = texts.loc[("ti-face1", "f1@face1")]
    assert ti["tokens"][ti["subject_start"] : ti["subject_stop"]] == ["<sks-face1>"]
    base = texts.loc[("base", "f1@face1")]
    assert base["tokens"][base["subject_start"] : base["subject_stop"]] == ["a</w>", "woman</w>"]
    db = texts.loc[("db-object1", "o1@object1")]
    assert db["tokens"][db["subject_start"] : db["subject_stop"]] == ["a</w>", "sks</w>", "mug</w>"]
    # Resuming writes nothing new.
    again = run_study(study, tmp_path / "s.h5", progress=False, pipe=tiny_pipe)
    assert (again.written, again.in_context.written, again.in_context.skipped) == (0, 0, 6)
    # The analysis finds the store beside the main one and scores every record.
    (tmp_path / "results").mkdir()
    files = analyse_in_context(tmp_path / "s.h5", tmp_path / "results", ClipScorer.tiny(seed=0))
    assert sorted(files) == ["in_context", "in_context_shift", "in_context_summary", "in_context_tokens"]
    scores = pd.read_csv(tmp_path / "results" / "in_context.csv")
    shift = pd.read_csv(tmp_path / "results" / "in_context_shift.csv")
    assert len(scores) == 6 and scores["clip_t"].notna().all()
    n_layers = shift["layer"].nunique()
    assert len(shift) == 3 * n_layers and n_layers > 1
    assert shift["non_subject_shift"].between(0, 1).all()
    # TI: start + "a photo of" + "on a beach" + end; DreamBooth: start + "in the snow" + end.
    assert dict(shift.groupby("model_id")["n_context_tokens"].first()) == {"db-object1": 5, "ti-face1": 8}
    words = pd.read_csv(tmp_path / "results" / "in_context_tokens.csv")
    assert set(words.loc[words.model_id == "db-object1", "token"]) == {
        "<|startoftext|>",
        "in</w>",
        "the</w>",
        "snow</w>",
        "<|endoftext|>",
    }


def test_multi_vector_ti_token_spans_its_vectors_in_texts_and_maps(tmp_path, tiny_pipe, study):
    """diffusers spells a 3-vector token as three tokens when it encodes; texts and spans follow it."""
    width = tiny_pipe.text_encoder.config.hidden_size
    ti = PersonalizedEntry(
        "ti-face1",
        "textual_inversion",
        str(write_ti(tmp_path / "ti3", width, "<sks-face1>", vectors=3)),
        subject="face1",
        token="<sks-face1>",
    )
    config = replace(study, personalized=(ti,))
    result = run_study(config, tmp_path / "s.h5", progress=False, pipe=tiny_pipe)
    with open_store(result.in_context.store) as store:
        texts = store.table("in_context_texts").set_index(["model_id", "prompt_id"])
        records = store.records
        record = int(
            records.loc[(records.model_id == "ti-face1") & (records.prompt_id == "f1@face1"), "record"].iloc[0]
        )
        name = next(n for n in store.array_names if n.startswith("cross_attention/"))
        n_captured_tokens = store.read_one(name, record).shape[store.axes(name).index("token")]
    row = texts.loc[("ti-face1", "f1@face1")]
    assert row["text"] == "a photo of <sks-face1> on a beach"
    assert row["tokens"][row["subject_start"] : row["subject_stop"]] == [
        "<sks-face1>",
        "<sks-face1>_1",
        "<sks-face1>_2",
    ]
    assert row["tokens"][row["subject_stop"] :] == ["on</w>", "a</w>", "beach</w>", "<|endoftext|>"]
    assert n_captured_tokens == len(row["tokens"])  # the maps' token axis is the expanded prompt's
    (tmp_path / "results").mkdir()
    analyse_in_context(tmp_path / "s.h5", tmp_path / "results", ClipScorer.tiny(seed=0))
    shift = pd.read_csv(tmp_path / "results" / "in_context_shift.csv")
    # the context is the template's words (start + "a photo of" + "on a beach" + end), not the extra vectors
    ti_shift = shift[shift.model_id == "ti-face1"].groupby("prompt_id")["n_context_tokens"].first()
    assert dict(ti_shift) == {"f1@face1": 8, "f2@face1": 6}


def test_in_context_only(tmp_path, tiny_pipe, study):
    import dataclasses

    config = dataclasses.replace(study, prompt_sets=("in_context",), personalized=study.personalized[:1])
    result = run_study(config, tmp_path / "s.h5", progress=False, pipe=tiny_pipe)
    assert result.store == in_context_store_path(tmp_path / "s.h5") and result.written == 4
    assert not (tmp_path / "s.h5").exists()
