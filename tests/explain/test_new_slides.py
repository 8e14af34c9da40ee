"""explain on a prediction directory (slides a model never saw): maps, hotspots, QuPath detections, overlays; and
outputs that never lie: checked first, swapped in whole, refused without overwrite, restored on failure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slide2expr import explain
from slide2expr.contract import PREDICT_FOLD, PREDICTION_KIND, OutputExistsError, write_table_atomic
from slide2expr.explain import ExplainError, ExplainInterrupted, explain_run
from tests.explain.conftest import ENCODER, GENES, SIZE, TILE0, TILING
from tests.explain.test_hotspots import check_polygon


def make_prediction_dir(toy, root, *, truth: bool = True):
    """A prediction directory in the contract's layout from the toy run's MIL outputs: fold -1, no true values."""
    root.mkdir(parents=True)
    att = pq.read_table(toy.run / "attention.parquet").to_pandas()
    att = att[att["model"] == "mil"].assign(fold=np.int32(PREDICT_FOLD))
    write_table_atomic(pa.Table.from_pandas(att, preserve_index=False), root / "attention.parquet")
    preds = pq.read_table(toy.run / "predictions.parquet").to_pandas()
    preds = preds[preds["model"] == "mil"].assign(fold=np.int32(PREDICT_FOLD), y_true=np.nan)
    write_table_atomic(pa.Table.from_pandas(preds, preserve_index=False), root / "predictions.parquet")
    if truth:
        shutil.copy(toy.run / "truth_tiles.parquet", root / "truth_tiles.parquet")
    config = {"kind": PREDICTION_KIND, "model": "mil", "models": ["mil"], "genes": list(GENES), "by": "patient",
              "encoder": ENCODER, "tiling": TILING, "store": str(toy.store), "fold": PREDICT_FOLD}  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    return root


def _files(*roots):
    """Every file under ``roots`` (hidden ones included) with its bytes, and every folder."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[p] = p.read_bytes() if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def predicted(toy, tmp_path_factory):
    pred = make_prediction_dir(toy, tmp_path_factory.mktemp("predicted") / "pred")
    return pred, explain_run(pred, store=toy.store, genes=["HOTA", "NOISE1"], top_slides=2, overlays=True)


def test_new_slides_get_maps_hotspots_and_geojson(predicted, toy):
    geojson = pytest.importorskip("geojson", reason="the geojson package validates the FeatureCollections")
    pred, res = predicted
    assert res.out == pred / "explain" and res.report is None and not (res.out / "shap").exists()
    notes = " ".join(res.notes)
    assert "no SHAP" in notes and "no report.html" in notes and "highest predicted expression" in notes
    assert sorted(p.name for p in (res.out / "maps" / "mil").iterdir()) == ["HOTA", "NOISE1"]
    assert len(list((res.out / "maps" / "mil" / "HOTA").glob("*_percentile.png"))) == 2
    assert not (res.out / "gallery").exists() and not (res.out / "figures" / "scatter.png").exists()
    assert res.geojson and all(p.parent == res.out / "geojson" for p in res.geojson)
    for path in res.geojson:
        fc = geojson.loads(path.read_text())
        assert fc.is_valid, fc.errors()
        for f in fc["features"]:
            check_polygon(f["geometry"], slide_size=SIZE)
            assert f["properties"]["objectType"] == "annotation"
    # localisation of the predicted maps against the truth of the new slides
    loc = res.localisation.set_index(["gene", "score"])
    assert loc.loc[("HOTA", "attention"), "auroc"] > 0.95 and loc.loc[("HOTA", "tile_pred"), "auroc"] > 0.95
    assert pq.read_table(pred / "localisation.parquet").num_rows == len(res.localisation)


