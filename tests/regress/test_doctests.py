"""The docstring examples of regress/ run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "regress",
    "slide2expr.regress._baselines",
    "slide2expr.regress._mil",
    "slide2expr.regress._models",
    "slide2expr.regress._stats",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
    assert result.attempted > 0
