"""The shipped prompt suite and subjects, user prompt/subject files, and synthetic subject images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cemaps.data import (
    ABSTRACTNESS_LEVELS,
    DOMAINS,
    KIND_DOMAINS,
    UNLABELLED,
    label_counts,
    load_prompts,
    load_subjects,
    synthetic_subject_images,
)
from cemaps.data.suite import PROMPT_COLUMNS, SUBJECT_COLUMNS  # internal column constants
from cemaps.errors import ConfigError
from cemaps.models import clip_tokenizer

# ----------------------------------------------------------------------------- shipped lists


def test_suite200_has_200_unique_prompts_with_valid_labels():
    prompts = load_prompts("suite200")
    assert list(prompts.columns[: len(PROMPT_COLUMNS)]) == list(PROMPT_COLUMNS)
    assert len(prompts) == 200
    assert list(prompts["prompt_id"]) == [f"p{number:03d}" for number in range(200)]
    assert prompts["text"].str.lower().str.strip().is_unique
    assert set(prompts["abstractness"]) == set(ABSTRACTNESS_LEVELS)
    assert set(prompts["domain"]) == set(DOMAINS)


def test_suite200_is_balanced_over_abstractness_and_domain():
    counts = label_counts(load_prompts("suite200"))
    cells = counts.loc[list(ABSTRACTNESS_LEVELS), list(DOMAINS)]
    # Every domain in every abstractness class, and no cell more than one prompt off another.
    assert cells.to_numpy().min() >= 11
    assert cells.to_numpy().max() - cells.to_numpy().min() <= 1
    per_level = counts.loc[list(ABSTRACTNESS_LEVELS), "total"]
    assert per_level.max() - per_level.min() <= 1
    assert counts.loc["total", "total"] == 200


def test_demo24_has_8_prompts_per_class_covering_every_domain():
    suite = load_prompts("suite200")
    demo = load_prompts("demo24")
    assert len(demo) == 24
    assert demo["in_demo24"].all()
    assert demo["abstractness"].value_counts().to_dict() == {level: 8 for level in ABSTRACTNESS_LEVELS}
    for level in ABSTRACTNESS_LEVELS:
        assert set(demo.loc[demo["abstractness"] == level, "domain"]) == set(DOMAINS)
    pd.testing.assert_frame_equal(demo, suite[suite["in_demo24"]].reset_index(drop=True))


def test_every_shipped_prompt_fits_the_clip_context():
    tokenizer = clip_tokenizer()
    texts = list(load_prompts("suite200")["text"])
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]  # begin/end tokens included
    assert max(lengths) <= tokenizer.model_max_length
    # A subject token prepended as in "a photo of <sks-face1>, ..." must fit too.
    assert max(lengths) + 8 <= tokenizer.model_max_length


def test_subjects15_has_5_faces_objects_and_styles():
    subjects = load_subjects()
    assert list(subjects.columns) == list(SUBJECT_COLUMNS)
    assert len(subjects) == 15
    assert subjects["kind"].value_counts().to_dict() == {"face": 5, "object": 5, "style": 5}
    assert (subjects["domain"] == subjects["kind"].map(KIND_DOMAINS)).all()
    assert subjects["subject_id"].is_unique and subjects["token"].is_unique
    assert subjects["descriptor"].is_unique
    assert subjects["token"].str.fullmatch(r"<sks-[a-z]+\d>").all()


def test_label_counts_tabulates_a_small_frame_with_unlabelled_rows():
    prompts = pd.DataFrame(
        {
            "abstractness": ["concrete", "concrete", "abstract", UNLABELLED],
            "domain": ["person", "person", "scene", "animal"],
        }
    )
    counts = label_counts(prompts)
    assert list(counts.index) == [*ABSTRACTNESS_LEVELS, UNLABELLED, "total"]
    assert list(counts.columns) == [*DOMAINS, "total"]
    assert counts.loc["concrete", "person"] == 2
    assert counts.loc["abstract", "scene"] == 1
    assert counts.loc[UNLABELLED, "animal"] == 1
    assert counts.loc["compositional", "total"] == 0
    assert counts.loc["total", "total"] == 4


def test_label_counts_without_label_columns_is_an_error():
    with pytest.raises(ConfigError, match="domain"):
        label_counts(pd.DataFrame({"abstractness": ["concrete"]}))


# ----------------------------------------------------------------------------- user files


def test_user_csv_roundtrip(tmp_path: Path):
    suite = load_prompts("suite200")[list(PROMPT_COLUMNS)]
    path = tmp_path / "prompts.csv"
    suite.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_prompts(path), suite)
    pd.testing.assert_frame_equal(load_prompts(str(path)), suite)


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "mapping"])
def test_user_yaml_roundtrip(tmp_path: Path, wrapped: bool):
    suite = load_prompts("demo24")[list(PROMPT_COLUMNS)]
    records = suite.to_dict(orient="records")
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump({"prompts": records} if wrapped else records), encoding="utf-8")
    pd.testing.assert_frame_equal(load_prompts(path), suite)


def test_user_prompts_need_only_id_and_text(tmp_path: Path):
    path = tmp_path / "mine.csv"
    path.write_text('prompt_id,text,note\nq1,a lighthouse,first\nq2,"fog, rain and wind",second\n', encoding="utf-8")
    prompts = load_prompts(path)
    assert list(prompts.columns) == [*PROMPT_COLUMNS, "note"]
    assert list(prompts["text"]) == ["a lighthouse", "fog, rain and wind"]
    assert (prompts["abstractness"] == UNLABELLED).all() and (prompts["domain"] == UNLABELLED).all()
    assert list(prompts["note"]) == ["first", "second"]


def test_blank_label_cells_are_unlabelled_and_yaml_ids_become_strings(tmp_path: Path):
    path = tmp_path / "mine.yml"
    path.write_text(
        "- {prompt_id: 1, text: freedom, abstractness: abstract}\n- {prompt_id: 2, text: a cat, domain: animal}\n",
        encoding="utf-8",
    )
    prompts = load_prompts(path)
    assert list(prompts["prompt_id"]) == ["1", "2"]
    assert list(prompts["abstractness"]) == ["abstract", UNLABELLED]
    assert list(prompts["domain"]) == [UNLABELLED, "animal"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


PROMPT_ERRORS = {
    "missing_columns": ("p.csv", "id,text\nq1,a cat\n", r"missing required column\(s\) prompt_id"),
    "unknown_abstractness": (
        "p.csv",
        "prompt_id,text,abstractness\nq1,a cat,concrete\nq2,a dog,vague\n",
        r"row 2 \(prompt_id 'q2'\): unknown abstractness 'vague'; expected one of concrete, abstract, compositional",
    ),
    "unknown_domain": (
        "p.yaml",
        "- {prompt_id: q1, text: a cat, domain: plant}\n",
        r"item 1 \(prompt_id 'q1'\): unknown domain 'plant'; expected one of person, animal, object, scene, style",
    ),
    "duplicate_ids": (
        "p.csv",
        "prompt_id,text\nq1,a cat\nq2,a dog\nq1,a cow\n",
        r"duplicate prompt_id 'q1' at rows 1, 3",
    ),
    "empty_text": ("p.csv", "prompt_id,text\nq1,a cat\nq2,  \n", r"row 2 \(prompt_id 'q2'\): empty text"),
    "empty_id": ("p.csv", "prompt_id,text\n,a cat\n", r"row 1: empty prompt_id"),
    "null_yaml_text": ("p.yaml", "- {prompt_id: q1, text: null}\n", r"item 1 \(prompt_id 'q1'\): empty text"),
    "header_only_csv": ("p.csv", "prompt_id,text\n", r"the prompt list is empty"),
    "zero_byte_csv": ("p.csv", "", r"the prompt list is empty"),
    "empty_yaml": ("p.yaml", "", r"the prompt list is empty"),
    "empty_yaml_list": ("p.yaml", "prompts: []\n", r"the prompt list is empty"),
    "unparseable_csv_first_row": ("p.csv", "prompt_id,text\nq1,a cat,extra,fields\n", r"more fields than the header"),
    "unparseable_csv_later_row": ("p.csv", "prompt_id,text\nq1,a cat\nq2,a dog,extra\n", r"cannot parse as CSV"),
    "unparseable_csv_open_quote": ("p.csv", 'prompt_id,text\nq1,"a cat\n', r"cannot parse as CSV"),
    "unparseable_yaml": (
        "p.yaml",
        "- {prompt_id: q1, text: [unclosed\n",
        r"cannot parse as YAML \(.* at line 2, column 1\)",
    ),
    "yaml_scalar": ("p.yaml", "just a sentence\n", r"expected a list of mappings or a mapping with key 'prompts:'"),
    "yaml_wrong_key": ("p.yaml", "items:\n  - {prompt_id: q1, text: a cat}\n", r"mapping with key 'prompts:'"),
    "yaml_item_not_mapping": (
        "p.yaml",
        "- {prompt_id: q1, text: a cat}\n- a dog\n",
        r"item 2 is a str; expected a mapping",
    ),
    "yaml_nested_value": (
        "p.yaml",
        "- {prompt_id: q1, text: [a, cat]}\n",
        r"item 1, field 'text': expected a single value",
    ),
}


@pytest.mark.parametrize("case", sorted(PROMPT_ERRORS))
def test_bad_prompt_file_is_a_one_line_error_naming_the_file(tmp_path: Path, case: str):
    name, text, expected = PROMPT_ERRORS[case]
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_prompts(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_non_utf8_csv_is_unparseable(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"prompt_id,text\nq1,caf\xe9 \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot parse as CSV"):
        load_prompts(path)


def test_missing_prompt_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nowhere\.csv: prompt list file not found"):
        load_prompts(tmp_path / "nowhere.csv")


@pytest.mark.parametrize("source", ["suite100", "prompts.txt", Path("suite200")])
def test_unknown_prompt_list_names_the_valid_ones(source: str | Path):
    with pytest.raises(
        ConfigError,
        match=r"unknown prompt list .*expected one of suite200, demo24, toyworld72, toyworld-demo24 or a path",
    ):
        load_prompts(source)


SUBJECT_HEADER = "subject_id,kind,descriptor,class_word"

SUBJECT_ERRORS = {
    "missing_columns": ("s.csv", "subject_id,kind\nme,face\n", r"missing required column\(s\) descriptor, class_word"),
    "unknown_kind": (
        "s.csv",
        f"{SUBJECT_HEADER}\nme,pet,my dog,dog\n",
        r"row 1 \(subject_id 'me'\): unknown kind 'pet'; expected one of face, object, style",
    ),
    "domain_mismatch": (
        "s.yaml",
        "subjects:\n  - {subject_id: me, kind: face, domain: animal, descriptor: my face, class_word: person}\n",
        r"item 1 \(subject_id 'me'\): domain 'animal' does not match kind 'face'; expected 'person'",
    ),
    "token_with_space": (
        "s.csv",
        f"{SUBJECT_HEADER},token\nme,face,my face,person,<my face>\n",
        r"token '<my face>' contains whitespace",
    ),
    "duplicate_token": (
        "s.csv",
        f"{SUBJECT_HEADER},token\na,face,face a,person,<x>\nb,object,a mug,mug,<x>\n",
        r"token '<x>' is used by more than one subject",
    ),
    "duplicate_ids": (
        "s.csv",
        f"{SUBJECT_HEADER}\na,face,face a,person\na,style,ink,drawing\n",
        r"duplicate subject_id 'a'",
    ),
    "empty_class_word": ("s.csv", f"{SUBJECT_HEADER}\na,face,face a,\n", r"row 1 \(subject_id 'a'\): empty class_word"),
    "empty_list": ("s.yaml", "subjects: []\n", r"the subject list is empty"),
}


@pytest.mark.parametrize("case", sorted(SUBJECT_ERRORS))
def test_bad_subject_file_is_a_one_line_error_naming_the_file(tmp_path: Path, case: str):
    name, text, expected = SUBJECT_ERRORS[case]
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_subjects(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_unknown_subject_list_and_missing_subject_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="expected one of subjects15"):
        load_subjects("subjects20")
    with pytest.raises(ConfigError, match="subject list file not found"):
        load_subjects(tmp_path / "none.yaml")


def test_user_subjects_get_default_domain_and_token_and_roundtrip(tmp_path: Path):
    rows = "my_dog_toy,object,a plush dog,toy,\nme,face,my face,person,person\n"
    path = _write(tmp_path, "s.csv", f"{SUBJECT_HEADER},domain\n{rows}")
    subjects = load_subjects(path)
    assert list(subjects.columns) == list(SUBJECT_COLUMNS)
    assert list(subjects["domain"]) == ["object", "person"]
    assert list(subjects["token"]) == ["<sks-my_dog_toy>", "<sks-me>"]
    shipped = load_subjects()
    shipped.to_csv(tmp_path / "all.csv", index=False)
    pd.testing.assert_frame_equal(load_subjects(tmp_path / "all.csv"), shipped)


# ----------------------------------------------------------------------------- synthetic images


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float64) for image in images])  # [n, size, size, 3]


def test_synthetic_images_are_deterministic_rgb_of_the_asked_size():
    for subject_id in ("face1", "object3", "style5"):
        first = synthetic_subject_images(subject_id, n=3, size=48, seed=7)
        again = synthetic_subject_images(subject_id, n=3, size=48, seed=7)
        fewer = synthetic_subject_images(subject_id, n=2, size=48, seed=7)
        assert len(first) == 3
        assert all(image.mode == "RGB" and image.size == (48, 48) for image in first)
        np.testing.assert_array_equal(_pixels(first), _pixels(again))
        # Image k does not depend on how many were asked for; the seed changes the set.
        np.testing.assert_array_equal(_pixels(first[:2]), _pixels(fewer))
        assert not np.array_equal(_pixels(first), _pixels(synthetic_subject_images(subject_id, n=3, size=48, seed=8)))


def test_synthetic_images_differ_between_subjects():
    subject_ids = list(load_subjects()["subject_id"])
    firsts = _pixels([synthetic_subject_images(subject_id, n=1)[0] for subject_id in subject_ids])
    distance = np.abs(firsts[:, None] - firsts[None, :]).mean(axis=(2, 3, 4))  # [subject, subject], 0..255
    off_diagonal = distance[~np.eye(len(subject_ids), dtype=bool)]
    assert off_diagonal.min() > 10.0


def test_synthetic_images_for_a_user_subject_table(tmp_path: Path):
    path = _write(tmp_path, "s.csv", f"{SUBJECT_HEADER}\nmy_mug,object,my mug,mug\n")
    images = synthetic_subject_images("my_mug", n=2, subjects=load_subjects(path))
    assert len(images) == 2 and images[0].size == (64, 64)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"subject_id": "face9"}, r"unknown subject_id 'face9'; expected one of face1, "),
        ({"subject_id": "face1", "n": 0}, r"n=0; expected at least 1"),
        ({"subject_id": "face1", "size": 8}, r"size=8; expected at least 16"),
    ],
)
def test_synthetic_images_reject_bad_arguments(kwargs: dict, expected: str):
    with pytest.raises(ConfigError, match=expected):
        synthetic_subject_images(**kwargs)
