"""Subjects in context: prompt templates with a ``{subject}`` placeholder, and how to fill it.

The unrelated-prompt suite asks what personalization breaks elsewhere; this set asks
how the personalized subject itself behaves in new contexts, the way personalization
papers evaluate (DreamBooth's 25 prompts per subject: recontextualization, accessories,
property changes, art renditions; Custom Diffusion / CustomConcept101 likewise). The
shipped list ``"in_context75"`` holds 25 templates per subject kind (face, object,
style), written for cemaps in that spirit.

The placeholder is a noun phrase that brings its own article, so one template serves
every model (:func:`subject_phrase`):

* base model: the subject's class phrase, ``"a woman"``, ``"an illustration"``;
* DreamBooth and LoRA: the identifier before the class word, ``"a sks woman"``
  (DreamBooth's "a [V] dog");
* Textual Inversion: the learned token alone, ``"<sks-face1>"`` (its "S*").

Example:
    >>> templates = load_in_context_prompts()
    >>> templates["kind"].value_counts().to_dict()
    {'face': 25, 'object': 25, 'style': 25}
    >>> fill("a photo of {subject} on a beach", subject_phrase("dreambooth", "dog", "sks"))
    'a photo of a sks dog on a beach'
    >>> fill("a photo of {subject} on a beach", subject_phrase("textual_inversion", "dog", "<cat-toy>"))
    'a photo of <cat-toy> on a beach'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from cemaps.data.suite import (
    SUBJECT_KINDS,
    _check_ids,
    _check_label,
    _check_non_empty,
    _check_rows,
    _read_table,
    _user_table_path,
    _where,
)
from cemaps.errors import ConfigError

PLACEHOLDER = "{subject}"
TEMPLATE_COLUMNS = ("template_id", "kind", "template")
IN_CONTEXT_LISTS = ("in_context75", "toyworld30")
# list name -> (package, file): the toy world's templates are written in its own language
_IN_CONTEXT_FILES = {
    "in_context75": ("cemaps.data", "in_context.csv"),
    "toyworld30": ("cemaps.toyworld", "in_context.csv"),
}
# Methods whose identifier is trained in front of the class word ("a sks dog"); Textual
# Inversion learns a word that stands for the whole phrase.
CLASS_WORD_METHODS = ("dreambooth", "lora")
PHRASE_METHODS = ("base", "textual_inversion", *CLASS_WORD_METHODS)


def load_in_context_prompts(source: str | Path = "in_context75") -> pd.DataFrame:
    """Loads the shipped in-context templates by name, or a user's CSV/YAML template file.

    A user file needs ``template_id``, ``kind`` (face/object/style) and ``template``,
    a text holding ``{subject}`` exactly once (YAML: a list of mappings or a mapping
    with key ``templates:``).

    Returns:
        One row per template, :data:`TEMPLATE_COLUMNS` first, then any further columns.

    Raises:
        ConfigError: unknown list name, missing or unparseable file, missing column,
            empty list, duplicate or empty id, unknown kind, or a template without
            exactly one ``{subject}`` or with other braces.
    """
    if isinstance(source, str) and source in IN_CONTEXT_LISTS:
        package, filename = _IN_CONTEXT_FILES[source]
        with resources.as_file(resources.files(package).joinpath(filename)) as path:
            return _validate_templates(*_read_table(path, list_key=""))
    path = _user_table_path(source, IN_CONTEXT_LISTS, "in-context prompt list")
    return _validate_templates(*_read_table(path, list_key="templates"))


def subject_phrase(method: str, class_word: str, token: str | None = None) -> str:
    """The noun phrase that replaces ``{subject}`` for one model.

    Args:
        method: ``"base"``, ``"dreambooth"``, ``"lora"`` or ``"textual_inversion"``.
        class_word: the subject's class noun (``subjects15``: ``class_word``), e.g. ``"dog"``.
        token: the identifier the personalized model was trained with (None for the base).

    Returns:
        base: ``"a dog"`` (``"an"`` before a vowel); DreamBooth/LoRA: ``"a sks dog"``;
        Textual Inversion: the token alone.

    Raises:
        ConfigError: unknown method, empty class word, or a personalized method without a token.
    """
    if method not in PHRASE_METHODS:
        raise ConfigError(f"subject_phrase: method {method!r}; expected one of {', '.join(PHRASE_METHODS)}")
    if not class_word or not class_word.strip():
        raise ConfigError("subject_phrase: empty class_word; expected a noun such as 'dog'")
    if method == "base":
        article = "an" if class_word.strip()[0].lower() in "aeiou" else "a"
        return f"{article} {class_word.strip()}"
    if not token or len(token.split()) != 1:
        raise ConfigError(f"subject_phrase: {method} needs the one-word token it was trained with, got {token!r}")
    return token if method == "textual_inversion" else f"a {token} {class_word.strip()}"


def fill(template: str, phrase: str) -> str:
    """The template with its one ``{subject}`` replaced by ``phrase`` (no other formatting)."""
    if template.count(PLACEHOLDER) != 1:
        raise ConfigError(
            f"template {template!r} holds {PLACEHOLDER} {template.count(PLACEHOLDER)} times; expected once"
        )
    return template.replace(PLACEHOLDER, phrase)


def split_template(template: str) -> tuple[str, str]:
    """(text before, text after) the placeholder, stripped: the non-subject context."""
    before, _, after = template.partition(PLACEHOLDER)
    return before.strip(), after.strip()


def _validate_templates(table: pd.DataFrame, source: str, row_word: str) -> pd.DataFrame:
    _check_rows(table, source, "in-context prompt list", TEMPLATE_COLUMNS)
    _check_ids(table, source, row_word, "template_id")
    _check_label(table, source, row_word, "template_id", "kind", SUBJECT_KINDS)
    _check_non_empty(table, source, row_word, "template_id", "template")
    for index, template in enumerate(table["template"]):
        # The rest of the text must be free of braces, so no other field can be mistaken for one.
        rest = template.replace(PLACEHOLDER, "", 1)
        if template.count(PLACEHOLDER) != 1 or "{" in rest or "}" in rest:
            where = _where(row_word, index, "template_id", table["template_id"].iloc[index])
            raise ConfigError(
                f"{source}: {where}: template {template!r} must hold {PLACEHOLDER} exactly once and no other braces"
            )
    extra = [c for c in table.columns if c not in TEMPLATE_COLUMNS]
    return table[list(TEMPLATE_COLUMNS) + extra].reset_index(drop=True)
