"""The named queries that scan every embedding, answered without the scan.

``pooled_slide_features`` and ``pooled_patient_features`` come from the per-slide statistics cached beside the
store (:func:`sql.pooled_features`' cache: one streaming pass the first time, a small Parquet file after), and
``nearest_tiles`` / ``nearest_tiles_to_vector`` from :func:`sql.similar_tiles`' search (exact on small stores, the
similarity index above :data:`~slide2expr.sql._similar.EXACT_MAX_TILES` tiles when faiss is installed). The
answers have the SQL's columns, order and types; the SQL stays the definition (``route=False`` in
:func:`sql.run_query`, ``--sql-only`` in ``slide2expr sql``, runs it as written) and the tests hold the two equal.

A connection's store is the ``store`` variable :func:`sql.connect` set; its ``encoder``/``tiling`` variables
restrict the pairs as they restrict the ``embeddings`` view. Object-store URIs and connections without a store
variable run the SQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from slide2expr.contract import EMBEDDINGS_DIR, is_remote

_POOLED = ("pooled_slide_features", "pooled_patient_features")
_NEAREST = ("nearest_tiles", "nearest_tiles_to_vector")
ROUTED_QUERIES = _POOLED + _NEAREST
#: pooled_patient_features' patient of a slide without one: the TCGA barcode's, as the query's regexp reads it.
_TCGA_PATIENT = re.compile(r"^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})")


def _variable(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    try:
        return con.execute(f"select getvariable('{name}')").fetchall()[0][0]  # name: a fixed identifier
    except duckdb.Error:
        return None


def _pairs(store: Path, *, encoder: str | None, tiling: str | None) -> list[tuple[str, str]]:
    """The (tiling, encoder) pairs of the store's embeddings that hold files, restricted as the view is."""
    root = store / EMBEDDINGS_DIR
    pairs = sorted((p.parent.name, p.name) for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []
    return [
        (t, e)
        for t, e in pairs
        if (encoder is None or e == encoder)
        and (tiling is None or t == tiling)
        and any(f.suffix == ".parquet" and not f.name.startswith(".") for f in (root / t / e).iterdir())
    ]


def routed_query(con: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> pa.Table | None:
    """The answer of named query ``name`` without scanning the embeddings, or ``None`` when it is not routed (not
    one of :data:`ROUTED_QUERIES`, an object-store store, a connection :func:`sql.connect` did not open)."""
    if name not in ROUTED_QUERIES:
        return None
    store = _variable(con, "store")
    if store is None or is_remote(store) or not Path(store).is_dir():
        return None
    pairs = _pairs(Path(store), encoder=_variable(con, "encoder"), tiling=_variable(con, "tiling"))
    if not pairs:
        return None  # no embeddings to scan: the SQL answers as it does (or says what is missing)
    if name in _POOLED:
        return _pooled(con, Path(store), pairs, by_patient=name == "pooled_patient_features")
    if int(params["k"]) < 1:
        return NEAREST_SCHEMA.empty_table()  # as the SQL's rank <= k
    if name == "nearest_tiles":
        return _nearest_tile(Path(store), pairs, params["slide_id"], int(params["tile_id"]), int(params["k"]))
    return _nearest_vector(Path(store), pairs, params["vector"], params["encoder"], int(params["k"]))


# ---- pooled features --------------------------------------------------------------------------------------------


def _repeat(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def _float_lists(m: np.ndarray) -> pa.Array:
    m = np.ascontiguousarray(m, dtype=np.float32)
    offsets = np.arange(0, m.size + 1, max(m.shape[1], 1), dtype=np.int32)[: len(m) + 1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(m.ravel(), pa.float32()))


def _pooled(con, store: Path, pairs, *, by_patient: bool) -> pa.Table:
    from slide2expr.sql._pooled import _matrix, slide_statistics
    from slide2expr.sql._similar import list_embedding_files

    # the patient of a slide, as the query says it: the slides view's patient_id, else the TCGA barcode's
    patient_of = dict(con.execute("select slide_id, patient_id from slides").fetchall()) if by_patient else {}
    parts = []
    for tiling, encoder in pairs:
        files = list_embedding_files(store, encoder=encoder, tiling=tiling)
        table = slide_statistics(files)
        d = files.dim
        sids = table.column("slide_id").to_pylist()
        n = table.column("n_tiles").to_numpy()
        mean, mx = _matrix(table.column("mean"), d), _matrix(table.column("max"), d)
        if not by_patient:
            parts.append(
                pa.table(
                    {
                        "slide_id": pa.array(sids, pa.string()),
                        "tiling": _repeat(tiling, len(sids)),
                        "encoder": _repeat(encoder, len(sids)),
                        "n_tiles": pa.array(n, pa.int64()),
                        "mean_embedding": _float_lists(mean),
                        "max_embedding": _float_lists(mx),
                    }
                )
            )
            continue
        # the query joins embeddings to slides: a file without a slide row is not pooled
        keep = [i for i, s in enumerate(sids) if s in patient_of]
        sids, n, mean, mx = [sids[i] for i in keep], n[keep], mean[keep], mx[keep]
        pids = [patient_of[s] or _barcode_patient(s) for s in sids]
        keys = sorted(set(pids), key=lambda p: (p is None, p or ""))
        rows = [[i for i, p in enumerate(pids) if p == key] for key in keys]
        counts = np.array([n[r].sum() for r in rows], np.int64)
        pmean = np.stack([(mean[r] * n[r, None]).sum(axis=0) / n[r].sum() for r in rows])
        pmax = np.stack([mx[r].max(axis=0) for r in rows])
        parts.append(
            pa.table(
                {
                    "patient_id": pa.array(keys, pa.string()),
                    "tiling": _repeat(tiling, len(keys)),
                    "encoder": _repeat(encoder, len(keys)),
                    "n_slides": pa.array([len(r) for r in rows], pa.int64()),
                    "n_tiles": pa.array(counts, pa.int64()),
                    "mean_embedding": _float_lists(pmean),
                    "max_embedding": _float_lists(pmax),
                }
            )
        )
    key = "patient_id" if by_patient else "slide_id"
    out = pa.concat_tables(parts)
    return out.sort_by([(key, "ascending"), ("tiling", "ascending"), ("encoder", "ascending")])


def _barcode_patient(slide_id: str) -> str | None:
    m = _TCGA_PATIENT.match(slide_id)
    return m.group(1) if m else None


# ---- nearest tiles ----------------------------------------------------------------------------------------------

NEAREST_SCHEMA = pa.schema(
    [
        ("tiling", pa.string()),
        ("encoder", pa.string()),
        ("rank", pa.int64()),
        ("slide_id", pa.string()),
        ("tile_id", pa.int32()),
        ("x", pa.int64()),
        ("y", pa.int64()),
        ("similarity", pa.float32()),
    ]
)


def _search_method() -> str:
    """``auto`` (the index above EXACT_MAX_TILES) when faiss is installed, else the exact streaming pass."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "exact"
    return "auto"


def _as_nearest(hits: pa.Table, tiling: str, encoder: str) -> pa.Table:
    n = hits.num_rows
    return pa.table(
        {
            "tiling": _repeat(tiling, n),
            "encoder": _repeat(encoder, n),
            "rank": hits.column("rank").cast(pa.int64()),
            "slide_id": hits.column("slide_id"),
            "tile_id": hits.column("tile_id"),
            "x": hits.column("x"),
            "y": hits.column("y"),
            "similarity": hits.column("score"),
        },
        schema=NEAREST_SCHEMA,
    )


def _nearest_tile(store: Path, pairs, slide_id: str, tile_id: int, k: int) -> pa.Table:
    from slide2expr.sql._similar import similar_tiles

    parts = []
    for tiling, encoder in pairs:
        path = store / EMBEDDINGS_DIR / tiling / encoder / f"{slide_id}.parquet"
        if not path.is_file():
            continue
        ids = _tile_ids(path)
        if tile_id not in ids:
            continue
        hits = similar_tiles(
            store, slide_id=slide_id, tile_id=tile_id, k=k, encoder=encoder, tiling=tiling,
            method=_search_method(),
        )  # fmt: skip
        parts.append(_as_nearest(hits, tiling, encoder))
    return pa.concat_tables(parts) if parts else NEAREST_SCHEMA.empty_table()


def _tile_ids(path: Path) -> set[int]:
    import pyarrow.parquet as pq

    return set(pq.read_table(path, columns=["tile_id"]).column(0).to_numpy().tolist())


def _nearest_vector(store: Path, pairs, vector, encoder: str, k: int) -> pa.Table:
    from slide2expr.sql._similar import similar_to_vector

    parts = []
    for tiling, enc in pairs:
        if enc != encoder:
            continue
        hits = similar_to_vector(
            store, np.asarray(vector, np.float32), k=k, encoder=enc, tiling=tiling, method=_search_method()
        )
        parts.append(_as_nearest(hits, tiling, enc))
    return pa.concat_tables(parts) if parts else NEAREST_SCHEMA.empty_table()
