"""The in-context templates: the shipped list, user files, and the placeholder per method."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cemaps.data import fill, load_in_context_prompts, load_subjects, subject_phrase
from cemaps.data.in_context import TEMPLATE_COLUMNS, split_template
from cemaps.errors import ConfigError
from cemaps.models import clip_tokenizer


def test_in_context75_has_25_templates_per_kind_each_with_one_placeholder():
    templates = load_in_context_prompts("in_context75")
    assert list(templates.columns) == list(TEMPLATE_COLUMNS)
    assert templates["kind"].value_counts().to_dict() == {"face": 25, "object": 25, "style": 25}
    assert templates["template_id"].is_unique
    # Art renditions ("an oil painting of {subject}") recur across kinds; within a kind each is new.
    assert not templates.duplicated(["kind", "template"]).any()
    assert (templates["template"].str.count(r"\{subject\}") == 1).all()


@pytest.mark.parametrize(
    ("method", "token", "expected"),
    [
        ("base", None, "a photo of a woman on a beach"),
        ("dreambooth", "sks", "a photo of a sks woman on a beach"),
        ("lora", "sks", "a photo of a sks woman on a beach"),
        ("textual_inversion", "<sks-face1>", "a photo of <sks-face1> on a beach"),
    ],
)
def test_the_placeholder_per_method(method, token, expected):
    assert fill("a photo of {subject} on a beach", subject_phrase(method, "woman", token)) == expected


def test_the_base_phrase_takes_an_before_a_vowel():
    assert subject_phrase("base", "illustration") == "an illustration"
    assert subject_phrase("base", "mug") == "a mug"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("ti", "dog", "<x>"), "method"),
        (("dreambooth", "dog", None), "token"),
        (("textual_inversion", "dog", "two words"), "token"),
        (("base", " ", None), "class_word"),
    ],
)
def test_bad_phrase_inputs_are_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        subject_phrase(*args)


def test_fill_needs_exactly_one_placeholder():
    with pytest.raises(ConfigError, match="2 times"):
        fill("{subject} and {subject}", "a dog")


def test_split_template_gives_the_context():
    assert split_template("a photo of {subject} on a beach") == ("a photo of", "on a beach")
    assert split_template("{subject} in the snow") == ("", "in the snow")


def test_every_filled_template_fits_the_clip_context():
    tokenizer = clip_tokenizer()
    templates = load_in_context_prompts()
    subjects = load_subjects()
    longest = 0
    for subject in subjects.itertuples():
        for template in templates[templates["kind"] == subject.kind]["template"]:
            text = fill(template, subject_phrase("dreambooth", subject.class_word, subject.token))
            longest = max(longest, len(tokenizer(text).input_ids))
    assert longest <= tokenizer.model_max_length


def test_user_csv_and_yaml_templates(tmp_path: Path):
    csv = tmp_path / "t.csv"
    csv.write_text('template_id,kind,template,note\nt1,object,"{subject}, in the rain",x\n', encoding="utf-8")
    loaded = load_in_context_prompts(csv)
    assert list(loaded.columns) == [*TEMPLATE_COLUMNS, "note"]
    assert loaded["template"].iloc[0] == "{subject}, in the rain"
    rows = [{"template_id": "t1", "kind": "face", "template": "{subject} smiling"}]
    for document in (rows, {"templates": rows}):
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        assert load_in_context_prompts(path)["template"].tolist() == ["{subject} smiling"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("template_id,kind\nt1,face\n", "missing required column"),
        ("template_id,kind,template\nt1,animal,{subject} runs\n", "unknown kind 'animal'"),
        ("template_id,kind,template\nt1,face,a portrait\n", "exactly once"),
        ("template_id,kind,template\nt1,face,{subject} and {subject}\n", "exactly once"),
        ("template_id,kind,template\nt1,face,{subject} in {place}\n", "no other braces"),
        ("template_id,kind,template\nt1,face,{subject} a\nt1,face,{subject} b\n", "duplicate template_id 't1'"),
        ("template_id,kind,template\nt1,face,\n", "empty template"),
        ("template_id,kind,template\n", "empty"),
    ],
)
def test_bad_template_files_are_errors_naming_the_file(tmp_path: Path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as error:
        load_in_context_prompts(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unknown_list_and_missing_file_are_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="in_context75"):
        load_in_context_prompts("in_context100")
    with pytest.raises(ConfigError, match="not found"):
        load_in_context_prompts(tmp_path / "none.csv")
