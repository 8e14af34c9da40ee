"""explain_run end to end on a fabricated run over real .svs slides: every output checked against the truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slide2expr import explain, sql
from slide2expr.explain import ExplainError, explain_run, gallery, load_run, localisation_auroc
from tests.explain.conftest import GENES, TILE0
from tests.explain.test_hotspots import check_polygon


@pytest.fixture(scope="module")
def explained(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("explained")
    return explain_run(toy.run, store=toy.store, out=out, top_slides=1)


def test_hotspots_table_and_geojson_match_the_slides(explained, toy):
    import openslide

    hs = pq.read_table(explained.out / "hotspots.parquet").to_pandas()
    assert {"model", "score", "gene", "slide_id", "area_mm2", "mean_score", "geometry"} <= set(hs.columns)
    assert set(hs["gene"]) <= set(GENES) and set(hs["slide_id"]) <= set(toy.slides)
    assert (hs["area_mm2"] > 0).all() and (hs["n_cells"] >= 2).all()
    assert len(explained.geojson) == hs["slide_id"].nunique()
    for path in explained.geojson:
        sid = path.stem
        with openslide.OpenSlide(toy.store.parent / "slides" / f"{sid}.svs") as slide:
            size = slide.dimensions
        fc = json.loads(path.read_text())
        assert fc["type"] == "FeatureCollection"
        assert len(fc["features"]) == (hs["slide_id"] == sid).sum()
        for f in fc["features"]:
            check_polygon(f["geometry"], slide_size=size)
            assert f["properties"]["objectType"] == "annotation"
    # HOTA hotspots sit on driver tiles: tiles whose centre lies inside a hotspot are mostly planted drivers,
    # far above the base rate of driver tiles
    from matplotlib.path import Path as MplPath

    centres = np.column_stack([(np.arange(48) % 8 + 0.5) * TILE0, (np.arange(48) // 8 + 0.5) * TILE0])
    inside = []
    for r in hs[hs["gene"] == "HOTA"].itertuples():
        ring = json.loads(r.geometry)["coordinates"][0]
        inside.extend(toy.drivers[r.slide_id]["HOTA"][MplPath(ring).contains_points(centres)])
    base = np.mean(np.concatenate([d["HOTA"] for d in toy.drivers.values()]))
    assert len(inside) >= 2 * len(toy.slides)
    assert np.mean(inside) > max(0.6, 3 * base)


def test_localisation_is_written_to_the_run(explained, toy):
    loc = pq.read_table(toy.run / "localisation.parquet").to_pandas()
    assert list(loc.columns[:6]) == ["model", "gene", "score", "auroc", "n_pos", "n_neg"]
    assert set(loc["score"]) == {"attention", "tile_pred", "shap"}
    n_tiles = sum(len(d["HOTA"]) for d in toy.drivers.values())
    hota = loc[loc["gene"] == "HOTA"].set_index(["model", "score"])
    assert (hota["n_pos"] + hota["n_neg"] == n_tiles).all()
    assert hota.loc[("mil", "attention"), "auroc"] > 0.95
    assert hota.loc[("lgbm", "shap"), "auroc"] > 0.9
    noise = loc[loc["gene"] == "NOISE1"]
    assert (noise["n_pos"] == 0).all() and noise["auroc"].isna().all()
    pd.testing.assert_frame_equal(loc, explained.localisation.reset_index(drop=True), check_dtype=False)


def test_localisation_auroc_on_known_scores():
    truth = pd.DataFrame(
        {
            "slide_id": ["a"] * 4 + ["b"] * 4,
            "tile_id": [0, 1, 2, 3] * 2,
            "gene": "G",
            "driver_frac": [1, 0.6, 0.2, 0, 0, 0, 0.9, 0],
        }
    )
    scores = truth[["slide_id", "tile_id", "gene"]].assign(
        model="m", score="s", value=[4, 3, 2, 1, 1, 2, 3, 0.5]
    )
    loc = localisation_auroc(scores, truth=truth)
    assert loc.loc[0, "n_pos"] == 3 and loc.loc[0, "n_neg"] == 5
    # positives 4, 3, 3 vs negatives 2, 1, 1, 2, 0.5: all pairs ordered
    assert (
        loc.loc[0, "auroc"] == 1.0 and loc.loc[0, "auroc_slide_mean"] == 1.0 and loc.loc[0, "n_slides"] == 2
    )
    flipped = localisation_auroc(scores.assign(value=-scores["value"]), truth=truth)
    assert flipped.loc[0, "auroc"] == 0.0
    with pytest.raises(ExplainError, match="driver_frac"):
        localisation_auroc(scores, truth=truth.drop(columns="driver_frac"))


def test_shap_global_importance_finds_the_planted_dimensions(explained):
    sr = explained.shap["lgbm"]
    gi = sr.global_importance
    top = gi[gi["rank"] == 1].set_index("gene")["feature"]
    assert top["HOTA"] in ("mean_0", "max_0")  # HOTA is planted in embedding dimension 0
    assert top["STRB"] in ("mean_1", "max_1")
    on_disk = pq.read_table(explained.out / "shap" / "global_lgbm.parquet").to_pandas()
    assert len(on_disk) == len(GENES) * 12 and set(on_disk["rank"]) == set(range(1, 13))
    tiles = pq.read_table(explained.out / "shap" / "tiles_lgbm.parquet").to_pandas()
    # local accuracy: pred - sum of a tile's SHAP values is the expected value of its fold's model
    t = tiles[tiles["gene"] == "HOTA"]
    assert t.assign(base=t["pred"] - t["shap_value"]).groupby("fold")["base"].std().max() < 1e-6
    assert t["fold"].nunique() == 3
    assert {"x", "y", "top_feature", "top_feature_shap"} <= set(tiles.columns)
    assert tiles[["x", "y"]].notna().all().all()


def test_shap_tile_values_add_up_to_the_model_output(toy):
    from slide2expr import regress

    sr = explain.shap_tree(toy.run, store=toy.store, model="lgbm", genes=["HOTA"], slides=[toy.slides[0]])
    fold = int(sr.tiles["fold"].iloc[0])
    est = regress.load_fold_models(toy.run, "lgbm")[fold]
    tid, emb = sql.read_embeddings(toy.store, "mpp1.00_px64_ov0", "toy-encoder", toy.slides[0])
    direct = est.predict([emb[i : i + 1] for i in range(len(emb))])[:, 0]
    np.testing.assert_allclose(sr.tiles["pred"].to_numpy(), direct, rtol=1e-6, atol=1e-6)
    with pytest.raises(ExplainError, match="no fitted models"):
        explain.shap_tree(toy.run, store=toy.store, model="mil")
    from sklearn.linear_model import Ridge
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline

    from slide2expr.regress import BagPooler

    ridge = Pipeline([("pool", BagPooler(stats=("mean", "max"))), ("reg", MultiOutputRegressor(Ridge()))])
    ridge.fit([emb[:5], emb[5:20], emb[20:]], np.arange(9.0).reshape(3, 3))
    with pytest.raises(ExplainError, match="not a tree model"):
        explain._shap._tree_parts(ridge, path="ridge/fold0.joblib", n_genes=3)
    with pytest.raises(ExplainError, match="3 fitted regressors but the run has 2 genes"):
        explain._shap._tree_parts(ridge, path="ridge/fold0.joblib", n_genes=2)
    with pytest.raises(ExplainError, match="not in the run"):
        explain.shap_tree(toy.run, store=toy.store, genes=["NOPE"])


def test_gallery_bins_patients_and_reads_full_resolution_tiles(toy):
    import openslide

    g = gallery(toy.run, store=toy.store, gene="HOTA", n_bins=7, top_k=5)
    t = g.table
    assert sorted(t["bin"].unique()) == list(range(7))  # quantile bins over 9 patients: none empty
    assert t.groupby("bin")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()
    assert (t.groupby("bin")["relative_attention"].apply(lambda a: (np.diff(a) <= 0).all())).all()
    assert ((t["y_true"] >= t["bin_lo"] - 1e-12) & (t["y_true"] <= t["bin_hi"] + 1e-12)).all()
    assert t.groupby("bin")["y_true"].min().is_monotonic_increasing
    assert len(g.images) == len(t)
    r = t.iloc[0]
    with openslide.OpenSlide(toy.store.parent / "slides" / f"{r.slide_id}.svs") as s:
        ref = np.asarray(s.read_region((int(r.x), int(r.y)), 0, (int(r.w), int(r.h))).convert("RGB"))
    assert g.images[0].shape == (TILE0, TILE0, 3)
    np.testing.assert_array_equal(g.images[0], ref)
    # top tiles of the highest bin are driver tiles of HOTA
    top = t[t["bin"] == 6]
    assert (
        np.mean([toy.drivers[s]["HOTA"][i] for s, i in zip(top["slide_id"], top["tile_id"], strict=True)])
        >= 0.8
    )
    fig = explain.plot_gallery(g)
    assert len([ax for ax in fig.axes if ax.get_images()]) == len(t)
    with pytest.raises(ExplainError, match="no attention rows"):
        gallery(toy.run, store=toy.store, gene="HOTA", model="lgbm")


def test_the_plan_lists_what_the_run_writes(explained, toy):
    plan = explain.plan_explain(toy.run, store=toy.store, out=explained.out, top_slides=1, overwrite=True)
    assert plan.trees == ("lgbm",) and plan.map_model == "mil" and plan.localisation
    written = {p for p in explained.out.rglob("*") if p.is_file()} | {toy.run / "localisation.parquet"}
    listed = set(plan.outputs())
    assert written <= listed
    assert {explained.out / "geojson" / f"{s}.geojson" for s in plan.hotspot_slides} - written == (
        listed - written
    )  # only slides without hotspots have no GeoJSON
    assert {explained.out / "detections" / f"{s}.geojson" for s in plan.hotspot_slides} <= written


def test_manifest_lists_the_figures_by_section(explained):
    manifest = json.loads((explained.out / "manifest.json").read_text())
    assert set(manifest["figures"]) == {"scatter", "shap", "heatmaps", "gallery", "localisation"}
    assert len(manifest["figures"]["heatmaps"]) == len(GENES)  # top_slides=1: one slide per gene


def test_manifest_says_how_the_map_slides_were_chosen(explained):
    manifest = json.loads((explained.out / "manifest.json").read_text())
    assert manifest["map_slides"]["chosen_by"] == "highest true expression"
    assert set(manifest["map_slides"]["slides"]) == set(GENES)


@pytest.mark.parametrize("top_by", ["highest", "lowest", "largest-error"])
def test_map_slides_ranked_by_a_rule(toy, top_by):
    """Per gene, the slides of the top bags by true expression (either end) or by the map model's absolute error,
    computed here from the run's predictions."""
    run = load_run(toy.run)
    plan = explain.plan_explain(toy.run, store=toy.store, top_slides=2, top_by=top_by, overwrite=True)
    pred = run.table("predictions")
    att = run.table("attention")
    slide_of = att[att["model"] == "mil"].groupby("bag_id")["slide_id"].min()
    for g in GENES:
        p = pred[(pred["gene"] == g) & (pred["model"] == "mil")].groupby("bag_id")
        if top_by == "largest-error":
            value = (p["y_pred"].mean() - p["y_true"].first()).abs()
        else:
            value = p["y_true"].first() * (1 if top_by == "highest" else -1)
        want = [slide_of[b] for b in value.sort_values(ascending=False, kind="stable").index[:2]]
        assert plan.map_slides[g] == want, g
    assert plan.map_slides_by == (
        "largest error of mil" if top_by == "largest-error" else f"{top_by} true expression"
    )


def test_an_unknown_ranking_rule_is_refused(toy):
    with pytest.raises(ExplainError, match="top_by='worst'.*highest, lowest, largest-error"):
        explain.plan_explain(toy.run, store=toy.store, top_by="worst", overwrite=True)


def test_missing_inputs_give_clear_errors(toy, tmp_path):
    with pytest.raises(ExplainError, match="not a run directory"):
        load_run(tmp_path)
    with pytest.raises(ExplainError, match=r"genes \['NOPE'\] are not in the run"):
        explain_run(toy.run, store=toy.store, out=tmp_path, genes=["NOPE"])
    with pytest.raises(ExplainError, match="models"):
        explain_run(toy.run, store=toy.store, out=tmp_path, models=["xgb"])
