"""``slide2expr sql``: run a named query (``sql/<name>.sql``) or ad-hoc SQL against a store's views."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import app, fail, reported
from slide2expr.contract import store_path


class Format(str, enum.Enum):
    """How a result is shown or written."""

    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


#: Characters of a text cell shown in ``--format table``.
CELL_WIDTH = 60
#: Values of a list cell (an embedding) shown in ``--format table``.
LIST_SHOWN = 4


def _cell(value, *, width: int = CELL_WIDTH) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:LIST_SHOWN])
        return f"[{shown}{', …' if len(value) > LIST_SHOWN else ''}] ({len(value)} values)"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(table, *, title: str, limit: int) -> None:
    """A rich table of the first ``limit`` rows (``0``: all); values and names shown verbatim, never as markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    shown = table.num_rows if limit == 0 else min(limit, table.num_rows)
    out = Table(
        title=Text(title),
        caption=f"{table.num_rows} row(s)" + (f", first {shown} shown" if table.num_rows > shown else ""),
    )
    for name in table.column_names:
        out.add_column(Text(name), overflow="fold")
    for row in table.slice(0, shown).to_pylist():
        out.add_row(*(Text(_cell(v)) for v in row.values()))
    Console().print(out)


def _json_ready(table):
    """Arrow → list of dicts with JSON-able values (timestamps as ISO text)."""
    import datetime

    def conv(v):
        if isinstance(v, (datetime.datetime, datetime.date)):
            return v.isoformat()
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return [{k: conv(v) for k, v in row.items()} for row in table.to_pylist()]


def _flat_for_csv(table):
    """Lists (embeddings) become JSON text: CSV has no list type."""
    import json

    import pyarrow as pa

    cols = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            cols[name] = pa.array(
                [None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string()
            )
        else:
            cols[name] = col
    return pa.table(cols)


def write_result(table, *, fmt: Format, out: Path | None, title: str, limit: int) -> None:
    """Print or write an Arrow table as a rich table (first ``limit`` rows, ``0``: all), CSV, JSON or Parquet."""
    import io
    import json

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt is Format.table:
        if out is not None:
            raise fail("--format table prints to the terminal; use --format csv|json|parquet with --out")
        _print_table(table, title=title, limit=limit)
    elif fmt is Format.parquet:
        if out is None:
            raise fail("--format parquet needs --out FILE")
        pq.write_table(table, out)
    elif fmt is Format.csv:
        buf = io.BytesIO()
        pacsv.write_csv(_flat_for_csv(table), buf)
        data = buf.getvalue().decode()
        if out is None:
            typer.echo(data, nl=False)
        else:
            out.write_text(data)
    else:
        data = json.dumps(_json_ready(table), indent=1, allow_nan=True)
        if out is None:
            typer.echo(data)
        else:
            out.write_text(data + "\n")


def _list(as_json: bool) -> None:
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from slide2expr.sql import list_queries

    queries = list_queries()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    n: {
                        "purpose": q.purpose,
                        "grain": q.grain,
                        "params": {p: t for p, (t, _) in q.params.items()},
                    }
                    for n, q in queries.items()
                },
                indent=1,
            )
        )
        return
    table = Table(
        title="named queries (sql/<name>.sql)", caption="run: slide2expr sql STORE NAME --param k=v …"
    )
    for col in ("name", "purpose", "parameters"):
        table.add_column(col, overflow="fold")
    for name, q in queries.items():
        params = " ".join(f"{p}:{t}" for p, (t, _) in q.params.items()) or "—"
        table.add_row(Text(name), Text(q.purpose), Text(params))
    Console().print(table)


