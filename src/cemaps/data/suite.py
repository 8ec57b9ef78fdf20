"""The shipped prompt suite and subject definitions, and loaders for user-made lists.

Every prompt carries two labels, so disruption can be compared across groups.

``abstractness`` says how the prompt asks to be drawn:

* ``concrete``: a single depicted object, being or place, described literally
  ("a red ceramic teapot on a wooden kitchen table").
* ``abstract``: an idea, emotion or quality that has to be rendered
  metaphorically ("the bittersweet feeling of nostalgia", "freedom").
* ``compositional``: several entities with explicit relations, counts,
  attributes or spatial arrangement ("two red cubes stacked on a blue sphere, to
  the right of a yellow pyramid").

``domain`` says what the prompt is about, independently of how it is drawn:
``person``, ``animal``, ``object``, ``scene``, ``style`` (an artistic medium or
style is the point of the prompt) and ``abstract_idea`` (an idea itself is the
point). Every domain appears in every abstractness class: a concrete
``abstract_idea`` prompt draws a conventional symbol literally ("an hourglass
with sand running through it"); an abstract ``person`` prompt asks for a
person's inner state ("the loneliness in a stranger's eyes").

Shipped lists: ``"suite200"`` (200 prompts written for cemaps, 11 or 12 per
abstractness x domain cell) and ``"demo24"`` (the rows with ``in_demo24`` true:
per abstractness class one prompt of every domain plus a second ``person`` and
a second ``object`` prompt, 8 per class). ``"subjects15"``: 5 faces, 5 objects
and 5 styles to personalize, each with a placeholder ``token`` for Textual
Inversion / DreamBooth. For the trained toy world (:mod:`cemaps.toyworld`):
``"toyworld72"`` (its 72-prompt suite, 4 per cell), ``"toyworld-demo24"`` (its balanced
24) and the subjects ``"toyworld"`` (a face, an object and a style).

A user list is a CSV file or a YAML file holding a list of mappings (or a
mapping with the key ``prompts:`` / ``subjects:``). Prompt lists need only
``prompt_id`` and ``text``; missing or empty labels become ``"unlabelled"``,
present ones must be valid. Columns beyond the known ones are kept.

Example:
    >>> prompts = load_prompts("demo24")
    >>> len(prompts), int((prompts["abstractness"] == "abstract").sum())
    (24, 8)
    >>> sorted(load_subjects()["kind"].value_counts().to_dict().items())
    [('face', 5), ('object', 5), ('style', 5)]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import yaml

from cemaps.errors import ConfigError

PROMPT_COLUMNS = ("prompt_id", "text", "abstractness", "domain")
SUBJECT_COLUMNS = ("subject_id", "kind", "domain", "descriptor", "class_word", "token")
ABSTRACTNESS_LEVELS = ("concrete", "abstract", "compositional")
DOMAINS = ("person", "animal", "object", "scene", "style", "abstract_idea")
SUBJECT_KINDS = ("face", "object", "style")
KIND_DOMAINS = MappingProxyType({"face": "person", "object": "object", "style": "style"})
UNLABELLED = "unlabelled"
PROMPT_LISTS = ("suite200", "demo24", "toyworld72", "toyworld-demo24")
SUBJECT_LISTS = ("subjects15", "toyworld")
# list name -> (package, file); the toy world's files are written by cemaps.toyworld.suite (a test checks them)
_SHIPPED_FILES = {
    "suite200": ("cemaps.data", "prompts.csv"),
    "demo24": ("cemaps.data", "prompts.csv"),
    "toyworld72": ("cemaps.toyworld", "prompts.csv"),
    "toyworld-demo24": ("cemaps.toyworld", "prompts.csv"),
    "subjects15": ("cemaps.data", "subjects.csv"),
    "toyworld": ("cemaps.toyworld", "subjects.csv"),
}

_TABLE_SUFFIXES = (".csv", ".yaml", ".yml")
_REQUIRED_PROMPT_COLUMNS = ("prompt_id", "text")
_REQUIRED_SUBJECT_COLUMNS = ("subject_id", "kind", "descriptor", "class_word")


# ----------------------------------------------------------------------------- loading


def load_prompts(source: str | Path = "suite200") -> pd.DataFrame:
    """Loads a shipped prompt list by name, or a user's CSV/YAML prompt file.

    Args:
        source: ``"suite200"``, ``"demo24"``, or a path to a ``.csv``/``.yaml``/``.yml`` file.

    Returns:
        One row per prompt: the :data:`PROMPT_COLUMNS` first (strings; labels are
        ``"unlabelled"`` where a file gives none), then any further columns of
        the file. The shipped lists add a boolean ``in_demo24``.

    Raises:
        ConfigError: unknown list name, missing or unparseable file, missing
            column, invalid label, duplicate id, empty text or an empty list.
    """
    if isinstance(source, str) and source in PROMPT_LISTS:
        prompts = _validate_prompts(*_read_shipped(*_SHIPPED_FILES[source]))
        prompts["in_demo24"] = _parse_flags(prompts["in_demo24"], "in_demo24")
        if source in ("demo24", "toyworld-demo24"):
            prompts = prompts[prompts["in_demo24"]].reset_index(drop=True)
        return prompts
    path = _user_table_path(source, PROMPT_LISTS, "prompt list")
    return _validate_prompts(*_read_table(path, list_key="prompts"))


def load_subjects(source: str | Path = "subjects15") -> pd.DataFrame:
    """Loads the shipped subjects or a user's CSV/YAML subject file.

    A user file needs ``subject_id``, ``kind`` (face/object/style),
    ``descriptor`` and ``class_word``; ``domain`` defaults to the kind's domain
    and ``token`` to ``"<sks-{subject_id}>"``.

    Args:
        source: ``"subjects15"`` or a path to a ``.csv``/``.yaml``/``.yml`` file.

    Returns:
        One row per subject, :data:`SUBJECT_COLUMNS` first, then any further columns.

    Raises:
        ConfigError: as :func:`load_prompts`, plus an unknown kind, a
            kind/domain mismatch, or a token with whitespace or used twice.
    """
    if isinstance(source, str) and source in SUBJECT_LISTS:
        return _validate_subjects(*_read_shipped(*_SHIPPED_FILES[source]))
    path = _user_table_path(source, SUBJECT_LISTS, "subject list")
    return _validate_subjects(*_read_table(path, list_key="subjects"))


def label_counts(prompts: pd.DataFrame) -> pd.DataFrame:
    """Counts prompts per abstractness level (rows) and domain (columns), with totals.

    Args:
        prompts: a frame with ``abstractness`` and ``domain`` columns, e.g. from
            :func:`load_prompts`.

    Returns:
        An integer table, rows ``ABSTRACTNESS_LEVELS`` (then ``"unlabelled"`` or
        other values where present) plus ``"total"``, columns ``DOMAINS``
        likewise plus ``"total"``. Empty cells are 0.
    """
    missing = [column for column in ("abstractness", "domain") if column not in prompts.columns]
    if missing:
        raise ConfigError(f"label_counts: prompts lack column(s) {', '.join(missing)}; expected abstractness, domain")
    levels = prompts["abstractness"].fillna(UNLABELLED).astype(str)
    domains = prompts["domain"].fillna(UNLABELLED).astype(str)
    counts = pd.crosstab(levels.rename("abstractness"), domains.rename("domain"))
    row_order = list(ABSTRACTNESS_LEVELS) + sorted(set(counts.index) - set(ABSTRACTNESS_LEVELS))
    column_order = list(DOMAINS) + sorted(set(counts.columns) - set(DOMAINS))
    counts = counts.reindex(index=row_order, columns=column_order, fill_value=0).astype(int)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    return counts


def _read_shipped(package: str, filename: str) -> tuple[pd.DataFrame, str, str]:
    with resources.as_file(resources.files(package).joinpath(filename)) as path:
        return _read_table(path, list_key="")


def _user_table_path(source: str | Path, names: Sequence[str], what: str) -> Path:
    path = Path(source)
    if path.suffix.lower() not in _TABLE_SUFFIXES:
        raise ConfigError(
            f"unknown {what} {str(source)!r}; expected one of {', '.join(names)} or a path to a .csv/.yaml/.yml file"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    return path


def _read_table(path: Path, list_key: str) -> tuple[pd.DataFrame, str, str]:
    """Reads a CSV or YAML list into a frame of stripped strings ("" for missing cells).

    Returns:
        (table, source name for messages, word for one entry: "row" or "item").
    """
    if path.suffix.lower() == ".csv":
        try:
            # Without index_col=False pandas silently turns surplus fields in the first data
            # row into an index; with it, that case is a ParserWarning, which we make an error.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", index_col=False)
        except pd.errors.EmptyDataError:
            table = pd.DataFrame()
        except pd.errors.ParserWarning as error:
            raise ConfigError(f"{path}: cannot parse as CSV (a row has more fields than the header)") from error
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(f"{path}: cannot parse as CSV ({_one_line(error)})") from error
        row_word = "row"
    else:
        table = _yaml_table(path, list_key)
        row_word = "item"
    table.columns = [str(column).strip() for column in table.columns]
    table = table.map(lambda value: value.strip())
    return table.reset_index(drop=True), str(path), row_word


def _yaml_table(path: Path, list_key: str) -> pd.DataFrame:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot parse as YAML ({_yaml_problem(error)})") from error
    if isinstance(document, dict) and list_key in document:
        document = document[list_key]
    if document is None:
        document = []
    if not isinstance(document, list):
        raise ConfigError(f"{path}: expected a list of mappings or a mapping with key '{list_key}:'")
    records = []
    for number, item in enumerate(document, start=1):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: item {number} is a {type(item).__name__}; expected a mapping of column: value")
        record = {}
        for key, value in item.items():
            if isinstance(value, (list, dict)):
                raise ConfigError(
                    f"{path}: item {number}, field {key!r}: expected a single value, got a {type(value).__name__}"
                )
            record[str(key)] = "" if value is None else str(value)
        records.append(record)
    return pd.DataFrame.from_records(records).fillna("").astype(str)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _yaml_problem(error: Exception) -> str:
    # PyYAML's own message spans several lines and quotes the source; its problem and mark suffice.
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return _one_line(error)


# ----------------------------------------------------------------------------- validation


def _check_rows(table: pd.DataFrame, source: str, what: str, required: Sequence[str]) -> None:
    if len(table) == 0:
        raise ConfigError(f"{source}: the {what} is empty; expected at least one entry with {', '.join(required)}")
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ConfigError(
            f"{source}: missing required column(s) {', '.join(missing)}; found {', '.join(table.columns) or 'none'}"
        )


def _where(row_word: str, index: int, id_column: str, identifier: str) -> str:
    where = f"{row_word} {index + 1}"
    return f"{where} ({id_column} {identifier!r})" if identifier else where


def _check_ids(table: pd.DataFrame, source: str, row_word: str, id_column: str) -> None:
    for index, identifier in enumerate(table[id_column]):
        if not identifier:
            raise ConfigError(f"{source}: {row_word} {index + 1}: empty {id_column}")
    duplicated = table[id_column][table[id_column].duplicated(keep=False)]
    if len(duplicated):
        identifier = duplicated.iloc[0]
        rows = [str(index + 1) for index in duplicated.index[duplicated == identifier]]
        raise ConfigError(f"{source}: duplicate {id_column} {identifier!r} at {row_word}s {', '.join(rows)}")


def _check_non_empty(table: pd.DataFrame, source: str, row_word: str, id_column: str, column: str) -> None:
    for index, value in enumerate(table[column]):
        if not value:
            where = _where(row_word, index, id_column, table[id_column].iloc[index])
            raise ConfigError(f"{source}: {where}: empty {column}")


def _check_label(
    table: pd.DataFrame,
    source: str,
    row_word: str,
    id_column: str,
    column: str,
    allowed: Sequence[str],
    also_accepted: Sequence[str] = (),
) -> None:
    for index, value in enumerate(table[column]):
        if value not in allowed and value not in also_accepted:
            where = _where(row_word, index, id_column, table[id_column].iloc[index])
            or_empty = " (or empty)" if also_accepted else ""
            raise ConfigError(
                f"{source}: {where}: unknown {column} {value!r}; expected one of {', '.join(allowed)}{or_empty}"
            )


def _ordered(table: pd.DataFrame, known: Sequence[str]) -> pd.DataFrame:
    extra = [column for column in table.columns if column not in known]
    return table[list(known) + extra].reset_index(drop=True)


def _validate_prompts(table: pd.DataFrame, source: str, row_word: str) -> pd.DataFrame:
    _check_rows(table, source, "prompt list", _REQUIRED_PROMPT_COLUMNS)
    _check_ids(table, source, row_word, "prompt_id")
    _check_non_empty(table, source, row_word, "prompt_id", "text")
    table = table.copy()
    for column, allowed in (("abstractness", ABSTRACTNESS_LEVELS), ("domain", DOMAINS)):
        if column not in table.columns:
            table[column] = UNLABELLED
        # An empty cell is an unlabelled prompt; a filled one must be a known label.
        table[column] = table[column].replace("", UNLABELLED)
        _check_label(table, source, row_word, "prompt_id", column, allowed, also_accepted=(UNLABELLED,))
    return _ordered(table, PROMPT_COLUMNS)


def _validate_subjects(table: pd.DataFrame, source: str, row_word: str) -> pd.DataFrame:
    _check_rows(table, source, "subject list", _REQUIRED_SUBJECT_COLUMNS)
    _check_ids(table, source, row_word, "subject_id")
    _check_label(table, source, row_word, "subject_id", "kind", SUBJECT_KINDS)
    for column in ("descriptor", "class_word"):
        _check_non_empty(table, source, row_word, "subject_id", column)
    table = table.copy()
    expected_domains = table["kind"].map(KIND_DOMAINS)
    if "domain" not in table.columns:
        table["domain"] = expected_domains
    table["domain"] = table["domain"].where(table["domain"] != "", expected_domains)
    for index in np.flatnonzero(table["domain"] != expected_domains):
        where = _where(row_word, int(index), "subject_id", table["subject_id"].iloc[index])
        raise ConfigError(
            f"{source}: {where}: domain {table['domain'].iloc[index]!r} does not match kind "
            f"{table['kind'].iloc[index]!r}; expected {expected_domains.iloc[index]!r}"
        )
    if "token" not in table.columns:
        table["token"] = ""
    table["token"] = table["token"].where(table["token"] != "", "<sks-" + table["subject_id"] + ">")
    for index, token in enumerate(table["token"]):
        if len(token.split()) != 1:
            where = _where(row_word, index, "subject_id", table["subject_id"].iloc[index])
            raise ConfigError(
                f"{source}: {where}: token {token!r} contains whitespace; expected one word such as '<sks-face1>'"
            )
    duplicated = table["token"][table["token"].duplicated()]
    if len(duplicated):
        raise ConfigError(
            f"{source}: token {duplicated.iloc[0]!r} is used by more than one subject; tokens must be unique"
        )
    return _ordered(table, SUBJECT_COLUMNS)


def _parse_flags(values: pd.Series, column: str) -> pd.Series:
    flags = values.str.lower().map({"true": True, "false": False})
    if flags.isna().any():
        bad = values[flags.isna()].iloc[0]
        raise ConfigError(f"shipped prompts.csv: column {column} must hold true/false, got {bad!r}")
    return flags.astype(bool)
