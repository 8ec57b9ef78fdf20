"""The house's layering: the core never imports the toy world, and finds it only through registries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cemaps
from cemaps.analysis import extensions
from cemaps.errors import ConfigError
from cemaps.models import aliases
from cemaps.report import sections

PACKAGE = Path(cemaps.__file__).parent
CORE = ("hooks", "probes", "models", "store", "analysis", "report")


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


@pytest.mark.parametrize("room", CORE)
def test_no_core_module_imports_the_toy_world(room):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in _imported_modules(path) if m.startswith("cemaps.toyworld"))
        for path in sorted((PACKAGE / room).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_the_core_registers_nothing_and_register_fills_every_table():
    code = (
        "import sys\n"
        "import cemaps.models.loading, cemaps.analysis.pipeline, cemaps.report.html\n"
        "from cemaps.models.aliases import pipeline_alias\n"
        "from cemaps.analysis.extensions import scorer_provider, result_tables\n"
        "from cemaps.report.sections import report_sections\n"
        "before = (any(m.startswith('cemaps.toyworld') for m in sys.modules), pipeline_alias('cemaps/toyworld'),\n"
        "          scorer_provider('cemaps/toyworld'), result_tables(), report_sections())\n"
        "import cemaps.toyworld\n"
        "cemaps.toyworld.register(); cemaps.toyworld.register()\n"
        "after = (pipeline_alias('toyworld').model_id, scorer_provider('toyworld').description[:28],\n"
        "         [t.name for t in result_tables()], [s.id for s in report_sections()])\n"
        "print(before); print(after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "(False, None, None, [], [])",
        "('cemaps/toyworld', \"the toy world's trained CLIP\", ['toyworld'], ['toy_world'])",
    ]


def test_an_alias_name_taken_by_another_model_is_refused(monkeypatch):
    monkeypatch.setattr(aliases, "_ALIASES", dict(aliases._ALIASES))
    mine = aliases.PipelineAlias("me/world", frozenset({"me/world", "world"}), lambda: None, "mine")
    aliases.register_pipeline_alias(mine)
    aliases.register_pipeline_alias(mine)  # the same entry again: no change
    assert aliases.pipeline_alias("world") is mine
    other = aliases.PipelineAlias("other/world", frozenset({"other/world", "world"}), lambda: None, "other")
    with pytest.raises(ConfigError, match="pipeline alias name 'world' is taken by 'me/world'"):
        aliases.register_pipeline_alias(other)
    assert aliases.pipeline_alias("other/world") is None  # nothing half-registered
    with pytest.raises(ConfigError, match="must include the model_id"):
        aliases.register_pipeline_alias(aliases.PipelineAlias("a/b", frozenset({"b"}), lambda: None, "x"))


def test_a_scorer_table_or_section_taken_by_another_entry_is_refused(monkeypatch):
    monkeypatch.setattr(extensions, "_SCORERS", dict(extensions._SCORERS))
    monkeypatch.setattr(extensions, "_TABLES", {})
    monkeypatch.setattr(sections, "_SECTIONS", {})
    with pytest.raises(ConfigError, match="CLIP scorer for base 'tiny' is taken"):
        extensions.register_scorer_provider(extensions.ScorerProvider(frozenset({"tiny"}), lambda: None, "d", "n"))
    extensions.register_result_tables(extensions.ResultTables("mine", "mine", lambda store, out: {}))
    with pytest.raises(ConfigError, match="result tables 'mine' are registered already"):
        extensions.register_result_tables(extensions.ResultTables("mine", "other", lambda store, out: {}))
    sections.register_report_section(sections.ReportSection("mine", lambda r: "", lambda r: ""))
    with pytest.raises(ConfigError, match="report section 'mine' is registered already"):
        sections.register_report_section(sections.ReportSection("mine", lambda r: "x", lambda r: ""))
    assert [t.name for t in extensions.result_tables()] == ["mine"]
    assert [s.id for s in sections.report_sections()] == ["mine"]


LAZY_PACKAGES = ("cemaps", "cemaps.analysis", "cemaps.models", "cemaps.report", "cemaps.study", "cemaps.toyworld")


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_lazy_name_is_exported_and_declared_for_type_checkers(package):
    import importlib

    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    declared: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            declared |= {a.asname or a.name for n in node.body if isinstance(n, ast.ImportFrom) for a in n.names}
    lazy = set(getattr(module, "_LAZY", {})) | set(getattr(module, "_SUBMODULES", ())) or {"register"}
    assert lazy <= set(module.__all__)
    assert declared == lazy
    assert all(getattr(module, name) is not None for name in sorted(lazy))
