"""Named queries: ``sql/<name>.sql`` files with a header comment, run with bound ``$parameters``."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import duckdb
import pyarrow as pa

from slide2expr.sql._connect import connect

_HEADER_KEY = re.compile(r"^--\s*(purpose|grain|params|columns):\s*(.*)$")
_PARAM = re.compile(r"\$(\w+)\s+([A-Za-z]+(?:\[\])?):\s*(.*)")
_BODY_PARAM = re.compile(r"\$([A-Za-z_]\w*)")


class QueryError(ValueError):
    """A named query that does not exist, or parameters that do not match its header."""


@dataclass(frozen=True)
class QueryInfo:
    """A named query and what its header says about it.

    ``params`` maps each ``$name`` to ``(type, description)``, in header order.
    """

    name: str
    purpose: str
    grain: str
    columns: str
    params: dict[str, tuple[str, str]] = field(default_factory=dict)
    text: str = ""


def _strip_sql_comments_and_strings(text: str) -> str:
    text = re.sub(r"'(?:[^']|'')*'", "''", text)
    return re.sub(r"--[^\n]*", "", text)


def parse_header(name: str, text: str) -> QueryInfo:
    """Read the leading ``--`` comment block of a query file (purpose, grain, params, columns)."""
    fields: dict[str, list[str]] = {"purpose": [], "grain": [], "params": [], "columns": []}
    current = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        m = _HEADER_KEY.match(line)
        if m:
            current = m.group(1)
            fields[current].append(m.group(2).strip())
        elif current in ("params", "columns") and line[2:].startswith("  "):
            fields[current].append(line[2:].strip())
        else:
            current = None
    missing = [k for k in ("purpose", "grain", "params", "columns") if not fields[k]]
    if missing:
        raise QueryError(
            f"query file {name}.sql lacks header line(s): {', '.join(f'-- {k}:' for k in missing)}"
        )
    params = {}
    for entry in fields["params"]:
        m = _PARAM.match(entry)
        if m:
            params[m.group(1)] = (m.group(2).lower(), m.group(3).strip())
    return QueryInfo(
        name=name,
        purpose=" ".join(fields["purpose"]),
        grain=" ".join(fields["grain"]),
        columns=" ".join(fields["columns"]),
        params=params,
        text=text,
    )


def body_parameters(text: str) -> set[str]:
    """The ``$names`` a query's SQL body uses (comments and string literals ignored)."""
    return set(_BODY_PARAM.findall(_strip_sql_comments_and_strings(text)))


def list_queries() -> dict[str, QueryInfo]:
    """Every named query shipped in ``sql/*.sql`` (files starting with ``_`` are setup, not queries), by name."""
    out = {}
    for entry in sorted(files("slide2expr.sql").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".sql") and not entry.name.startswith("_"):
            name = entry.name[: -len(".sql")]
            out[name] = parse_header(name, entry.read_text(encoding="utf-8"))
    return out


def get_query(name: str) -> QueryInfo:
    """The named query ``name``, or a :class:`QueryError` that lists the known ones."""
    queries = list_queries()
    if name not in queries:
        raise QueryError(f"no query named {name!r}; known queries: {', '.join(queries)}")
    return queries[name]


def coerce_param(value: Any, type_: str, *, query: str, name: str) -> Any:
    """Convert a parameter value (e.g. a command-line string) to the type its header declares."""
    if not isinstance(value, str):
        return value
    try:
        if type_ in ("integer", "bigint", "int"):
            return int(value)
        if type_ in ("double", "float", "real"):
            return float(value)
        if type_.endswith("[]"):
            text = value.strip()
            items = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            return [float(v) for v in items]
        if type_ == "boolean":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
    except (ValueError, TypeError) as exc:
        raise QueryError(f"query {query}: parameter ${name} must be {type_}, got {value!r}") from exc
    return value


def check_params(info: QueryInfo, params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``params`` against the header: name missing and extra ones; coerce strings to declared types."""
    params = dict(params or {})
    declared = info.params
    missing = [p for p in declared if p not in params]
    extra = [p for p in params if p not in declared]
    takes = ", ".join(f"${p} ({t}: {d})" for p, (t, d) in declared.items()) or "no parameters"
    if missing:
        raise QueryError(
            f"query {info.name} needs parameter(s) {', '.join('$' + p for p in missing)}; it takes {takes}"
        )
    if extra:
        raise QueryError(
            f"query {info.name} has no parameter(s) {', '.join('$' + p for p in extra)}; it takes {takes}"
        )
    return {k: coerce_param(v, declared[k][0], query=info.name, name=k) for k, v in params.items()}


def _as_connection(
    source: duckdb.DuckDBPyConnection | str | os.PathLike, run: str | os.PathLike | None
) -> duckdb.DuckDBPyConnection:
    if isinstance(source, duckdb.DuckDBPyConnection):
        if run is not None:
            raise QueryError("run= applies when a store path is given; pass run= to sql.connect instead")
        return source
    return connect(source, run=run)


def run_query(
    source: duckdb.DuckDBPyConnection | str | os.PathLike,
    name: str,
    *,
    params: dict[str, Any] | None = None,
    run: str | os.PathLike | None = None,
    route: bool = True,
) -> pa.Table:
    """Run the named query ``sql/<name>.sql`` with bound ``params``; return its result as an Arrow table.

    Parameters
    ----------
    source
        A connection from :func:`sql.connect`, or a store path (then ``run`` may name a run directory).
    name
        The query's file stem (see :func:`list_queries`).
    params
        Values for the query's ``$parameters``: all of them, and no others. Strings are converted to the types
        the header declares (so command-line values work); values are always bound, never formatted into SQL.
    route
        The queries that scan every embedding (``pooled_slide_features``, ``pooled_patient_features``,
        ``nearest_tiles``, ``nearest_tiles_to_vector``) are answered, with the same columns, from the pooled
        statistics cached beside a local store and from the similarity search (the index on large stores), not
        by the scan; ``False`` runs their SQL as written.
    """
    info = get_query(name)
    values = check_params(info, params)
    con = _as_connection(source, run)
    if route:
        from slide2expr.sql._routed import routed_query

        routed = routed_query(con, name, values)
        if routed is not None:
            return routed
    return con.sql(info.text, params=values or None).to_arrow_table()


def run_sql(
    source: duckdb.DuckDBPyConnection | str | os.PathLike,
    query: str,
    *,
    params: dict[str, Any] | None = None,
    run: str | os.PathLike | None = None,
) -> pa.Table:
    """Run ad-hoc SQL against the views (``params`` bound as ``$name``); return an Arrow table."""
    con = _as_connection(source, run)
    rel = con.sql(query, params=params or None)
    return pa.table({}) if rel is None else rel.to_arrow_table()
