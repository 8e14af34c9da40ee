"""The cohort-scale benchmark's small path: a valid store every reader takes, resumable, with a planted signal."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "cohort_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cohort_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_small_store_is_valid_resumable_and_planted(bench, tmp_path):
    from slide2expr import sql

    args = ["write", "--out", str(tmp_path / "s"), "--patients", "12", "--dim", "32", "--tile-scale", "0.02"]
    out = bench.main(args)
    assert out["patients"] == 12 and out["slides"] == 16 and out["slides_written"] == 16
    assert out["tiles"] == sum(
        s.n_tiles for s in bench.cohort_slides(bench.Design(12, 32, "float16", 0, 0.02))
    )
    store = tmp_path / "s"
    cohort = sql.load_cohort(store, encoder="synthetic-32", targets="expression")
    assert (
        cohort.features.shape == (out["tiles"], 32)
        and cohort.n_bags == 12
        and cohort.y_true.shape == (12, 35)
    )
    con = sql.connect(store)
    assert con.execute("select count(*), min(dtype), min(dim) from embedding_files").fetchone() == (
        16,
        "float16",
        32,
    )
    assert con.execute("select count(*) from slides where status = 'ok'").fetchone() == (16,)
    truth = json.loads((store / bench.TRUTH_DIR / "truth.json").read_text())
    kinds = {g["kind"] for g in truth["genes"].values()}
    assert kinds == {"compartment", "hotspot", "noise"}
    # resumable: a removed slide is rewritten identically, the rest skipped
    victim = next((store / "embeddings").rglob("*.parquet"))
    before = victim.read_bytes()
    victim.unlink()
    again = bench.main(args)
    assert again["slides_written"] == 1 and again["slides_skipped"] == 15
    assert (
        pq.read_table(victim)
        .column("embedding")
        .equals(pq.read_table(pa.BufferReader(before)).column("embedding"))
    )


def test_tile_counts_follow_the_design(bench):
    counts = np.array([s.n_tiles for s in bench.cohort_slides(bench.Design(600, 1536, "float16", 0, 1.0))])
    assert len(counts) == 800 and counts.sum() >= 9_000_000
    assert counts.min() >= bench.MIN_TILES and counts.max() <= bench.MAX_TILES
    assert 7_500 <= np.median(counts) <= 8_500
    assert counts.sum() * 1536 * 2 >= 26e9


def test_refuses_the_repository(bench):
    with pytest.raises(SystemExit, match="inside the repository"):
        bench.main(["write", "--out", str(BENCH.parent / "store"), "--patients", "1"])


@pytest.mark.slow  # 35 genes × three models and their nulls: ~20 s on two shared cores
def test_compare_section_reads_the_store_on_access(bench, tmp_path):
    store = tmp_path / "s"
    bench.main(["write", "--out", str(store), "--patients", "12", "--dim", "32", "--tile-scale", "0.02"])
    params = {"mil": {"max_tiles": 64, "max_epochs": 2, "min_epochs": 0, "n_inner": 2, "pca_components": 4}}
    out = bench.compare_once(store, path="lazy", n_folds=3, params=params, max_memory_gb=2.0)
    assert out["bags"] == 12 and out["path"] == "lazy"
    assert {"open", "plan", "pooled features", "fit", "null", "summarise and write"} <= set(out["stages"])
    assert 0 < out["peak_rss_gb"] == max(s["peak_rss_gb"] for s in out["stages"].values())
    assert set(out["pooled_r_median_by_kind"]) == {"mil", "lgbm", "ridge", "mean"}
    assert set(out["pooled_r_median_by_kind"]["ridge"]) == {"compartment", "hotspot", "noise"}
    assert out["attention_rows"] == out["tiles"] * 35


def test_explain_section_explains_a_fabricated_run(bench, tmp_path):
    from slide2expr.contract import ATTENTION_ROW_GROUP_ROWS

    store, run_dir = tmp_path / "s", tmp_path / "r"
    bench.main(["write", "--out", str(store), "--patients", "8", "--dim", "16", "--tile-scale", "0.02"])
    args = ["explain", "--store", str(store), "--run-dir", str(run_dir), "--genes", "2", "--top-slides", "1"]
    out = bench.main(args)
    runs = ("explain", "explain_no_gallery", "explain_attention_genes", "report")
    assert {"store", "run", "report_mb_target", *runs} <= set(out)
    assert out["store"]["patients"] == 8 and out["run"]["attention_genes_per_fold"] == 2
    # every held-out tile has attention for its fold's 2 genes, in row groups of the contract's size
    rows = out["run"]["attention_rows"]
    assert rows == out["store"]["tiles"] * 2
    assert out["run"]["attention_row_groups"] == -(-rows // ATTENTION_ROW_GROUP_ROWS)
    for key in runs:
        assert out[key]["returncode"] == 0 and out[key]["peak_rss_gb"] > 0 and out[key]["wall_s"] > 0
    ex = out["explain"]
    assert {"plan", "heatmaps", "gallery", "report"} <= set(ex["stages"])
    assert "gallery" not in out["explain_no_gallery"]["stages"]
    assert ex["genes"] == 35 and out["explain_attention_genes"]["genes"] == len(out["run"]["attention_genes"])
    # 10 slides (at most 200): hotspots and detections on every slide with attention
    assert ex["heatmaps"] >= 1 and ex["detections"] == ex["hotspot_slides"] == out["store"]["slides"]
    explained = run_dir / "run" / "explain"
    assert round((explained / "report.html").stat().st_size / 1e6, 3) == out["report"]["report_mb"] > 0
    assert len(list((explained / "maps").rglob("*.png"))) == ex["heatmaps"]
    assert (run_dir / "explain-no-gallery" / "report.html").is_file()
    assert (run_dir / "explain-attention-genes" / "manifest.json").is_file()
    # a folder the section did not write is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="did not write"):
        bench.main(["explain", "--store", str(store), "--run-dir", str(tmp_path / "other")])
