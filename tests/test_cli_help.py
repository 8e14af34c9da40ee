"""Small habits of the command line: real type names in every --help, --version, completion, whole tables off a
terminal, and ``sql --shell``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from slide2expr import __version__
from slide2expr.cli import app

SLIDE2EXPR = Path(sys.executable).with_name("slide2expr")
#: Python annotations as Typer prints them (``<int>``, ``<list[Path]>``, ``<bool>``), which help must not show.
PYTHON_TYPE = re.compile(r"<(int|float|str|bool|path|file|dir|list\[[^>]*\]|[a-z]+ range)>")


def _paths(group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _paths(cmd, (*prefix, name))


COMMANDS = [()] + list(_paths(get_command(app)))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "slide2expr")
def test_help_names_types_as_click_does(path):
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert not PYTHON_TYPE.search(res.output), res.output
    if path == ("sql",):
        assert re.search(r"--store|store\s+PATH", res.output) and "INTEGER" in res.output
        assert "[table|csv|json|parquet]" in res.output
    if path == ():
        assert "--install-completion" in res.output and "--version" in res.output


def test_version_flag_and_command():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"slide2expr {__version__}"
    res = CliRunner().invoke(app, ["version"])
    assert res.exit_code == 0 and res.output.startswith(f"slide2expr {__version__}")


def _run(*args, input=None, env=None):
    base = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [str(SLIDE2EXPR), *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )


def test_bash_completion_completes_commands():
    res = _run(
        env={"_SLIDE2EXPR_COMPLETE": "complete_bash", "COMP_WORDS": "slide2expr feat", "COMP_CWORD": "1"}
    )
    assert res.returncode == 0 and res.stdout.split() == ["featurize"], res


def test_tables_off_a_terminal_keep_whole_rows(fake_store):
    wide = ", ".join(f"'{'x' * 30}' as a_rather_long_column_name_{i}" for i in range(4))
    res = _run("sql", fake_store.root, "-q", f"select slide_id, {wide} from slides limit 2")
    assert res.returncode == 0, res.stderr
    assert "a_rather_long_column_name_3" in res.stdout and "x" * 30 in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) > 120


def test_sql_shell_opens_duckdb_with_the_views(fake_store, tmp_path):
    from slide2expr import sql

    n = sql.connect(fake_store.root).execute("select count(*) from tiles").fetchone()[0]
    res = _run("sql", fake_store.root, "--shell", input="select count(*) as n from tiles;\n")
    assert res.returncode == 0, res.stderr
    assert f" {n} " in res.stdout
    res = _run("sql", tmp_path / "nope", "--shell")
    assert res.returncode == 2 and "does not exist" in res.stderr
