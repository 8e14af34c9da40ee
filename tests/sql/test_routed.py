"""The named queries that scan every embedding answer from the pooled cache and the similarity search with the
SQL's own result: same columns, types, rows and order (scores to float32 rounding)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from slide2expr import sql
from slide2expr.contract import EMBEDDINGS_DIR
from slide2expr.sql._routed import ROUTED_QUERIES
from tests._fakestore import ENCODER, TILING, make_fake_store


@pytest.fixture(scope="module", params=["float32", "float16"])
def store(request, tmp_path_factory):
    fs = make_fake_store(
        tmp_path_factory.mktemp(f"routed-{request.param}"), n_patients=6, dim=16, dtype=request.param, seed=5
    )
    # a second encoder of the same dimension: every query sees both pairs, as the embeddings view does
    folder = fs.root / EMBEDDINGS_DIR / TILING
    shutil.copytree(folder / ENCODER, folder / "other-encoder")
    return fs


def _queries(fs):
    return [
        ("pooled_slide_features", {}),
        ("pooled_patient_features", {}),
        ("nearest_tiles", {"slide_id": fs.slides[2][0], "tile_id": 5, "k": 7}),
        ("nearest_tiles", {"slide_id": fs.slides[0][0], "tile_id": 10_000, "k": 3}),  # no such tile: no rows
        (
            "nearest_tiles_to_vector",
            {"vector": [float(v) for v in np.linspace(-1, 1, 16)], "encoder": ENCODER, "k": 4},
        ),
    ]


def assert_same(routed, scanned):
    assert routed.schema == scanned.schema
    assert routed.num_rows == scanned.num_rows
    for name in routed.column_names:
        a, b = routed.column(name).to_pylist(), scanned.column(name).to_pylist()
        if name in ("similarity", "mean_embedding", "max_embedding"):
            np.testing.assert_allclose(np.array(a, float), np.array(b, float), rtol=1e-5, atol=1e-6)
        else:
            assert a == b, name


@pytest.mark.parametrize("i", range(5))
def test_routed_equals_the_sql(store, i):
    name, params = _queries(store)[i]
    con = sql.connect(store.root)
    assert_same(sql.run_query(con, name, params=params), sql.run_query(con, name, params=params, route=False))


def test_routed_through_the_index_equals_the_sql(store, monkeypatch):
    pytest.importorskip("faiss")
    import slide2expr.sql._similar as sim

    monkeypatch.setattr(sim, "EXACT_MAX_TILES", 10)  # this small store goes through the index
    con = sql.connect(store.root)
    for name, params in _queries(store)[2:]:
        assert_same(
            sql.run_query(con, name, params=params), sql.run_query(con, name, params=params, route=False)
        )
    assert (store.root / sim.INDEX_DIR / TILING / ENCODER).is_dir()
    shutil.rmtree(store.root / sim.INDEX_DIR)


def test_routing_keeps_the_connections_restriction(store):
    con = sql.connect(store.root, encoder="other-encoder")
    for name, params in _queries(store)[:3]:
        routed = sql.run_query(con, name, params=params)
        assert set(routed.column("encoder").to_pylist()) == {"other-encoder"}
        assert_same(routed, sql.run_query(con, name, params=params, route=False))


def test_pooled_queries_read_the_cache_after_the_first_pass(store, monkeypatch):
    import slide2expr.sql._pooled as pooled

    con = sql.connect(store.root)
    first = sql.run_query(con, "pooled_patient_features")

    def no_pass(*a, **k):
        raise AssertionError("the cached statistics should have answered")

    monkeypatch.setattr(pooled, "_slide_stats", no_pass)
    assert_same(sql.run_query(con, "pooled_patient_features"), first)


def test_slides_without_a_patient_or_a_slide_row_pool_as_the_sql_does(tmp_path):
    """A slide whose row has no patient id and no TCGA barcode pools as the SQL's null patient (last); an
    embeddings file without a slide row is left out, as the query's join leaves it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slide2expr.contract import SLIDES_SCHEMA, slide_path, write_table_atomic

    fs = make_fake_store(tmp_path / "s", n_patients=3, dim=8)
    folder = fs.root / EMBEDDINGS_DIR / TILING / ENCODER
    src = pq.ParquetFile(folder / f"{fs.slides[0][0]}.parquet")
    for sid in ("slide_x", "slide_y"):
        t = src.read()
        t = t.set_column(t.schema.get_field_index("slide_id"), "slide_id", pa.array([sid] * t.num_rows))
        pq.write_table(t.replace_schema_metadata(src.schema_arrow.metadata), folder / f"{sid}.parquet")
    row = {f.name: None for f in SLIDES_SCHEMA} | {"slide_id": "slide_x", "status": "ok"}
    write_table_atomic(pa.Table.from_pylist([row], schema=SLIDES_SCHEMA), slide_path(fs.root, "slide_x"))
    con = sql.connect(fs.root)
    routed = sql.run_query(con, "pooled_patient_features")
    assert routed.column("patient_id").to_pylist()[-1] is None
    assert_same(routed, sql.run_query(con, "pooled_patient_features", route=False))


def test_the_sql_command_routes_unless_sql_only(store, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from slide2expr.cli import app

    args = [
        "sql",
        str(store.root),
        "nearest_tiles",
        "-p",
        f"slide_id={store.slides[1][0]}",
        "-p",
        "tile_id=2",
    ]
    out = {}
    for flags in ([], ["--sql-only"]):
        path = tmp_path / f"near{len(flags)}.parquet"
        res = CliRunner().invoke(app, [*args, "-p", "k=4", *flags, "--format", "parquet", "--out", str(path)])
        assert res.exit_code == 0, res.output
        out[len(flags)] = pq.read_table(path)
    assert_same(out[0], out[1])
    res = CliRunner().invoke(app, [*args, "-p", "k=0"])
    assert res.exit_code == 0, res.output


def test_the_routed_queries_are_named_queries():
    assert set(ROUTED_QUERIES) <= set(sql.list_queries())


def test_a_store_without_embeddings_runs_the_sql(tmp_path):
    """Nothing to route: the SQL answers, with its own message."""
    import duckdb

    from slide2expr.contract import init_store

    con = sql.connect(init_store(tmp_path / "empty"))
    for route in (True, False):
        with pytest.raises(duckdb.Error, match="no embeddings in store .*slide2expr featurize"):
            sql.run_query(con, "pooled_patient_features", route=route)
