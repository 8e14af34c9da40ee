"""A store holding two encoders of different dimensions: every query that leaves the vectors alone works on
`embeddings`; one that reads them says how to pick an encoder; `embeddings_of` and `connect(encoder=…)` pick one."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from slide2expr.sql import connect, run_query
from tests._fakestore import add_encoder, make_fake_store

#: what the message for a query that reads the vectors of a mixed store says, piece by piece
PICK = (
    "the store holds embeddings of different dimensions: mpp1.00_px224_ov0/fake-encoder (dim 16), "
    "mpp1.00_px224_ov0/wide (dim 32)",
    "--encoder NAME on the command line",
    "sql.connect(store, encoder=NAME) in Python",
    "from embeddings_of('NAME') in SQL",
)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    fs = make_fake_store(tmp_path_factory.mktemp("mixed") / "store", n_patients=4, failed_slide=False)
    wide = add_encoder(fs, "wide", dim=32)
    return fs, wide


def _n_tiles(fs) -> int:
    return sum(len(e) for e in fs.embeddings.values())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("select encoder, count(*) from embeddings group by all order by encoder", "per_encoder"),
        ("select count(*) from embeddings as e join tiles as t using (slide_id, tile_id)", "joined"),
        ("select count(*) from embeddings where encoder = 'wide' and tile_id < 2", "filtered"),
        ("select * exclude (embedding) from embeddings order by all limit 1", "one_row"),
        ("select count(distinct dim) from embedding_files", "dims"),
    ],
)
def test_queries_that_leave_the_vectors_alone_work(mixed, query, expected):
    fs, _ = mixed
    n, n_slides = _n_tiles(fs), len(fs.slides)
    got = connect(fs.root).execute(query).fetchall()
    want = {
        "per_encoder": [("fake-encoder", n), ("wide", n)],
        "joined": [(2 * n,)],
        "filtered": [(2 * n_slides,)],
        "dims": [(2,)],
    }
    if expected == "one_row":
        assert len(got) == 1 and len(got[0]) == 6  # slide_id, tile_id, x, y, tiling, encoder
    else:
        assert got == want[expected]


@pytest.mark.parametrize(
    "query",
    [
        "select embedding from embeddings limit 3",
        "select * from embeddings",
        "select array_cosine_similarity(embedding, embedding) from embeddings where encoder = 'wide'",
        "select len(embedding) from embeddings",
    ],
)
def test_a_query_that_reads_the_vectors_says_how_to_pick_an_encoder(mixed, query):
    fs, _ = mixed
    with pytest.raises(duckdb.Error) as err:
        connect(fs.root).execute(query).fetchall()
    for piece in PICK:
        assert piece in str(err.value)


def test_named_queries_on_a_mixed_store(mixed):
    fs, _ = mixed
    con = connect(fs.root)
    summary = run_query(con, "cohort_summary").to_pylist()  # footers only: works as it is
    assert [(r["encoder"], r["dim"]) for r in summary] == [("fake-encoder", 16), ("wide", 32)]
    params = {"slide_id": fs.slides[0][0], "tile_id": 0, "k": 3}
    with pytest.raises(duckdb.Error, match=r"pick one encoder with --encoder NAME"):
        run_query(con, "nearest_tiles", params=params, route=False)  # the SQL reads every encoder's vectors
    # answered per tiling/encoder through the similarity search, it holds both
    both = run_query(con, "nearest_tiles", params=params)
    assert both.column("encoder").to_pylist() == ["fake-encoder"] * 3 + ["wide"] * 3
    picked = connect(fs.root, encoder="wide")
    near = run_query(picked, "nearest_tiles", params={"slide_id": fs.slides[0][0], "tile_id": 0, "k": 3})
    assert near.num_rows == 3 and set(near.column("encoder").to_pylist()) == {"wide"}


def test_embeddings_of_picks_one_encoder_in_any_connection(mixed):
    fs, wide = mixed
    for con in (connect(fs.root), connect(fs.root, encoder="fake-encoder")):
        got = con.execute(
            "select typeof(embedding), count(*) from embeddings_of('wide') group by all"
        ).fetchall()
        assert got == [("FLOAT[32]", _n_tiles(fs))]
    con = connect(fs.root)
    sid = fs.slides[0][0]
    vec = con.execute(
        "select embedding from embeddings_of('wide', tiling := $t) where slide_id = $s and tile_id = 1",
        {"t": fs.tiling, "s": sid},
    ).fetchall()[0][0]
    np.testing.assert_allclose(vec, wide[sid][1], rtol=1e-6)
    # two encoders' vectors of the same tiles in one query
    both = con.execute(
        "select count(*), min(len(a.embedding)), min(len(b.embedding)) from embeddings_of('wide') as a "
        "join embeddings_of('fake-encoder') as b using (slide_id, tile_id)"
    ).fetchall()
    assert both == [(_n_tiles(fs), 32, 16)]
    assert con.execute(
        "select count(*) from embeddings_of('wide', tiling := 'mpp9.00_px1_ov0')"
    ).fetchall() == [(0,)]
    with pytest.raises(duckdb.Error, match=r"encoders here: fake-encoder \(dim 16\), wide \(dim 32\)"):
        con.execute("select * from embeddings_of('nope')").fetchall()


def test_connect_with_an_encoder_gives_its_vectors(mixed):
    fs, wide = mixed
    con = connect(fs.root, encoder="wide")
    assert con.execute("select typeof(embedding), count(*) from embeddings group by all").fetchall() == [
        ("FLOAT[32]", _n_tiles(fs))
    ]
    from slide2expr.cli import app

    sid = fs.slides[0][0]
    query = f"select len(embedding) as d from embeddings where slide_id = '{sid}' and tile_id = 0"
    res = CliRunner().invoke(app, ["sql", str(fs.root), "--encoder", "wide", "-q", query, "-f", "csv"])
    assert res.exit_code == 0 and res.output.split() == ['"d"', "32"], res.output
    res = CliRunner().invoke(app, ["sql", str(fs.root), "-q", query, "-f", "csv"])
    assert res.exit_code != 0 and "pick one encoder with --encoder NAME" in " ".join(res.output.split())
