"""Every named query against the fake store, each checked against an independent pandas/numpy computation."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slide2expr import sql
from slide2expr.sql import QueryError, connect, list_queries, run_query
from slide2expr.sql._queries import _strip_sql_comments_and_strings, body_parameters


@pytest.fixture(scope="module")
def con(fake_store, fake_run):
    return connect(fake_store.root, run=fake_run)


@pytest.fixture(scope="module")
def ref(fake_store):
    """The store's files read back with pyarrow only (no DuckDB): slides, tiles, embeddings by slide."""
    root = fake_store.root
    slides = pd.concat([pq.read_table(p).to_pandas() for p in sorted((root / "slides").glob("*.parquet"))])
    tiles = pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted((root / "tiles" / fake_store.tiling).glob("*.parquet"))]
    )
    return {"slides": slides.reset_index(drop=True), "tiles": tiles.reset_index(drop=True)}


def q(con, query_name, **params):
    return run_query(con, query_name, params=params).to_pandas()


def test_every_query_file_follows_the_conventions():
    queries = list_queries()
    required = {
        "cohort_summary",
        "slide_qc",
        "failed_slides",
        "tiles_per_patient",
        "patient_bag",
        "pooled_slide_features",
        "pooled_patient_features",
        "nearest_tiles",
        "nearest_tiles_to_vector",
        "targets_wide",
        "targets_with_tiles",
        "top_attention_tiles",
        "model_summary",
        "well_predicted_genes",
    }
    assert required <= set(queries)
    for name, info in queries.items():
        assert info.purpose and info.grain.startswith("one row per") and info.columns, name
        assert set(info.params) == body_parameters(info.text), f"{name}: header params ≠ $params in the body"
        body = _strip_sql_comments_and_strings(info.text)
        assert body.strip().startswith("with "), f"{name}: CTE style (starts with `with`)"
        upper = re.findall(r"\b(SELECT|FROM|WHERE|GROUP|ORDER|JOIN|WITH|AS)\b", body)
        assert not upper, f"{name}: upper-case keywords {upper}"
        assert body.count(";") == 1 and body.rstrip().endswith(";"), f"{name}: one statement"


def test_cohort_summary(con, fake_store, ref):
    got = q(con, "cohort_summary")
    assert len(got) == 1
    row = got.iloc[0]
    n_tiles = [len(e) for e in fake_store.embeddings.values()]
    assert (row.tiling, row.encoder, row.dim) == (fake_store.tiling, fake_store.encoder, fake_store.dim)
    assert row.n_slides == len(fake_store.slides) and row.n_tiles == sum(n_tiles)
    assert row.n_patients == len({p for _, p in fake_store.slides})
    assert row.tiles_per_slide_mean == pytest.approx(np.mean(n_tiles))
    assert (row.tiles_per_slide_min, row.tiles_per_slide_max) == (min(n_tiles), max(n_tiles))
    status = ref["slides"].status.value_counts()
    assert row.n_slides_in_store == len(ref["slides"]) and row.n_slides_ok == status["ok"]
    assert (
        row.n_slides_failed == status["failed"]
        and row.n_slides_no_tissue == 0
        and row.n_slides_too_small == 0
    )


def test_slide_qc(con, ref):
    got = q(con, "slide_qc").set_index("slide_id")
    slides = ref["slides"].set_index("slide_id")
    assert sorted(got.index) == sorted(slides.index)
    t = ref["tiles"]
    t = t.assign(px2=t.w * t.h, tissue_px2=t.w * t.h * t.tissue_frac.astype(float))
    agg = t.groupby("slide_id").agg(n=("tile_id", "size"), px2=("px2", "sum"), tpx2=("tissue_px2", "sum"))
    for sid, s in slides.iterrows():
        g = got.loc[sid]
        assert g.status == s.status and g.patient_id == s.patient_id
        assert g.mpp_source == s.mpp_source or (pd.isna(g.mpp_source) and pd.isna(s.mpp_source))
        if sid in agg.index:
            a = agg.loc[sid]
            assert g.n_tiles == a.n
            assert g.tile_area_mm2 == pytest.approx(a.px2 * s.mpp_x * s.mpp_y / 1e6)
            assert g.tissue_area_mm2 == pytest.approx(a.tpx2 * s.mpp_x * s.mpp_y / 1e6, rel=1e-5)
            # the fake store records the tile area as featurize's tissue area
            assert g.tile_area_mm2 == pytest.approx(s.tissue_area_mm2)
        else:
            assert g.n_tiles == 0 and g.status == "failed" and "OpenSlide" in g.error and pd.isna(g.tiling)


def test_failed_slides(con, ref):
    got = q(con, "failed_slides")
    expected = ref["slides"][ref["slides"].status != "ok"]
    assert list(got.slide_id) == sorted(expected.slide_id)
    assert got.error.iloc[0] == expected.error.iloc[0]