def _params(items: list[str]) -> dict[str, str]:
    """``--param NAME=VALUE`` options as a dict (the values are typed and checked by the query's header)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--param {item!r}: write it as NAME=VALUE")
        if key in params:
            raise fail(f"--param {key} given twice")
        params[key] = value
    return params


def _literal(text: str) -> str:
    """A SQL string literal for the duckdb shell's ``set variable`` (the shell binds no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def shell_command(
    store: Path, *, run: Path | None = None, encoder: str | None = None, tiling: str | None = None
) -> list[str]:
    """The ``duckdb`` shell command line that opens with the views of :func:`slide2expr.sql.connect` loaded.

    Examples
    --------
    >>> cmd = shell_command(Path("/data/S"), encoder="uni")
    >>> cmd[1:5]
    ['-cmd', "set variable store = '/data/S'", '-cmd', "set variable encoder = 'uni'"]
    >>> cmd[-1].startswith(".read ") and cmd[-1].endswith("_views.sql")
    True
    """
    import shutil
    import sys
    from importlib.resources import files

    exe = shutil.which("duckdb") or shutil.which("duckdb", path=str(Path(sys.executable).parent))
    if exe is None:
        raise fail("no duckdb shell on PATH: pip install duckdb-cli (the dev extra installs it)")
    values = {
        "store": store.resolve(),
        "run": run.resolve() if run else None,
        "encoder": encoder,
        "tiling": tiling,
    }
    cmd = [exe]
    for key, value in values.items():
        if value is not None:
            cmd += ["-cmd", f"set variable {key} = {_literal(str(value))}"]
    return [*cmd, "-cmd", f".read {files('slide2expr.sql').joinpath('_views.sql')}"]


@app.command(name="sql")
def sql_command(
    store: Annotated[
        Path | None,
        typer.Argument(parser=store_path, help="The store: a directory or s3://bucket/prefix."),
    ] = None,
    name: Annotated[str | None, typer.Argument(help="A named query (see --list).")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", metavar="NAME=VALUE", help="A query parameter as NAME=VALUE (repeatable)."
        ),
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Ad-hoc SQL over the views instead of a name.")
    ] = None,
    run: Annotated[
        Path | None, typer.Option("--run", help="A run directory: adds predictions, metrics, attention …")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option("--encoder", help="Restrict the embeddings view to one encoder.")
    ] = None,
    tiling: Annotated[
        str | None, typer.Option("--tiling", help="Restrict the embeddings view to one tiling.")
    ] = None,
    sql_only: Annotated[
        bool,
        typer.Option(
            "--sql-only",
            help="Run a named query's SQL as written. Without it pooled_slide_features, pooled_patient_features, "
            "nearest_tiles and nearest_tiles_to_vector are answered, with the same columns, from the pooled "
            "statistics cached beside the store and the similarity search, not by scanning every embedding.",
        ),
    ] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="List the named queries with their purpose and parameters.")
    ] = False,
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="How to show or write the result.")
    ] = Format.table,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result to FILE.")] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=0,
            help="Rows shown by --format table (0: every row; csv, json and parquet hold all).",
        ),
    ] = 50,
    shell: Annotated[
        bool,
        typer.Option(
            "--shell",
            help="Open the duckdb shell with the views loaded (needs duckdb-cli, in the dev extra); SQL on stdin "
            "runs without a prompt.",
        ),
    ] = False,
) -> None:
    r"""Query a store with SQL: a named query (`slide2expr sql STORE cohort_summary`) or `-q "select …"`.

    Views: slides, tiles, embeddings (embedding FLOAT\[d]), embedding_files, targets; with --run: folds,
    predictions, metrics, attention, comparisons. Parameters are bound, never formatted into the SQL.
    `--shell` opens the duckdb shell with the same views, from any folder.
    """
    import duckdb

    from slide2expr.contract import StoreError
    from slide2expr.sql import QueryError, connect, get_query, list_queries, run_query, run_sql

    if list_:
        _list(as_json=fmt is Format.json)
        return
    if store is None:
        raise fail(
            "give a STORE (and a query NAME or -q SQL); `slide2expr sql --list` lists the named queries"
        )
    if shell and (name is not None or query is not None):
        raise fail("--shell opens the duckdb shell: give no query NAME or -q with it (type queries there)")
    if (name is None) == (query is None) and not shell:
        raise fail(
            "give either a query NAME or -q SQL (not both); named queries: " + ", ".join(list_queries())
        )
    if shell:
        import subprocess

        with reported(StoreError):
            connect(
                store, run=run, encoder=encoder, tiling=tiling
            ).close()  # the same checks, one-line errors
        raise typer.Exit(
            subprocess.run(shell_command(store, run=run, encoder=encoder, tiling=tiling)).returncode
        )
    params = _params(param or [])
    with reported(QueryError, StoreError):
        if name is not None:
            get_query(name)  # an unknown name lists the known ones before the store is opened
        try:
            con = connect(store, run=run, encoder=encoder, tiling=tiling)
            if name is not None:
                result, title = run_query(con, name, params=params, route=not sql_only), name
            else:
                result, title = run_sql(con, query, params=params or None), "query"
        except duckdb.Error as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from None
    write_result(result, fmt=fmt, out=out, title=title, limit=limit)
