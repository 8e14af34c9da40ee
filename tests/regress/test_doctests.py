"""The docstring examples of regress/ run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["regress", "regress._baselines", "regress._mil", "regress._models", "regress._stats"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0
    assert result.attempted > 0