def test_tiles_per_patient(con, ref):
    got = q(con, "tiles_per_patient").set_index("patient_id")
    t = ref["tiles"].merge(ref["slides"][["slide_id", "patient_id"]], on="slide_id")
    per_slide = t.groupby(["patient_id", "slide_id"]).size().rename("n").reset_index()
    exp = per_slide.groupby("patient_id").n.agg(["size", "sum", "min", "max"])
    assert list(got.index) == list(exp.index)
    np.testing.assert_array_equal(got.n_slides, exp["size"])
    np.testing.assert_array_equal(got.n_tiles, exp["sum"])
    np.testing.assert_array_equal(got.min_tiles_per_slide, exp["min"])
    np.testing.assert_array_equal(got.max_tiles_per_slide, exp["max"])


def test_patient_bag(con, fake_store):
    pid = "TCGA-FK-0001"  # has two slides
    got = run_query(con, "patient_bag", params={"patient_id": pid, "encoder": fake_store.encoder})
    sids = sorted(s for s, p in fake_store.slides if p == pid)
    assert len(sids) == 2
    expected = np.concatenate([fake_store.embeddings[s] for s in sids])
    emb = got.column("embedding").combine_chunks()
    assert emb.type.list_size == fake_store.dim  # FLOAT[d]
    np.testing.assert_array_equal(emb.flatten().to_numpy().reshape(-1, fake_store.dim), expected)
    assert got.column("slide_id").to_pylist() == [s for s in sids for _ in fake_store.embeddings[s]]
    assert run_query(con, "patient_bag", params={"patient_id": pid, "encoder": "other"}).num_rows == 0


@pytest.mark.parametrize("level", ["slide", "patient"])
def test_pooled_features(con, fake_store, level):
    got = q(con, f"pooled_{level}_features").set_index(f"{level}_id")
    groups: dict[str, list[np.ndarray]] = {}
    for sid, pid in fake_store.slides:
        groups.setdefault(sid if level == "slide" else pid, []).append(fake_store.embeddings[sid])
    assert sorted(got.index) == sorted(groups)
    for key, parts in groups.items():
        e = np.concatenate(parts)
        row = got.loc[key]
        assert row.n_tiles == len(e)
        np.testing.assert_allclose(np.asarray(row.mean_embedding), e.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(row.max_embedding, dtype=np.float32), e.max(0))
        if level == "patient":
            assert row.n_slides == len(parts)


def _cosine_ranking(fake_store, v, exclude=None):
    rows = []
    for sid, e in fake_store.embeddings.items():
        sim = e @ v / (np.linalg.norm(e, axis=1) * np.linalg.norm(v))
        rows += [(float(s), sid, t) for t, s in enumerate(sim) if (sid, t) != exclude]
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return rows


def test_nearest_tiles(con, fake_store):
    sid = fake_store.slides[3][0]
    v = fake_store.embeddings[sid][5]
    got = q(con, "nearest_tiles", slide_id=sid, tile_id=5, k=7)
    exp = _cosine_ranking(fake_store, v, exclude=(sid, 5))[:7]
    assert list(zip(got.slide_id, got.tile_id, strict=True)) == [(s, t) for _, s, t in exp]
    np.testing.assert_allclose(got.similarity, [r[0] for r in exp], rtol=1e-5)
    assert list(got["rank"]) == list(range(1, 8))
    # strings from the command line are converted to the declared types
    again = q(con, "nearest_tiles", slide_id=sid, tile_id="5", k="7")
    assert list(again.tile_id) == list(got.tile_id)


def test_nearest_tiles_to_vector(con, fake_store):
    v = np.zeros(fake_store.dim, np.float32)
    v[2] = 1.0  # the direction of compartment 2
    got = q(con, "nearest_tiles_to_vector", vector=v.tolist(), encoder=fake_store.encoder, k=10)
    exp = _cosine_ranking(fake_store, v)[:10]
    assert list(zip(got.slide_id, got.tile_id, strict=True)) == [(s, t) for _, s, t in exp]
    tiles = [fake_store.compartments[s][t] for s, t in zip(got.slide_id, got.tile_id, strict=True)]
    assert set(tiles) == {2}
    as_text = q(
        con, "nearest_tiles_to_vector", vector=",".join(map(str, v)), encoder=fake_store.encoder, k="10"
    )
    assert list(as_text.tile_id) == list(got.tile_id)


def test_targets_wide(con, fake_store):
    got = q(con, "targets_wide").set_index("patient_id")
    assert set(fake_store.genes) <= set(got.columns) and set(got.name) == {"expr"}
    for pid, genes in fake_store.targets.items():
        for g, v in genes.items():
            assert got.loc[pid, g] == pytest.approx(v)
        assert got.loc[pid, "sample_id"] == f"{pid}-01A"


