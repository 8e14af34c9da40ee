from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from slide2expr.explain import ExplainError, find_hotspots, gene_colors, hotspots_to_geojson, tile_score_map

CELL = 256
MPP = 0.5


def _map(values: np.ndarray, *, slide_size=None):
    """A score map whose cells are exactly ``values`` (NaN: no tile)."""
    rows, cols = values.shape
    gy, gx = np.nonzero(np.isfinite(values))
    tiles = pd.DataFrame({"x": gx * CELL, "y": gy * CELL, "w": CELL, "h": CELL})
    size = slide_size or (cols * CELL, rows * CELL)
    return tile_score_map(tiles, values[gy, gx], slide_size=size, mpp=(MPP, MPP), cell_px=CELL)


def check_polygon(geom: dict, *, slide_size: tuple[int, int]) -> None:
    """A GeoJSON Polygon: closed rings of >= 4 positions, inside the slide, valid and oriented (RFC 7946)."""
    assert geom["type"] == "Polygon"
    w, h = slide_size
    for i, ring in enumerate(geom["coordinates"]):
        ring = np.asarray(ring, dtype=float)
        assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
        assert np.array_equal(ring[0], ring[-1]), "ring not closed"
        assert (ring[:, 0] >= 0).all() and (ring[:, 0] <= w).all()
        assert (ring[:, 1] >= 0).all() and (ring[:, 1] <= h).all()
        area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert (area > 0) == (i == 0), "exterior counter-clockwise, holes clockwise"
    shapely_geometry = pytest.importorskip("shapely.geometry", reason="shapely checks polygon validity")
    poly = shapely_geometry.shape(geom)
    assert poly.is_valid, poly


def test_one_block_is_one_hotspot_with_exact_area():
    v = np.zeros((8, 10))
    v[2:5, 3:7] = 5.0  # 12 cells
    v[6, 8] = 1.0
    hs = find_hotspots(_map(v), threshold=4.0, min_cells=1)
    assert len(hs) == 1
    h = hs.iloc[0]
    assert h.n_cells == 12
    assert h.area_mm2 == pytest.approx(12 * (CELL * MPP / 1000) ** 2)
    assert h.mean_score == 5.0 and h.max_score == 5.0
    assert (h.bbox_x0, h.bbox_y0, h.bbox_x1, h.bbox_y1) == (3 * CELL, 2 * CELL, 7 * CELL, 5 * CELL)
    assert (h.centroid_x, h.centroid_y) == (5 * CELL, 3.5 * CELL)
    geom = json.loads(h.geometry)
    check_polygon(geom, slide_size=(10 * CELL, 8 * CELL))
    ring = np.asarray(geom["coordinates"][0])
    # traced along the cell boundaries: exact straight edges, corners cut by 1/8 of a cell
    assert ring[:, 0].min() == 3 * CELL and ring[:, 0].max() == 7 * CELL
    assert ring[:, 1].min() == 2 * CELL and ring[:, 1].max() == 5 * CELL


def test_regions_with_holes_diagonal_contacts_and_min_cells():
    v = np.zeros((9, 9))
    v[1:6, 1:6] = 1.0
    v[3, 3] = 0.0  # a hole
    v[6, 6] = 1.0  # touches the block only at a corner: its own region (4-connectivity)
    v[8, 0] = 1.0  # single cell
    hs = find_hotspots(_map(v), threshold=0.5, min_cells=1)
    assert list(hs.n_cells) == [24, 1, 1]
    big = json.loads(hs.iloc[0].geometry)
    assert len(big["coordinates"]) == 2  # exterior + the hole
    for g in hs.geometry:
        check_polygon(json.loads(g), slide_size=(9 * CELL, 9 * CELL))
    assert list(find_hotspots(_map(v), threshold=0.5, min_cells=2).n_cells) == [24]


@pytest.mark.parametrize("seed", range(6))
def test_random_fields_give_valid_polygons_covering_the_cells(seed):
    shapely_geometry = pytest.importorskip("shapely.geometry")
    rng = np.random.default_rng(seed)
    v = rng.random((14, 17))
    v[rng.random(v.shape) < 0.15] = np.nan  # background
    m = _map(v, slide_size=(17 * CELL - 40, 14 * CELL - 7))  # last tiles overhang the slide edge
    hs = find_hotspots(m, percentile=60, min_cells=1)
    assert hs.n_cells.sum() == (v >= np.nanpercentile(v, 60)).sum()
    total = 0.0
    for g in hs.geometry:
        geom = json.loads(g)
        check_polygon(geom, slide_size=m.slide_size)
        total += shapely_geometry.shape(geom).area
    # corners are cut by 1/8 of a cell and the overhang is clipped: the traced area is close to the cells' area
    assert 0.8 * hs.n_cells.sum() * CELL**2 < total <= hs.n_cells.sum() * CELL**2
    polys = [shapely_geometry.shape(json.loads(g)) for g in hs.geometry]
    for i in range(len(polys)):
        for j in range(i + 1, len(polys)):
            assert polys[i].intersection(polys[j]).area == 0


def test_percentile_threshold_is_over_the_slide_tiles():
    v = np.arange(20, dtype=float).reshape(4, 5)
    hs = find_hotspots(_map(v), percentile=90, min_cells=1)
    assert hs.threshold.iloc[0] == pytest.approx(np.percentile(np.arange(20), 90))
    assert hs.n_cells.sum() == 2
    with pytest.raises(ExplainError, match="percentile must be within"):
        find_hotspots(_map(v), percentile=120)
    with pytest.raises(ExplainError, match="min_cells"):
        find_hotspots(_map(v), percentile=50, min_cells=0)
    empty = find_hotspots(_map(v), threshold=100.0)
    assert empty.empty and "geometry" in empty.columns


def test_geojson_feature_collection_is_what_qupath_reads():
    v = np.zeros((6, 6))
    v[1:3, 1:3] = 2.0
    v[4:6, 3:6] = 3.0
    hs = find_hotspots(_map(v), threshold=1.0).assign(
        gene="GNLY", model="mil", score="attention", slide_id="S1"
    )
    hs2 = hs.assign(gene="FBN1")
    colors = gene_colors(["GNLY", "FBN1"])
    fc = hotspots_to_geojson(pd.concat([hs, hs2], ignore_index=True), colors=colors)
    text = json.dumps(fc)  # JSON-serialisable, no numpy types
    fc = json.loads(text)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    ids = set()
    for f in fc["features"]:
        assert f["type"] == "Feature"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] in ("GNLY", "FBN1")
        assert props["classification"]["color"] == colors[props["classification"]["name"]]
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in props["classification"]["color"])
        assert props["measurements"]["area_mm2"] > 0 and props["measurements"]["n_cells"] >= 2
        assert props["classification"]["name"] in props["name"]
        check_polygon(f["geometry"], slide_size=(6 * CELL, 6 * CELL))
        ids.add(f["id"])
    assert len(ids) == 4
    assert colors["GNLY"] != colors["FBN1"]
    with pytest.raises(ExplainError, match="gene"):
        hotspots_to_geojson(hs.drop(columns="gene"))
    assert (
        hotspots_to_geojson(hs.drop(columns="gene"), gene="X")["features"][0]["properties"]["classification"][
            "name"
        ]
        == "X"
    )
