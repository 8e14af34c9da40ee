"""Hotspots: connected high-score regions of a score map, as a table and as QuPath-readable GeoJSON."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.explain._inputs import ExplainError
from slide2expr.explain._maps import ScoreMap

HOTSPOT_COLUMNS = (
    "hotspot_id",
    "n_cells",
    "area_mm2",
    "mean_score",
    "max_score",
    "threshold",
    "centroid_x",
    "centroid_y",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "geometry",
)

_UPSAMPLE = 4  # contour tracing on a 4x finer grid: straight edges exact, corners cut by 1/8 of a cell


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _clean_ring(ring: np.ndarray) -> np.ndarray:
    """Drop repeated and collinear vertices; return a closed ring (first == last)."""
    from skimage.measure import approximate_polygon

    ring = approximate_polygon(ring, tolerance=1e-6)
    keep = np.ones(len(ring), bool)
    keep[1:] = np.any(np.diff(ring, axis=0) != 0, axis=1)
    ring = ring[keep]
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


def _region_rings(mask: np.ndarray) -> list[np.ndarray]:
    """Rings (exterior first, then holes) of one 4-connected region, in cell units (cell (r, c) spans [c, c+1))."""
    from skimage.measure import find_contours

    k = _UPSAMPLE
    padded = np.pad(mask, 1)
    up = np.kron(padded, np.ones((k, k), dtype=np.uint8)).astype(np.float64)
    # fully_connected="low": background is 8-connected, so the region (4-connected, as labelled) is traced as one
    # piece and diagonal contacts between regions never produce self-touching rings
    contours = find_contours(up, 0.5, fully_connected="low")
    rings = []
    for c in contours:
        # (row, col) of upsampled pixel centres -> (x, y) in cell units of the unpadded grid
        xy = np.column_stack([(c[:, 1] + 0.5) / k - 1.0, (c[:, 0] + 0.5) / k - 1.0])
        rings.append(_clean_ring(xy))
    rings.sort(key=lambda r: -abs(_signed_area(r)))
    out = []
    for i, r in enumerate(rings):
        # GeoJSON right-hand rule (RFC 7946): exterior counter-clockwise, holes clockwise (in x/y as written)
        want_positive = i == 0
        if (_signed_area(r) > 0) != want_positive:
            r = r[::-1]
        out.append(r)
    return out


def check_hotspot_args(percentile: float | None, min_cells: int, *, threshold: float | None = None) -> None:
    """Raise :class:`ExplainError` unless the hotspot threshold and smallest size are usable.

    Examples
    --------
    >>> try:
    ...     check_hotspot_args(101, 2)
    ... except ExplainError as exc:
    ...     print(exc)
    percentile must be within [0, 100] (or give threshold=), got 101
    """
    if threshold is None and (percentile is None or not 0 <= percentile <= 100):
        raise ExplainError(f"percentile must be within [0, 100] (or give threshold=), got {percentile!r}")
    if min_cells < 1:
        raise ExplainError(f"min_cells must be at least 1, got {min_cells}")


def find_hotspots(
    score_map: ScoreMap,
    *,
    percentile: float | None = 90.0,
    threshold: float | None = None,
    min_cells: int = 2,
) -> pd.DataFrame:
    """Connected regions of high score on a slide's score map.

    Cells scoring at least the threshold are labelled into 4-connected regions (``skimage.measure.label``) on the
    tile-resolution grid; each region with at least ``min_cells`` cells is a hotspot, its outline traced along the
    cell boundaries.

    Parameters
    ----------
    score_map
        From :func:`tile_score_map`.
    percentile
        Threshold as a percentile (0–100) of the slide's tile scores; ignored when ``threshold`` is given.
    threshold
        Threshold as a score value.
    min_cells
        Smallest region kept, in grid cells.

    Returns
    -------
    pandas.DataFrame
        One row per hotspot, largest first: ``hotspot_id`` (1…), ``n_cells``, ``area_mm2`` (cells × cell area from
        the slide's mpp), ``mean_score`` and ``max_score`` (over the region's cells), ``threshold``, ``centroid_x/y``
        and ``bbox_x0/y0/x1/y1`` (level-0 px), ``geometry`` (a GeoJSON Polygon as a JSON string, level-0 px,
        closed rings, exterior first).
    """
    from skimage.measure import label, regionprops

    check_hotspot_args(percentile, min_cells, threshold=threshold)
    vals = score_map.values
    finite = np.isfinite(vals)
    if threshold is None:
        ref = score_map.tile_values[np.isfinite(score_map.tile_values)]
        if ref.size == 0:
            return pd.DataFrame({c: [] for c in HOTSPOT_COLUMNS})
        threshold = float(np.percentile(ref, percentile))
    mask = finite & (np.where(finite, vals, -np.inf) >= threshold)
    labels = label(mask, connectivity=1)
    cell, (ox, oy) = score_map.cell_px, score_map.origin
    width, height = score_map.slide_size
    rows = []
    for reg in regionprops(labels):
        if reg.area < min_cells:
            continue
        r0, c0, r1, c1 = reg.bbox
        sub = labels[r0:r1, c0:c1] == reg.label
        rings = []
        for ring in _region_rings(sub):
            xy = np.column_stack([ox + (ring[:, 0] + c0) * cell, oy + (ring[:, 1] + r0) * cell])
            xy[:, 0] = np.clip(xy[:, 0], 0, width)
            xy[:, 1] = np.clip(xy[:, 1], 0, height)
            rings.append(np.round(xy, 2).tolist())
        region_vals = vals[reg.coords[:, 0], reg.coords[:, 1]]
        cy, cx = reg.centroid
        rows.append(
            {
                "n_cells": int(reg.area),
                "area_mm2": float(reg.area * score_map.cell_area_mm2),
                "mean_score": float(region_vals.mean()),
                "max_score": float(region_vals.max()),
                "threshold": float(threshold),
                "centroid_x": float(ox + (cx + 0.5) * cell),
                "centroid_y": float(oy + (cy + 0.5) * cell),
                "bbox_x0": float(max(ox + c0 * cell, 0)),
                "bbox_y0": float(max(oy + r0 * cell, 0)),
                "bbox_x1": float(min(ox + c1 * cell, width)),
                "bbox_y1": float(min(oy + r1 * cell, height)),
                "geometry": json.dumps({"type": "Polygon", "coordinates": rings}),
            }
        )
    rows.sort(key=lambda r: (-r["n_cells"], -r["mean_score"]))
    for i, r in enumerate(rows):
        r["hotspot_id"] = i + 1
    return pd.DataFrame(rows, columns=list(HOTSPOT_COLUMNS))


def gene_colors(genes) -> dict[str, list[int]]:
    """A stable RGB colour (0–255) per gene, in the given order (matplotlib's tab10, then tab20b).

    >>> gene_colors(["GNLY", "FBN1"])
    {'GNLY': [31, 119, 180], 'FBN1': [255, 127, 14]}
    """
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors) + list(colormaps["tab20b"].colors)
    return {g: [int(round(255 * c)) for c in palette[i % len(palette)][:3]] for i, g in enumerate(genes)}


def hotspots_to_geojson(
    hotspots: pd.DataFrame,
    *,
    colors: dict[str, list[int]] | None = None,
    gene: str | None = None,
) -> dict:
    """A GeoJSON FeatureCollection of hotspots that QuPath imports as annotations.

    Parameters
    ----------
    hotspots
        Rows from :func:`find_hotspots`; a ``gene`` column (or the ``gene`` argument) names each row's gene.
        Optional columns ``model``, ``score``, ``slide_id`` go into the feature's name and measurements.
    colors
        Gene → ``[r, g, b]`` (0–255); default :func:`gene_colors` over the genes present.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``, each feature a Polygon in level-0 pixel coordinates
        with properties ``objectType: "annotation"``, ``classification: {name: GENE, color: [r, g, b]}``,
        ``name`` and ``measurements`` (area in mm², mean and max score, cells, threshold).
    """
    if "gene" not in hotspots.columns and gene is None:
        raise ExplainError("hotspots has no 'gene' column: pass gene= to name the classification")
    genes_col = hotspots["gene"] if "gene" in hotspots.columns else pd.Series([gene] * len(hotspots))
    if colors is None:
        colors = gene_colors(list(dict.fromkeys(genes_col)))
    features = []
    for (_, row), g in zip(hotspots.iterrows(), genes_col, strict=True):
        if g not in colors:
            raise ExplainError(f"no colour for gene {g!r}: add it to colors=")
        score = row.get("score", "score")
        model = row.get("model")
        name = f"{g} {score} hotspot {int(row['hotspot_id'])}" + (f" ({model})" if model else "")
        features.append(
            {
                "type": "Feature",
                "id": str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"{row.get('slide_id', '')}/{model}/{g}/{score}/{name}")
                ),
                "geometry": json.loads(row["geometry"]),
                "properties": {
                    "objectType": "annotation",
                    "name": name,
                    "classification": {"name": str(g), "color": list(colors[g])},
                    "isLocked": False,
                    "measurements": {
                        "area_mm2": float(row["area_mm2"]),
                        "mean_score": float(row["mean_score"]),
                        "max_score": float(row["max_score"]),
                        "n_cells": int(row["n_cells"]),
                        "threshold": float(row["threshold"]),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(collection: dict, path: str | os.PathLike) -> Path:
    """Write a FeatureCollection to ``path`` atomically (UTF-8 JSON)."""
    from slide2expr.contract import write_bytes_atomic

    return write_bytes_atomic(Path(path), json.dumps(collection, indent=1).encode())
