"""Similarity search: exact search against brute force, the page map's row reads, the index (re-scored scores,
recall, staleness, where it lives) and the ``similar`` command."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr import sql
from slide2expr.cli import app
from slide2expr.sql._rows import page_map, read_column, read_rows
from slide2expr.sql._similar import INDEX_DIR, _projection, _Reader, _residual_code, _residual_estimate
from tests._fakestore import ENCODER, TILING, make_fake_store


@pytest.fixture(scope="module", params=["float32", "float16"])
def store(request, tmp_path_factory):
    return make_fake_store(
        tmp_path_factory.mktemp(f"sim-{request.param}"), n_patients=9, dim=16, dtype=request.param, seed=3
    )


def _brute(fs, slide_id, tile_id, k):
    """Every tile's cosine to the query, computed from the stored values (after the store's dtype)."""
    rows, vecs = [], []
    for sid, _ in fs.slides:
        path = fs.root / "embeddings" / TILING / ENCODER / f"{sid}.parquet"
        emb = pq.read_table(path).column("embedding").combine_chunks()
        v = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(emb), -1).astype(np.float32)
        rows += [(sid, t) for t in range(len(v))]
        vecs.append(v)
    X = np.concatenate(vecs)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    q = X[rows.index((slide_id, tile_id))]
    s = X @ q
    s[rows.index((slide_id, tile_id))] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    return [rows[i] for i in order], s[order]


def test_exact_search_equals_brute_force(store):
    sid = store.slides[1][0]
    hits = sql.similar_tiles(store.root, slide_id=sid, tile_id=4, k=7, method="exact")
    want, scores = _brute(store, sid, 4, 7)
    assert list(zip(hits["slide_id"].to_pylist(), hits["tile_id"].to_pylist(), strict=True)) == want
    np.testing.assert_allclose(hits["score"].to_numpy(), scores, rtol=1e-5)
    assert hits["rank"].to_pylist() == list(range(1, 8))


def test_results_join_the_tiles_view(store):
    sid = store.slides[0][0]
    hits = sql.similar_tiles(store.root, slide_id=sid, tile_id=0, k=5, method="exact")
    con = sql.connect(store.root)
    con.register("hits", hits)
    joined = con.execute(
        "select count(*), sum((h.x = t.x and h.y = t.y)::int) from hits h join tiles t using (slide_id, tile_id)"
    ).fetchone()
    assert joined == (5, 5)


def test_page_map_reads_any_row(store, tmp_path):
    sid = store.slides[2][0]
    path = store.root / "embeddings" / TILING / ENCODER / f"{sid}.parquet"
    want = pq.read_table(path).column("embedding").combine_chunks()
    want = want.flatten().to_numpy(zero_copy_only=False).reshape(len(want), -1)
    with pa.memory_map(str(path)) as src:
        pf = pq.ParquetFile(src)
        pm = page_map(src.fileno(), pf, 4, 16)
        assert pm is not None and pm.n_rows == len(want)
        np.testing.assert_array_equal(read_column(src.fileno(), pm), want)
        rows = np.array([len(want) - 1, 0, 3])
        np.testing.assert_array_equal(read_rows(src.fileno(), pm, rows), want[rows])
    # small pages: rows spread over many pages
    small = tmp_path / "small.parquet"
    pq.write_table(
        pq.read_table(path),
        small,
        compression="none",
        data_page_size=256,
        write_batch_size=32,
        use_dictionary=False,
    )
    with pa.memory_map(str(small)) as src:
        pm = page_map(src.fileno(), pq.ParquetFile(src), 4, 16)
        assert len(pm.offsets) > 3
        np.testing.assert_array_equal(read_rows(src.fileno(), pm, np.arange(len(want))), want)
    # compressed: no page map, the reader falls back to pyarrow
    packed = tmp_path / "zstd.parquet"
    pq.write_table(pq.read_table(path), packed, compression="zstd")
    with pa.memory_map(str(packed)) as src:
        assert page_map(src.fileno(), pq.ParquetFile(src), 4, 16) is None
    reader = _Reader(packed)
    try:
        np.testing.assert_array_equal(reader.rows(np.array([1, 2])), want[[1, 2]])
    finally:
        reader.close()


def test_index_rescores_exactly_and_goes_stale(tmp_path):
    pytest.importorskip("faiss")
    fs = make_fake_store(tmp_path / "s", n_patients=12, dim=16, seed=4, failed_slide=False)
    report = sql.build_similarity_index(fs.root, pca_dim=8, sample_tiles=400, n_lists=8)
    assert report.path.parent.parent.parent.name == INDEX_DIR and report.n_tiles > 0
    sid = fs.slides[3][0]
    with sql.open_similarity_index(fs.root) as index:
        everything = index.query(sid, 2, k=10, candidates=report.n_tiles, n_probe=8)
        approx = index.query(sid, 2, k=10, candidates=40, n_probe=2)
        assert index.default_n_probe == 8  # at least N_PROBE lists, never more than the index has
        index.meta["params"]["n_lists"] = 6108
        assert index.default_n_probe == 255  # and 1/24 of a large index's lists
        with pytest.raises(ValueError, match="n_probe=0"):
            index.query(sid, 2, k=10, n_probe=0)
        with pytest.raises(ValueError, match="k=0: give a whole number of neighbours"):
            index.query(sid, 2, k=0)
    few = sql.similar_tiles(fs.root, slide_id=sid, tile_id=2, k=10, method="index", candidates=40, n_probe=2)
    assert few.equals(approx)
    want, scores = _brute(fs, sid, 2, 10)
    # all tiles as candidates: exactly the exact answer; fewer: exact scores of what it found
    assert (
        list(zip(everything["slide_id"].to_pylist(), everything["tile_id"].to_pylist(), strict=True)) == want
    )
    np.testing.assert_allclose(everything["score"].to_numpy(), scores, rtol=1e-5)
    found = dict(zip(zip(approx["slide_id"].to_pylist(), approx["tile_id"].to_pylist(), strict=True),
                     approx["score"].to_pylist(), strict=True))  # fmt: skip
    exact_all = dict(zip(*_brute(fs, sid, 2, 10_000), strict=True))
    assert all(abs(exact_all[key] - s) < 1e-5 for key, s in found.items())
    # a rewritten embeddings file makes the index stale; auto then rebuilds it
    path = fs.root / "embeddings" / TILING / ENCODER / f"{sid}.parquet"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(sql.SimilarityError, match="stale"):
        sql.open_similarity_index(fs.root)
    assert sql.plan_similar(fs.root, method="auto").build
    hits = sql.similar_tiles(fs.root, slide_id=sid, tile_id=2, k=3, method="index")
    assert hits.num_rows == 3 and not report.path.exists()
    # the store's views never see the index
    assert sql.connect(fs.root).execute("select count(*) from embeddings").fetchone()[0] == report.n_tiles


def test_residual_codes_rank_near_ties_better_than_the_axes_alone():
    """Embeddings whose variance is spread over many dimensions (a few strong directions plus isotropic noise): the
    axes' scores plus the residual sign codes' estimate put more of the true top 10 in a short list than the axes'
    scores alone, and a residual's estimate with itself is exact."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 256)) * 0.35 + rng.normal(size=(4000, 256))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    axes = _projection(X[:1000], 16)
    Z = X @ axes
    signs, scale = _residual_code(X, Z, axes)
    r0 = X[0] - axes @ Z[0]
    assert _residual_estimate(signs[:1], scale[:1], r0)[0] == pytest.approx(float(r0 @ r0), rel=1e-5)
    hits = {"axes": 0, "axes+residual": 0}
    for qi in range(40):
        q, exact = X[qi], X @ X[qi]
        exact[qi] = -np.inf
        true = set(np.argsort(-exact)[:10])
        axes_only = Z @ Z[qi]
        for name, score in (
            ("axes", axes_only),
            ("axes+residual", axes_only + _residual_estimate(signs, scale, q - axes @ Z[qi])),
        ):
            score[qi] = -np.inf
            hits[name] += len(true & set(np.argsort(-score)[:15]))
    assert hits["axes+residual"] > 1.1 * hits["axes"], hits  # 338 against 286 of 400


