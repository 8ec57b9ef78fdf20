"""The shipped prompt suite (200 labelled prompts, a 24-prompt demo list), the 15 subjects,
loaders for user-made lists, and synthetic subject images for the demo."""

from cemaps.data.suite import (
    ABSTRACTNESS_LEVELS,
    DOMAINS,
    KIND_DOMAINS,
    PROMPT_COLUMNS,
    PROMPT_LISTS,
    SUBJECT_COLUMNS,
    SUBJECT_KINDS,
    SUBJECT_LISTS,
    UNLABELLED,
    label_counts,
    load_prompts,
    load_subjects,
    synthetic_subject_images,
)

__all__ = [
    "ABSTRACTNESS_LEVELS",
    "DOMAINS",
    "KIND_DOMAINS",
    "PROMPT_COLUMNS",
    "PROMPT_LISTS",
    "SUBJECT_COLUMNS",
    "SUBJECT_KINDS",
    "SUBJECT_LISTS",
    "UNLABELLED",
    "label_counts",
    "load_prompts",
    "load_subjects",
    "synthetic_subject_images",
]
