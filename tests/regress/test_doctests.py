"""The docstring examples of every regress module run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

from slide2expr import regress

MODULES = ["slide2expr.regress"] + [
    f"slide2expr.regress.{m.name}" for m in pkgutil.iter_modules(regress.__path__) if m.name.startswith("_")
]
#: Modules whose docstrings hold no example (declarations and plumbing only).
WITHOUT_EXAMPLES = {
    "slide2expr.regress._compare",
    "slide2expr.regress._persist",
    "slide2expr.regress._plots",
    "slide2expr.regress._training",
}


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
    assert (result.attempted > 0) is (name not in WITHOUT_EXAMPLES), result
