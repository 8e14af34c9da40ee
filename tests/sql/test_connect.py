"""Views: types, missing stages, several encoders, concurrent writers, and the plain duckdb shell."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from slide2expr.contract import StoreError, embeddings_path, embeddings_schema, init_store, write_table_atomic
from slide2expr.sql import connect, list_queries, run_query
from tests._fakestore import make_fake_store

REPO = Path(__file__).resolve().parents[2]


def _write_embeddings(root, tiling, encoder, sid, emb, *, sha="1" * 64):
    n, dim = emb.shape
    schema = embeddings_schema(dim)
    col = pa.FixedSizeListArray.from_arrays(
        pa.array(emb.ravel(), pa.float32()), type=schema.field("embedding").type
    )
    tid = np.arange(n, dtype=np.int32)
    table = pa.table(
        {
            "slide_id": [sid] * n,
            "tile_id": tid,
            "x": tid.astype(np.int64),
            "y": tid.astype(np.int64),
            "embedding": col,
        },
        schema=schema,
    )
    meta = {"kind": "embeddings", "slide_id": sid, "tiling": tiling, "encoder": encoder, "dim": dim}
    meta |= {"dtype": "float32", "weights_sha256": sha}
    return write_table_atomic(table, embeddings_path(root, tiling, encoder, sid), metadata=meta)


def test_embedding_is_a_fixed_size_array(fake_store):
    con = connect(fake_store.root)
    types = dict(con.execute("select column_name, column_type from (describe embeddings)").fetchall())
    assert types["embedding"] == f"FLOAT[{fake_store.dim}]"
    sid = fake_store.slides[0][0]
    sims = con.execute(
        "select array_cosine_similarity(embedding, embedding), array_inner_product(embedding, embedding) "
        "from embeddings where slide_id = $s order by tile_id",
        {"s": sid},
    ).fetchall()
    e = fake_store.embeddings[sid]
    np.testing.assert_allclose([s[0] for s in sims], 1.0, rtol=1e-6)
    np.testing.assert_allclose([s[1] for s in sims], (e * e).sum(1), rtol=1e-5)
    rows = con.execute("select tiling, encoder, count(*) from embeddings group by all").fetchall()
    assert rows == [
        (fake_store.tiling, fake_store.encoder, sum(len(v) for v in fake_store.embeddings.values()))
    ]
    files = con.execute(
        "select count(*), sum(n_tiles), min(dim), max(weights_sha256) from embedding_files"
    ).fetchall()
    assert files == [
        (len(fake_store.slides), sum(len(v) for v in fake_store.embeddings.values()), 16, "0" * 64)
    ]
    names = con.execute("select distinct name from targets").fetchall()
    assert names == [("expr",)]


def test_empty_store_views_raise_clear_errors(tmp_path):
    root = init_store(tmp_path / "empty 'store'")
    con = connect(root)
    for view, hint in [
        ("slides", "slide2expr featurize"),
        ("tiles", "slide2expr featurize"),
        ("embeddings", "slide2expr featurize"),
        ("targets", "slide2expr targets import"),
        ("attention", "no run directory given"),
    ]:
        with pytest.raises(duckdb.Error, match=hint):
            con.execute(f"select count(*) from {view}").fetchall()
        with pytest.raises(
            duckdb.Error, match=hint
        ):  # a filter on a column reports it too, not a binder error
            con.execute(f"select * from {view} where slide_id = 'x'").fetchall()
    with pytest.raises(
        duckdb.Error, match=r"--run RUN on the command line, sql.connect\(store, run=RUN\) in Py"
    ):
        con.execute("select * from predictions").fetchall()  # every spelling of the run is named
    with pytest.raises(StoreError, match="does not exist"):
        connect(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="run directory .* does not exist"):
        connect(root, run=tmp_path / "no-run")
    (tmp_path / "a file").write_text("x")
    with pytest.raises(StoreError, match="store .*a file is not a directory"):
        connect(tmp_path / "a file")
    with pytest.raises(StoreError, match="run directory .*a file is not a directory"):
        connect(root, run=tmp_path / "a file")
    (tmp_path / "run").mkdir()
    with pytest.raises(StoreError, match="run is not a slide2expr store"):
        connect(tmp_path / "run")


def test_views_header_example_binds_every_parameter():
    """The `execute q(…)` example in the header of _views.sql names every parameter of the query it prepares."""
    header = (REPO / "sql" / "_views.sql").read_text().split("\n\n")[0]
    prepared = re.search(r"prepare q as \$\(cat sql/(\w+)\.sql\)", header).group(1)
    given = re.findall(r"(\w+) :=", re.search(r"execute q\((.*?)\)", header).group(1))
    assert sorted(given) == sorted(list_queries()[prepared].params)


def test_several_encoders(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=3, failed_slide=False)
    rng = np.random.default_rng(0)
    sids = [s for s, _ in fs.slides]
    for sid in sids:  # same dimension, other weights: one query compares encoders
        _write_embeddings(
            fs.root, fs.tiling, "same-dim", sid, rng.normal(size=(7, fs.dim)).astype(np.float32)
        )
    con = connect(fs.root)
    got = dict(con.execute("select encoder, count(*) from embeddings group by encoder").fetchall())
    assert got == {fs.encoder: sum(len(v) for v in fs.embeddings.values()), "same-dim": 7 * len(sids)}
    for sid in sids:  # a different dimension: `embeddings` needs a choice
        _write_embeddings(fs.root, fs.tiling, "wide", sid, rng.normal(size=(5, 32)).astype(np.float32))
    con = connect(fs.root)  # counts work; the vectors need a choice (tests/sql/test_encoders_views.py)
    assert con.execute("select count(distinct encoder) from embeddings").fetchall() == [(3,)]
    with pytest.raises(
        duckdb.Error, match=r"different dimensions: .*fake-encoder \(dim 16\).*wide \(dim 32\)"
    ):
        con.execute("select embedding from embeddings").fetchall()
    with pytest.raises(
        duckdb.Error, match=r"--encoder NAME on the command line, sql.connect\(store, encoder=NAME"
    ):
        con.execute("select embedding from embeddings").fetchall()
    assert con.execute("select count(distinct encoder) from embedding_files").fetchall() == [(3,)]
    wide = connect(fs.root, encoder="wide")
    assert wide.execute("select typeof(embedding), count(*) from embeddings group by all").fetchall() == [
        ("FLOAT[32]", 5 * len(sids))
    ]
    assert run_query(wide, "cohort_summary").num_rows == 1  # embedding_files follows the choice too
    with pytest.raises(duckdb.Error, match="no embeddings for encoder nope"):
        connect(fs.root, encoder="nope").execute("select * from embeddings").fetchall()


def test_queries_see_only_complete_files_while_writing(tmp_path):
    fs = make_fake_store(tmp_path / "w", n_patients=2, failed_slide=False)
    con = connect(fs.root)
    rng = np.random.default_rng(0)
    sizes = {f"TCGA-WR-{i:04d}-01Z-00-DX1": int(rng.integers(3000, 6000)) for i in range(12)}
    sizes |= {s: len(e) for s, e in fs.embeddings.items()}
    done = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            for sid, n in sizes.items():
                if sid.startswith("TCGA-WR"):
                    _write_embeddings(
                        fs.root,
                        fs.tiling,
                        fs.encoder,
                        sid,
                        rng.normal(size=(n, fs.dim)).astype(np.float32),
                        sha="0" * 64,
                    )
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    while True:
        finished = done.is_set()
        rows = con.execute(
            "select slide_id, count(*), max(tile_id) + 1 from embeddings group by slide_id"
        ).fetchall()
        for sid, n, top in rows:
            assert n == sizes[sid] == top, f"{sid}: saw {n} of {sizes[sid]} rows"
        seen.add(len(rows))
        if finished:
            break
    thread.join()
    assert not errors
    assert max(seen) == len(sizes)
    assert not list(fs.root.rglob(".*.tmp"))


def test_store_path_with_spaces_and_quotes(fake_store):
    assert " " in str(fake_store.root) and "'" in str(fake_store.root)
    con = connect(fake_store.root)
    got = con.execute("select getvariable('store')").fetchall()[0][0]
    assert got == str(fake_store.root.resolve())
    assert con.execute("select count(*) from slides").fetchall() == [(len(fake_store.slides) + 1,)]


def _duckdb_cli() -> str | None:
    local = Path(sys.executable).with_name("duckdb")
    return str(local) if local.exists() else shutil.which("duckdb")


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.skipif(_duckdb_cli() is None, reason="no duckdb CLI (pip install duckdb-cli)")
def test_same_files_run_in_the_duckdb_shell(fake_store, fake_run):
    """The documented shell command, against the fake store whose path holds a space and a quote."""
    cli = _duckdb_cli()
    setup = [
        "-c",
        f"set variable store = {_sql_literal(str(fake_store.root))}",
        "-c",
        f"set variable run = {_sql_literal(str(fake_run))}",
        "-c",
        ".read sql/_views.sql",
    ]
    con = connect(fake_store.root, run=fake_run)
    params = {
        "patient_bag": "patient_id := 'TCGA-FK-0004', encoder := 'fake-encoder'",
        "nearest_tiles": f"slide_id := '{fake_store.slides[0][0]}', tile_id := 3, k := 4",
        "nearest_tiles_to_vector": f"vector := {[1.0] + [0.0] * (fake_store.dim - 1)}, encoder := 'fake-encoder', k := 4",
        "targets_with_tiles": "name := 'expr'",
        "top_attention_tiles": "model := 'mil', gene := null, rank_by := 'relative', k := 2",
        "well_predicted_genes": "model := 'lgbm'",
    }
    py_params = {
        "patient_bag": {"patient_id": "TCGA-FK-0004", "encoder": "fake-encoder"},
        "nearest_tiles": {"slide_id": fake_store.slides[0][0], "tile_id": 3, "k": 4},
        "nearest_tiles_to_vector": {
            "vector": [1.0] + [0.0] * (fake_store.dim - 1),
            "encoder": "fake-encoder",
            "k": 4,
        },
        "targets_with_tiles": {"name": "expr"},
        "top_attention_tiles": {"model": "mil", "gene": None, "rank_by": "relative", "k": 2},
        "well_predicted_genes": {"model": "lgbm"},
    }
    for name, info in list_queries().items():
        if info.params:
            text = info.text
            run_cmds = ["-c", f"prepare q as {text}", "-c", f"execute q({params[name]})"]
        else:
            run_cmds = ["-c", f".read sql/{name}.sql"]
        out = subprocess.run(
            [cli, "-csv", *setup, *run_cmds],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0 and "Error" not in out.stderr, f"{name}: {out.stderr}"
        shell = pd.read_csv(io.StringIO(out.stdout))
        py = run_query(con, name, params=py_params.get(name)).to_pandas()
        assert list(shell.columns) == list(py.columns), name
        assert len(shell) == len(py) > 0, name
        key = py.columns[0]
        assert list(shell[key].astype(str)) == list(py[key].astype(str)), name
