"""Every docstring example of every slide2expr module runs (doctest), so the examples cannot rot."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.test_structure import ALLOWED, MODULES, _package

#: Modules whose import needs what a test machine may lack, with the reason.
SKIP = {
    "slide2expr.cli": "the command line; its examples are the CLI tests",
}


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m not in SKIP))
def test_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples of {name} failed (run it verbose)"
    )


def test_every_package_has_examples():
    counts: dict[str, int] = {}
    finder = doctest.DocTestFinder()
    for name in MODULES:
        if name in SKIP:
            continue
        tests = finder.find(importlib.import_module(name))
        counts[_package(name)] = counts.get(_package(name), 0) + sum(len(t.examples) for t in tests)
    empty = sorted(p for p in ALLOWED if not counts.get(p))
    assert not empty, f"library packages without a single docstring example: {empty}"
