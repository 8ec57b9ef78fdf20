"""Report sections that a bundled world adds: a banner under the title and a section before provenance.

:func:`cemaps.report.write_report` reads this table; each entry renders '' when the results
are not its kind, so a report of another study is unchanged. A bundled world registers its
section when it is registered (:func:`cemaps.toyworld.register`); nothing is registered at
import time and the core never imports a world.

Example:
    >>> section = ReportSection("my_world", banner=lambda results: "", body=lambda results: "")
    >>> section.id, section.banner(None)
    ('my_world', '')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cemaps.errors import ConfigError

if TYPE_CHECKING:  # registering a section (the CLI does, at start) reads no results module
    from cemaps.report.results import Results


@dataclass(frozen=True)
class ReportSection:
    """One extra part of the report.

    Attributes:
        id: the section's HTML id and its link in the navigation bar (``_`` shown as a space).
        banner: ``Results -> HTML`` shown under the title, or ''.
        body: ``Results -> HTML`` of the section (a ``<section id=...>``), or '' when absent.
    """

    id: str
    banner: Callable[[Results], str]
    body: Callable[[Results], str]


_SECTIONS: dict[str, ReportSection] = {}


def register_report_section(section: ReportSection) -> None:
    """Adds ``section``; registering the same section again changes nothing.

    Raises:
        ConfigError: its id is taken by another section.
    """
    taken = _SECTIONS.get(section.id)
    if taken is not None and taken != section:
        raise ConfigError(f"report section {section.id!r} is registered already; expected a new id")
    _SECTIONS[section.id] = section


def report_sections() -> list[ReportSection]:
    """The registered sections, in registration order."""
    return list(_SECTIONS.values())
