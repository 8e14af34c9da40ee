"""The docs site builds with ``mkdocs build --strict`` (no broken link, no missing reference), and its generated
parts cover the code: every schema column is explained, every command is in the CLI reference."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    pages = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert {"getting-started", "tutorial", "tcga", "encoders", "sql-cookbook", "outputs", "scaling", "benchmarks",
            "cli", "api"} <= pages  # fmt: skip
    outputs = (tmp_path / "site" / "outputs" / "index.html").read_text()
    assert "pearson_r" in outputs and "tissue_frac" in outputs and "generated:" not in outputs


def test_every_schema_column_is_explained():
    hooks = _hooks()
    for name in hooks.COLUMN_DOCS:
        columns = [f.name for f in hooks.schema_of(name)]
        described = hooks.COLUMN_DOCS[name]
        assert set(columns) == set(described), (name, set(columns) ^ set(described))
        assert all(described[c].strip() for c in columns)


def test_every_schema_of_the_contract_has_a_page_section():
    from slide2expr import contract

    hooks = _hooks()
    schemas = {n for n in dir(contract) if n.endswith("_SCHEMA")}
    assert schemas <= set(hooks.COLUMN_DOCS)
    outputs = (ROOT / "docs" / "outputs.md").read_text()
    for name in hooks.COLUMN_DOCS:
        assert f"<!-- generated: schema {name} -->" in outputs


def test_cli_reference_lists_every_command():
    from typer.main import get_command

    from slide2expr.cli import app

    text = _hooks().cli_reference()

    def walk(group, prefix=()):
        for name, cmd in group.commands.items():
            yield (*prefix, name), cmd

            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*prefix, name))

    for path, cmd in walk(get_command(app)):
        if not hasattr(cmd, "commands"):
            assert f"### `slide2expr {' '.join(path)}`" in text
            for p in cmd.params:
                if p.param_type_name == "option" and not p.hidden:
                    assert f"`{p.opts[0]}`" in text


def test_unknown_marker_is_an_error():
    with pytest.raises(ValueError, match="unknown docs marker"):
        _hooks().render_markers("<!-- generated: nope -->")
