"""``connect``: a DuckDB connection with views over a store (and a run directory)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import duckdb

from slide2expr.contract import StoreError, check_store, register_duckdb

VIEWS_FILE = "_views.sql"
STORE_VIEWS = ("slides", "tiles", "embeddings", "embedding_files", "targets")
RUN_VIEWS = ("folds", "predictions", "metrics", "attention", "comparisons")


def sql_text(name: str) -> str:
    """The text of ``sql/<name>.sql`` as shipped with the package."""
    return files("slide2expr.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def connect(
    store: str | os.PathLike,
    *,
    run: str | os.PathLike | None = None,
    encoder: str | None = None,
    tiling: str | None = None,
    database: str = ":memory:",
) -> duckdb.DuckDBPyConnection:
    """Open DuckDB with views over ``store`` (and ``run``).

    Views: ``slides``, ``tiles``, ``embeddings`` (``embedding`` as ``FLOAT[d]``, plus ``tiling`` and ``encoder``
    columns from the folder names), ``embedding_files`` (one row per file, from the footers), ``targets`` (with a
    ``name`` column, the file stem); with ``run``: ``folds``, ``predictions``, ``metrics``, ``attention``,
    ``comparisons``; and the table macro ``embeddings_of('NAME' [, tiling := 'T'])``, one encoder's rows of
    ``embeddings`` as ``FLOAT[its d]`` whatever else the store holds. The views are those of ``sql/_views.sql``,
    the same file the plain ``duckdb`` shell reads; the paths are bound as DuckDB variables (``store``, ``run``),
    never formatted into SQL.

    Parameters
    ----------
    store
        The store directory, or its URI (``s3://bucket/prefix``: the views read the objects in place).
    run
        A run directory written by ``regress.compare``.
    encoder, tiling
        Restrict ``embeddings`` (and ``embedding_files``) to one encoder / tiling. When the store holds encoders
        whose embeddings have different dimensions, every query on ``embeddings`` that leaves the vectors alone
        works without it, and one that reads ``embedding`` raises an error naming them and the ways to pick one
        (this, ``--encoder``, or ``embeddings_of``); one query can compare encoders of the same dimension as it is.
    database
        DuckDB database (default in memory).

    Returns
    -------
    duckdb.DuckDBPyConnection
        Views over missing stages (no targets imported yet, no run) exist and raise a clear error when used.

    Examples
    --------
    >>> import tempfile
    >>> from slide2expr.contract import init_store
    >>> con = connect(init_store(tempfile.mkdtemp()), encoder="uni")
    >>> con.execute("select getvariable('encoder')").fetchall()
    [('uni',)]
    """
    root = check_store(store)
    if run is not None and not Path(run).is_dir():
        if Path(run).exists():
            raise StoreError(
                f"run directory {run} is not a directory: give the folder `slide2expr compare` wrote"
            )
        raise StoreError(f"run directory {run} does not exist: run `slide2expr compare` first")
    con = duckdb.connect(database)
    # an s3:// store is read in place through fsspec (DuckDB's httpfs extension is a download)
    register_duckdb(con, root)
    values = {
        "store": str(root.resolve()),
        "run": None if run is None else str(Path(run).resolve()),
        "encoder": encoder,
        "tiling": tiling,
    }
    for name, value in values.items():
        # variable names are fixed identifiers here; the values are bound
        con.execute(f"set variable {name} = $value", {"value": value})
    con.execute(sql_text(VIEWS_FILE.removesuffix(".sql")))
    return con
