"""Entry point of the ``slide2expr`` command; importing the command modules registers their commands."""

from __future__ import annotations

import importlib
import pkgutil

import slide2expr.featurize  # noqa: F401 - first: importing it tunes the CPU, which must precede loading torch
from slide2expr import commands
from slide2expr._app import app


def _register() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}")


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