def test_tile_detections_carry_each_tiles_scores_for_qupath(predicted, toy):
    geojson = pytest.importorskip("geojson", reason="the geojson package validates the FeatureCollections")
    shapely_geometry = pytest.importorskip("shapely.geometry")
    pred, res = predicted
    assert sorted(p.stem for p in res.detections) == sorted(toy.slides)
    att = pq.read_table(pred / "attention.parquet").to_pandas()
    sid = toy.slides[0]  # two slides in one bag: attention × the bag's tiles of both slides
    fc = geojson.loads((res.out / "detections" / f"{sid}.geojson").read_text())
    assert fc.is_valid, fc.errors()
    assert len(fc["features"]) == (SIZE[0] // TILE0) * (SIZE[1] // TILE0)
    ids = {f["id"] for f in fc["features"]}
    assert len(ids) == len(fc["features"])
    a = att[(att["slide_id"] == sid) & (att["gene"] == "HOTA")].set_index("tile_id")
    n_bag = ((att["bag_id"] == a["bag_id"].iloc[0]) & (att["gene"] == "HOTA")).sum()
    for f in fc["features"]:
        props = f["properties"]
        assert props["objectType"] == "detection"
        tid = int(props["name"].split()[-1])
        box = shapely_geometry.shape(f["geometry"])
        assert box.is_valid and box.area == TILE0 * TILE0
        assert box.bounds[:2] == (a.loc[tid, "x"], a.loc[tid, "y"])
        m = props["measurements"]
        assert set(m) == {"HOTA attention", "HOTA prediction", "NOISE1 attention", "NOISE1 prediction"}
        assert m["HOTA attention"] == pytest.approx(a.loc[tid, "attention"] * n_bag, rel=1e-5)
        assert m["HOTA prediction"] == pytest.approx(a.loc[tid, "tile_pred"], rel=1e-5)
    hot = [f["properties"]["measurements"]["HOTA attention"] for f in fc["features"]]
    drivers = toy.drivers[sid]["HOTA"]
    assert np.mean(np.asarray(hot)[drivers > 0]) > 2 * np.mean(np.asarray(hot)[drivers == 0])


def test_overlays_are_pyramidal_tiffs_aligned_to_the_slide(predicted, toy):
    import openslide

    pred, res = predicted
    assert len(res.overlays) == 2 * 2 * 2  # genes × slides × (attention, prediction)
    path = next(p for p in res.overlays if p.parent.name == "HOTA" and p.name.endswith("_attention.tiff"))
    sid = path.name.removesuffix("_attention.tiff")
    with openslide.OpenSlide(path) as o:
        assert o.dimensions == SIZE and o.level_count >= 2
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert "HOTA attention" in o.properties["tiff.ImageDescription"]
        pixels = np.asarray(o.read_region((0, 0), 0, SIZE).convert("RGB")).astype(float)
    att = pq.read_table(pred / "attention.parquet").to_pandas()
    a = att[(att["slide_id"] == sid) & (att["gene"] == "HOTA")].sort_values("attention")
    lo, hi = a.iloc[0], a.iloc[-1]
    # inferno: the highest tile is pale yellow, the lowest near black, each over its whole tile
    top = pixels[hi.y : hi.y + TILE0, hi.x : hi.x + TILE0]
    bottom = pixels[lo.y : lo.y + TILE0, lo.x : lo.x + TILE0]
    assert top.std(axis=(0, 1)).max() == 0 and top.mean() > 200
    assert bottom.mean() < 60


def test_the_plan_lists_detections_and_overlays(toy, tmp_path):
    pred = make_prediction_dir(toy, tmp_path / "pred", truth=False)
    plan = explain.plan_explain(pred, store=toy.store, overlays=True, genes=["HOTA"], top_slides=1)
    assert plan.kind == "predictions" and plan.trees == () and not plan.gallery and not plan.report
    assert plan.map_slides_by == "highest predicted expression" and not plan.localisation
    with pytest.raises(ExplainError, match="largest-error' needs true expression"):
        explain.plan_explain(pred, store=toy.store, genes=["HOTA"], top_by="largest-error")
    rel = {p.relative_to(plan.out).as_posix() for p in plan.outputs()}
    assert {f"detections/{s}.geojson" for s in toy.slides} <= rel
    sid = plan.map_slides["HOTA"][0]
    assert {f"overlays/mil/HOTA/{sid}_attention.tiff", f"overlays/mil/HOTA/{sid}_prediction.tiff"} <= rel
    res = explain_run(pred, store=toy.store, genes=["HOTA"], top_slides=1, detections=False, report=False)
    assert not (res.out / "detections").exists() and res.detections == []
    assert {p.relative_to(res.out).as_posix() for p in res.out.rglob("*") if p.is_file()} <= rel


# ---- outputs that never lie -------------------------------------------------------------------------------------


@pytest.fixture
def own_run(toy, tmp_path):
    """A copy of the toy run (explain writes the run's localisation.parquet; the shared one stays untouched)."""
    run = tmp_path / "run"
    shutil.copytree(toy.run, run)
    return run


def test_a_failed_explain_leaves_the_previous_output_byte_identical(toy, own_run, monkeypatch):
    from slide2expr.explain import _run

    out = own_run / "explain"
    explain_run(own_run, store=toy.store, genes=["HOTA"], models=["mil"], top_slides=1, report=False)
    before = _files(own_run)
    assert (own_run / "localisation.parquet") in before
    with pytest.raises(OutputExistsError, match="not empty .*earlier explain output.*--overwrite"):
        explain_run(own_run, store=toy.store, genes=["HOTA"])
    with pytest.raises(ExplainError, match=r"genes \['HOTAA'\] are not in the run"):  # a typo, caught first
        explain_run(own_run, store=toy.store, genes=["HOTAA"], overwrite=True)
    with pytest.raises(ExplainError, match="NOPE-SLIDE"):
        explain_run(own_run, store=toy.store, slides=["NOPE-SLIDE"], overwrite=True)
    assert _files(own_run) == before

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(_run, "write_report", broken)  # fails after localisation.parquet was replaced
    with pytest.raises(RuntimeError, match="disk full"):
        explain_run(own_run, store=toy.store, genes=["NOISE1"], models=["mil"], top_slides=1, overwrite=True)
    assert _files(own_run) == before

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_run, "gallery", ctrl_c)
    with pytest.raises(ExplainInterrupted) as err:
        explain_run(own_run, store=toy.store, genes=["NOISE1"], models=["mil"], top_slides=1, overwrite=True)
    assert err.value.stage == "gallery" and "heatmaps" in err.value.done and "scatter plots" in err.value.done
    assert f"nothing written to {out}" in str(err.value)
    assert _files(own_run) == before


