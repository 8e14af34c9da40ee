"""Every SQL recipe of the cookbook runs, in Python and in the plain duckdb shell from any folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from slide2expr import sql

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sql-cookbook.md"
RECIPES = re.findall(r"^```sql\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)


def test_the_cookbook_has_at_least_ten_recipes():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"recipe{i}" for i in range(len(RECIPES))])
def test_recipe_runs_and_answers(cookbook, recipe):
    con = sql.connect(cookbook.store, run=cookbook.run)
    rows = con.execute(recipe).fetchall()
    assert len(rows) >= 1, recipe


def _duckdb() -> str:
    exe = Path(sys.executable).with_name("duckdb")
    if not exe.exists():
        pytest.skip("no duckdb shell in the venv (pip install duckdb-cli; the dev extra has it)")
    return str(exe)


def test_the_shell_recipe_works_from_any_folder(cookbook, tmp_path):
    views = subprocess.run(
        [sys.executable, "-c", "import slide2expr.sql, pathlib; "
         "print(pathlib.Path(slide2expr.sql.__file__).with_name('_views.sql'))"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    failed = RECIPES[1]
    res = subprocess.run(
        [_duckdb(), "-csv", "-cmd", f"set variable store = '{cookbook.store}'",
         "-cmd", f"set variable run = '{cookbook.run}'", "-cmd", f".read {views}"],
        input=failed, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "failed" in res.stdout
