"""explain on a run whose attention table is read per request (as a large run's is): the same outputs as the table
read whole, and with the map slides only, no attention row of another slide is read."""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import pytest

from slide2expr import explain
from slide2expr.explain import ExplainError, explain_run, load_run
from slide2expr.sql import _read


def _explain(run_dir, store, out, **kw):
    return explain_run(load_run(run_dir), store=store, out=out, top_slides=1, report=False, **kw)


@pytest.fixture()
def read_per_request(monkeypatch):
    """Every attention table is treated as too large to read whole."""
    monkeypatch.setattr(_read, "ATTENTION_IN_MEMORY_ROWS", 0)


def test_reads_per_request_give_the_same_outputs(toy, tmp_path, monkeypatch):
    whole = _explain(toy.run, toy.store, tmp_path / "whole", hotspots_on="all")
    monkeypatch.setattr(_read, "ATTENTION_IN_MEMORY_ROWS", 0)
    parts = _explain(toy.run, toy.store, tmp_path / "parts", hotspots_on="all")
    for name in ("hotspots.parquet", "gallery.parquet"):
        pd.testing.assert_frame_equal(
            pq.read_table(whole.out / name).to_pandas(), pq.read_table(parts.out / name).to_pandas()
        )
    assert [p.name for p in whole.detections] == [p.name for p in parts.detections]
    for a, b in zip(whole.detections, parts.detections, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert [c for c, _ in whole.figures["heatmaps"]] == [c for c, _ in parts.figures["heatmaps"]]
    assert len(whole.detections) == len(toy.slides)
    assert {"hotspots (mil attention)", "QuPath detections", "heatmaps"} <= set(parts.stages)
    assert all(v["seconds"] >= 0 and v["peak_rss_gb"] > 0 for v in parts.stages.values())


def test_map_slides_only_read_no_other_slide(toy, tmp_path, monkeypatch, read_per_request):
    """hotspots_on='maps' with chosen slides and no gallery: every attention row read is of a chosen slide (the
    localisation against truth, which scores every slide, is left out by running on a copy without truth)."""
    run_dir = tmp_path / "run"
    shutil.copytree(toy.run, run_dir)
    (run_dir / "truth_tiles.parquet").unlink()
    chosen = toy.slides[:2]
    seen = []
    real = pq.read_table

    def spy(path, *a, **kw):
        t = real(path, *a, **kw)
        if str(path).endswith("attention.parquet"):
            seen.append(t)
        return t

    monkeypatch.setattr(_read.pq, "read_table", spy)
    res = _explain(run_dir, toy.store, tmp_path / "out", slides=chosen, hotspots_on="maps", gallery=False)
    assert seen, "the attention table was not read at all"
    read = set().union(*(set(t.column("slide_id").to_pylist()) for t in seen))
    assert read <= set(chosen)
    assert sorted(p.stem for p in res.detections) == sorted(chosen)
    assert set(res.hotspots["slide_id"]) <= set(chosen)
    assert "gallery" not in res.figures


def test_auto_covers_the_map_slides_of_a_large_run(toy, monkeypatch):
    monkeypatch.setattr(explain._plan, "HOTSPOTS_ALL_UP_TO", 3)
    plan = explain.plan_explain(toy.run, store=toy.store, top_slides=1, overwrite=True)
    chosen = {s for v in plan.map_slides.values() for s in v}
    assert set(plan.hotspot_slides) == chosen and len(chosen) < len(toy.slides)
    assert any("--hotspots-on all" in n for n in plan.notes)
    every = explain.plan_explain(toy.run, store=toy.store, top_slides=1, overwrite=True, hotspots_on="all")
    assert len(every.hotspot_slides) == len(toy.slides)


def test_small_runs_cover_every_slide_by_default(toy):
    plan = explain.plan_explain(toy.run, store=toy.store, top_slides=1, overwrite=True)
    assert len(plan.hotspot_slides) == len(toy.slides)
    assert not any("hotspots-on" in n for n in plan.notes)


def test_an_unknown_hotspot_scope_is_refused(toy):
    with pytest.raises(ExplainError, match="hotspots_on='some'.*auto, all, maps"):
        explain.plan_explain(toy.run, store=toy.store, hotspots_on="some", overwrite=True)


def test_the_attention_index_counts_each_slides_tiles(toy):
    run = load_run(toy.run)
    att = run.table("attention")
    want = (
        att.groupby(["model", "gene", "bag_id", "slide_id"])["tile_id"]
        .nunique()
        .rename("n_tiles")
        .reset_index()
    )
    got = run.attention_index()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_genes_without_attention_get_no_maps_and_a_note(toy, tmp_path):
    """A run that recorded attention for some genes only (as compare's memory bound does at scale): those genes are
    ranked among their own bags, the others get no map slides, no gallery, and one note names them."""
    run_dir = tmp_path / "run"
    shutil.copytree(toy.run, run_dir)
    att = pq.read_table(run_dir / "attention.parquet")
    keep = pa.compute.not_equal(att["gene"], "NOISE1")
    pq.write_table(att.filter(keep), run_dir / "attention.parquet")
    plan = explain.plan_explain(run_dir, store=toy.store, top_slides=2, overwrite=True)
    assert plan.map_slides["NOISE1"] == [] and all(len(plan.map_slides[g]) == 2 for g in ("HOTA", "STRB"))
    assert any("1 of 3 genes have no mil attention in the run (NOISE1)" in n for n in plan.notes)
    res = explain.run_plan(explain.plan_explain(run_dir, store=toy.store, out=tmp_path / "out", report=False))
    assert not any("gallery of NOISE1" in n for n in res.notes)
    assert set(pq.read_table(res.out / "gallery.parquet").column("gene").to_pylist()) == {"HOTA", "STRB"}
