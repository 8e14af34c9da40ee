"""End to end on slides a model never saw: train on one synthetic cohort, predict and explain a held-out cohort
(localisation against its planted truth) and the real CMU slide; maps, hotspots and tile detections that GeoJSON
libraries validate, overlays aligned to the slides."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from slide2expr import explain, featurize, regress, sql, synth

pytestmark = pytest.mark.slow

ENCODER = "stain-texture"
#: compartment-driven genes (stroma, lymphocytes, …) whose tile predictions localise even with few patients
GENES = ["SEMA5A", "TIMP3", "VAV2"]
MIL = {"max_epochs": 20, "device": "cpu", "attention": "tanh", "dropout": 0.0, "pca_components": 16}


def _cohort(store, targets="expr"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        return sql.load_cohort(store, encoder=ENCODER, targets=targets)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MIL model trained on an 8-patient synthetic cohort, and a 4-patient held-out cohort featurized alike."""
    root = tmp_path_factory.mktemp("new slides e2e")
    options = featurize.FeaturizeOptions(encoder=ENCODER, mpp=1.0, tile_px=112, workers=0)
    for name, seed, n in (("train", 5, 8), ("new", 6, 4)):
        synth.make_cohort(root / name, n_patients=n, seed=seed, size=(2000, 2500))
        featurize.featurize_cohort(root / name / "slides.csv", store=root / f"store_{name}", options=options)
        regress.import_targets(
            root / name / "expression.csv", store=root / f"store_{name}", name="expr", transform="log1p"
        )
    regress.train(_cohort(root / "store_train"), model="mil", model_params=MIL, out=root / "model")
    return root, options


def _check_feature_collections(paths, *, slide_size, object_type):
    geojson = pytest.importorskip("geojson")
    shapely_geometry = pytest.importorskip("shapely.geometry")
    for path in paths:
        fc = geojson.loads(path.read_text())
        assert fc.is_valid, (path, fc.errors())
        for f in fc["features"]:
            poly = shapely_geometry.shape(f["geometry"])
            assert poly.is_valid and poly.area > 0
            x0, y0, x1, y1 = poly.bounds
            assert x0 >= 0 and y0 >= 0 and x1 <= slide_size[0] and y1 <= slide_size[1]
            assert f["properties"]["objectType"] == object_type


def test_a_held_out_synthetic_cohort_is_mapped_where_its_truth_is(trained):
    root, _ = trained
    new = _cohort(root / "store_new")
    pred = root / "pred"
    regress.predict(new, model=root / "model", out=pred, store=root / "store_new", targets="expr")
    synth.write_truth_tiles(
        root / "new", store=root / "store_new", tiling=new.tiling, out=pred / "truth_tiles.parquet"
    )
    res = explain.explain_run(pred, store=root / "store_new", genes=GENES, top_slides=1, overlays=True)
    assert res.report is None and res.geojson and len(res.detections) == len(set(new.slide_ids))
    slides = sql.read_slides(root / "store_new").set_index("slide_id")
    for sid in {p.stem for p in res.detections}:
        size = (int(slides.loc[sid, "width"]), int(slides.loc[sid, "height"]))
        _check_feature_collections(
            [p for p in res.geojson if p.stem == sid], slide_size=size, object_type="annotation"
        )
        _check_feature_collections(
            [res.out / "detections" / f"{sid}.geojson"], slide_size=size, object_type="detection"
        )
    loc = res.localisation.set_index(["gene", "score"])
    tile_pred = loc.xs("tile_pred", level="score")["auroc"]
    assert tile_pred.notna().all() and tile_pred.median() > 0.75, res.localisation


def test_the_real_cmu_slide_gets_maps_and_qupath_files(trained, cmu_slide):
    import openslide

    root, options = trained
    store = root / "store_cmu"
    featurize.featurize_cohort([cmu_slide], store=store, options=options)
    cohort = sql.load_cohort(store, encoder=ENCODER)
    res = explain.explain_model(
        root / "model", store=store, out=root / "pred_cmu", genes=GENES[:1], overlays=True, top_slides=1
    )
    with openslide.OpenSlide(cmu_slide) as s:
        size = s.dimensions
    assert res.out == root / "pred_cmu" / "explain"
    assert [p.stem for p in res.detections] == ["cmu_small_region"]
    _check_feature_collections(res.geojson, slide_size=size, object_type="annotation")
    _check_feature_collections(res.detections, slide_size=size, object_type="detection")
    detections = json.loads(res.detections[0].read_text())["features"]
    assert len(detections) == len(cohort.tile_ids)
    values = [f["properties"]["measurements"][f"{GENES[0]} prediction"] for f in detections]
    assert np.isfinite(values).all() and np.std(values) > 0
    assert (res.out / "maps" / "mil" / GENES[0] / "cmu_small_region_percentile.png").stat().st_size > 10_000
    for overlay in res.overlays:
        with openslide.OpenSlide(overlay) as o:
            assert o.dimensions == size and o.level_count >= 2