def test_targets_with_tiles(con, fake_store):
    got = q(con, "targets_with_tiles", name="expr").set_index("patient_id")
    assert len(got) == len(fake_store.targets)
    for pid in fake_store.targets:
        sids = [s for s, p in fake_store.slides if p == pid]
        assert got.loc[pid, "n_slides"] == len(sids)
        assert got.loc[pid, "n_tiles"] == sum(len(fake_store.embeddings[s]) for s in sids)
        assert got.loc[pid, "n_genes"] == len(fake_store.genes) and got.loc[pid, "n_missing_values"] == 0
    assert q(con, "targets_with_tiles", name="no-such-set").empty


def test_top_attention_tiles(con, fake_run):
    got = q(con, "top_attention_tiles", model="mil", gene=None, rank_by="relative", k=3)
    att = pq.read_table(fake_run / "attention.parquet").to_pandas()
    att = att[att.model == "mil"]
    att = att.assign(
        relative=att["attention"] * att.groupby(["gene", "bag_id"])["attention"].transform("size")
    )
    att = att.sort_values(
        ["gene", "relative", "bag_id", "slide_id", "tile_id"], ascending=[True, False, True, True, True]
    )
    exp = att.groupby("gene").head(3)
    assert list(got.gene) == list(exp.gene)
    assert list(zip(got.slide_id, got.tile_id, strict=True)) == list(
        zip(exp.slide_id, exp.tile_id, strict=True)
    )
    np.testing.assert_array_equal(got.x, exp.x)
    np.testing.assert_array_equal(got.y, exp.y)
    np.testing.assert_allclose(got.attention, exp.attention)
    np.testing.assert_allclose(got.relative_attention, exp.relative, rtol=1e-6)
    pct = att.groupby(["gene", "bag_id"])["attention"].rank(method="min", pct=False).sub(1)
    pct = 100 * pct / (att.groupby(["gene", "bag_id"])["attention"].transform("size") - 1)
    np.testing.assert_allclose(
        got.bag_percentile, pct.loc[exp.index]
    )  # the percentile of the chosen tiles only
    one = q(con, "top_attention_tiles", model="mil", gene=exp.gene.iloc[0], rank_by="percentile", k=2)
    assert set(one.gene) == {exp.gene.iloc[0]} and (one.bag_percentile == 100).all()


def test_run_views(con, fake_run, fake_store):
    n = con.execute("select count(*) from predictions").fetchall()[0][0]
    assert n == len(fake_store.targets) * len(fake_store.genes)
    assert con.execute("select count(distinct fold) from folds").fetchall()[0][0] == 3
    with pytest.raises(Exception, match=r"has no comparisons\.parquet: run `slide2expr compare` first"):
        con.execute("select metric from comparisons where model_a = 'mil'").fetchall()
    no_run = connect(fake_store.root)
    with pytest.raises(Exception, match="no run directory given"):
        no_run.execute("select count(*) from attention").fetchall()


def test_parameter_errors(con):
    with pytest.raises(QueryError, match="no query named 'nope'.*cohort_summary"):
        run_query(con, "nope")
    with pytest.raises(QueryError, match=r"needs parameter\(s\) \$encoder"):
        run_query(con, "patient_bag", params={"patient_id": "x"})
    with pytest.raises(QueryError, match=r"has no parameter\(s\) \$gene; it takes no parameters"):
        run_query(con, "cohort_summary", params={"gene": "GNLY"})
    with pytest.raises(QueryError, match=r"\$k must be integer, got 'ten'"):
        run_query(
            con, "top_attention_tiles", params={"model": "mil", "gene": "", "rank_by": "relative", "k": "ten"}
        )


def test_hostile_parameter_values_are_data(con, fake_store):
    evil = "TCGA-FK-0001'; drop view slides; select '"
    got = run_query(con, "patient_bag", params={"patient_id": evil, "encoder": fake_store.encoder})
    assert got.num_rows == 0
    assert con.execute("select count(*) from slides").fetchall()[0][0] == len(fake_store.slides) + 1
    evil_gene = 'GNLY"; --'
    assert sql.run_sql(
        con, "select count(*) as n from targets where gene = $g", params={"g": evil_gene}
    ).column("n").to_pylist() == [0]


def test_model_summary_and_well_predicted_genes(con, fake_run):
    m = pq.read_table(fake_run / "metrics.parquet").to_pandas()
    pooled = m[m.fold == -1]
    got = q(con, "model_summary").set_index("model")
    assert set(got.index) == {"mil", "lgbm", "mean"}
    for model, g in pooled.groupby("model"):
        assert got.loc[model, "n_genes"] == len(g)
        assert got.loc[model, "n_well_predicted"] == int(g.well_predicted.sum())
        assert got.loc[model, "median_pearson_r"] == pytest.approx(g.pearson_r.median())
        assert got.loc[model, "median_rmse_ratio"] == pytest.approx((g.rmse / g.rmse_baseline).median())
    wp = q(con, "well_predicted_genes", model="mil")
    exp = pooled[(pooled.model == "mil") & pooled.well_predicted].sort_values("pearson_r", ascending=False)
    assert list(wp.gene) == list(exp.gene)
    assert (wp.fdr < 0.05).all() and (wp.pearson_r > 0).all()
