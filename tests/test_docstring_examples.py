"""Every docstring example in ``src/cemaps`` runs as a test, so an example that drifts from the code fails.

One test per module (``doctest`` from the standard library, the same finder pytest's
``--doctest-modules`` uses); examples marked ``# doctest: +SKIP`` need a GPU, a download or
minutes of work and are skipped by ``doctest`` itself.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import cemaps

MODULES = sorted(m.name for m in pkgutil.walk_packages(cemaps.__path__, "cemaps.") if not m.name.endswith("__main__"))


def test_modules_are_found():
    assert "cemaps.hooks.capture" in MODULES and len(MODULES) > 50


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} docstring examples failed in {name}"