def test_an_index_without_residual_codes_ranks_by_its_8bit_codes(tmp_path):
    pytest.importorskip("faiss")
    fs = make_fake_store(tmp_path / "s", n_patients=6, dim=16, seed=5, failed_slide=False)
    report = sql.build_similarity_index(fs.root, pca_dim=8, sample_tiles=400, n_lists=8)
    assert report.params["residual"] == "signs"
    sid = fs.slides[2][0]
    with sql.open_similarity_index(fs.root) as index:
        coded = index.query(sid, 1, k=5, candidates=report.n_tiles, n_probe=8)
        codes_only = index.query(sid, 1, k=5, candidates=10, n_probe=8, shortlist_factor=1)
        with pytest.raises(ValueError, match="shortlist_factor=0"):
            index.query(sid, 1, k=5, shortlist_factor=0)
    for name in ("residual_signs.npy", "residual_scale.npy"):
        (report.path / name).unlink()
    with sql.open_similarity_index(fs.root) as index:
        assert index.residual_signs is None
        plain = index.query(sid, 1, k=5, candidates=report.n_tiles, n_probe=8)
        few = index.query(sid, 1, k=5, candidates=10, n_probe=8)
    assert plain.equals(coded)  # every tile a candidate: the exact answer either way
    assert few.equals(
        codes_only
    )  # shortlist_factor=1: the 8-bit codes alone, as an index without residual codes
    exact_all = dict(zip(*_brute(fs, sid, 1, 10_000), strict=True))
    for key, score in zip(zip(few["slide_id"].to_pylist(), few["tile_id"].to_pylist(), strict=True),
                          few["score"].to_pylist(), strict=True):  # fmt: skip
        assert abs(exact_all[key] - score) < 1e-5


def test_small_store_auto_is_exact(store):
    assert sql.plan_similar(store.root).method == "exact"
    with pytest.raises(ValueError, match="method="):
        sql.plan_similar(store.root, method="fast")
    with pytest.raises(sql.SimilarityError, match="no tile 9999"):
        sql.similar_tiles(store.root, slide_id=store.slides[0][0], tile_id=9999, method="exact")
    with pytest.raises(sql.SimilarityError, match="no embeddings for encoder nope"):
        sql.similar_tiles(store.root, slide_id=store.slides[0][0], tile_id=0, encoder="nope")


def test_similar_command(store):
    runner = CliRunner()
    sid = store.slides[0][0]
    r = runner.invoke(app, ["similar", str(store.root), "--tile", f"{sid}:1", "-k", "3", "--format", "csv"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("3 neighbours")]
    assert lines[0] == "rank,slide_id,tile_id,x,y,score" and len(lines) == 4
    r = runner.invoke(app, ["similar", str(store.root), "--tile", "nope"])
    assert r.exit_code == 2 and "SLIDE:TILE_ID" in r.output
    r = runner.invoke(app, ["similar", str(store.root), "--tile", f"{sid}:1", "--dry-run"])
    assert r.exit_code == 0 and "exact search" in r.output and "nothing written" in r.output