def test_a_subset_run_leaves_no_stale_maps_of_other_genes(toy, own_run):
    out = own_run / "explain"
    explain_run(own_run, store=toy.store, genes=["HOTA", "STRB"], models=["mil"], top_slides=1, report=False)
    assert sorted(p.name for p in (out / "maps" / "mil").iterdir()) == ["HOTA", "STRB"]
    res = explain_run(
        own_run, store=toy.store, genes=["STRB"], models=["mil"], top_slides=1, report=False, overwrite=True
    )
    assert sorted(p.name for p in (out / "maps" / "mil").iterdir()) == ["STRB"]
    assert set(pd.read_parquet(out / "hotspots.parquet")["gene"]) == {"STRB"}
    for path in res.detections:
        m = json.loads(path.read_text())["features"][0]["properties"]["measurements"]
        assert set(m) == {"STRB attention", "STRB prediction"}
    assert set(pd.read_parquet(own_run / "localisation.parquet")["gene"]) == {"STRB"}
    assert [p.name for p in own_run.iterdir() if p.name.startswith(".")] == []


def test_out_with_files_explain_did_not_write_is_refused(toy, own_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(
            OutputExistsError, match=r"(did not write \(notes.txt\))|(files explain did not write)"
        ):
            explain_run(own_run, store=toy.store, out=mine, genes=["HOTA"], overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(OutputExistsError, match="did not write"):
        explain_run(own_run, store=toy.store, out=own_run, genes=["HOTA"], overwrite=True)  # the run itself


def test_a_model_that_learned_nothing_gets_a_warning_and_no_shap(toy, own_run):
    import joblib
    from lightgbm import LGBMRegressor
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline

    from slide2expr import regress

    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(5, 6)).astype(np.float32) for _ in range(6)]
    for path in (own_run / "models" / "lgbm").glob("fold*.joblib"):
        stump = Pipeline(
            [
                ("pool", regress.BagPooler(stats=("mean", "max"))),
                (
                    "reg",
                    MultiOutputRegressor(LGBMRegressor(n_estimators=5, min_child_samples=50, verbose=-1)),
                ),
            ]
        ).fit(bags, rng.normal(size=(6, len(GENES))))
        assert regress.learned_nothing(stump)
        joblib.dump(stump, path)
    with pytest.warns(explain.LearnedNothingWarning, match="lgbm learned nothing"):
        plan = explain.plan_explain(own_run, store=toy.store, genes=["HOTA"], top_slides=1)
    assert plan.trees == () and plan.learned_nothing == ("lgbm",)
    assert any("lgbm learned nothing" in n for n in plan.notes)
    from typer.testing import CliRunner

    from slide2expr.cli import app

    cli = CliRunner().invoke(
        app, ["explain", str(own_run), "--store", str(toy.store), "--genes", "HOTA", "--dry-run"]
    )
    assert cli.exit_code == 0, cli.output
    assert "warning: lgbm learned nothing" in cli.stderr and "LearnedNothingWarning" not in cli.stderr
    assert "SHAP for none" in cli.stdout
    res = explain.run_plan(plan)
    assert not (res.out / "shap").exists() and "shap" not in res.figures
    assert any("learned nothing" in n for n in json.loads((res.out / "manifest.json").read_text())["notes"])
