"""The shipped prompt suite (200 labelled prompts, a 24-prompt demo list), the 15 subjects,
loaders for user-made lists, synthetic subject images for the demo, and the in-context
templates (``{subject}`` placeholders) for subjects in context."""

from cemaps.data.in_context import IN_CONTEXT_LISTS, fill, load_in_context_prompts, subject_phrase
from cemaps.data.suite import (
    ABSTRACTNESS_LEVELS,
    DOMAINS,
    KIND_DOMAINS,
    PROMPT_LISTS,
    SUBJECT_KINDS,
    SUBJECT_LISTS,
    UNLABELLED,
    label_counts,
    load_prompts,
    load_subjects,
)
from cemaps.data.synthetic_images import synthetic_subject_images

__all__ = [
    "ABSTRACTNESS_LEVELS",
    "IN_CONTEXT_LISTS",
    "fill",
    "load_in_context_prompts",
    "subject_phrase",
    "DOMAINS",
    "KIND_DOMAINS",
    "PROMPT_LISTS",
    "SUBJECT_KINDS",
    "SUBJECT_LISTS",
    "UNLABELLED",
    "label_counts",
    "load_prompts",
    "load_subjects",
    "synthetic_subject_images",
]
