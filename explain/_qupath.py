"""Tile-level scores for QuPath: every tile of a slide as a GeoJSON detection carrying its scores as measurements.

QuPath (0.4 and later) imports a FeatureCollection of features whose ``properties.objectType`` is ``"detection"``
as detection objects, and their ``properties.measurements`` (an object of name → number) as measurements, so a
pathologist colours the slide by any of them (Measure → Show measurement maps). Coordinates are level-0 pixels.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.explain._inputs import ExplainError, Run, load_run, read_tiles
from slide2expr.explain._localisation import attention_scores

#: Measurement name of each tile score, per gene: attention × tiles in the bag (1 = uniform weight, comparable
#: across bags of different sizes) and the tile's own prediction (on the targets' transformed scale).
MEASUREMENTS = {"attention": "{gene} attention", "tile_pred": "{gene} prediction"}


def measurement_name(score: str, gene: str) -> str:
    """The QuPath measurement name of ``score`` (``"attention"`` or ``"tile_pred"``) for ``gene``.

    >>> measurement_name("attention", "GNLY"), measurement_name("tile_pred", "GNLY")
    ('GNLY attention', 'GNLY prediction')
    """
    if score not in MEASUREMENTS:
        raise ExplainError(f"score must be one of {sorted(MEASUREMENTS)}, got {score!r}")
    return MEASUREMENTS[score].format(gene=gene)


def tile_detections(
    tiles,
    measurements: dict[str, np.ndarray],
    *,
    slide_size: tuple[int, int] | None = None,
    slide_id: str = "",
) -> dict:
    """A GeoJSON FeatureCollection with one square detection per tile, its scores as QuPath measurements.

    Parameters
    ----------
    tiles
        Tile boxes with columns (or keys) ``tile_id, x, y, w, h`` in level-0 px, ``n_tiles`` rows.
    measurements
        Measurement name → ``(n_tiles,)`` values; a NaN value leaves that measurement out of the tile (QuPath shows
        it as missing).
    slide_size
        ``(width, height)`` at level 0: squares are clipped to the slide.
    slide_id
        Makes each feature's ``id`` (a UUID) unique across slides and stable across runs.

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``; each feature a closed counter-clockwise Polygon with
        properties ``objectType: "detection"``, ``name: "tile <tile_id>"`` and ``measurements``.

    Examples
    --------
    >>> fc = tile_detections({"tile_id": [0, 1], "x": [0, 100], "y": [0, 0], "w": [100, 100], "h": [100, 100]},
    ...                      {"G attention": np.array([0.5, np.nan])})
    >>> fc["features"][0]["geometry"]["coordinates"][0][:3], fc["features"][1]["properties"]["measurements"]
    ([[0, 0], [100, 0], [100, 100]], {})
    """
    tid = np.asarray(tiles["tile_id"], dtype=np.int64)
    box = [np.asarray(tiles[k], dtype=np.int64) for k in ("x", "y", "w", "h")]
    x0, y0 = box[0], box[1]
    x1, y1 = x0 + box[2], y0 + box[3]
    if slide_size is not None:
        x0, x1 = np.clip(x0, 0, slide_size[0]), np.clip(x1, 0, slide_size[0])
        y0, y1 = np.clip(y0, 0, slide_size[1]), np.clip(y1, 0, slide_size[1])
    values = {}
    for name, v in measurements.items():
        v = np.asarray(v, dtype=np.float64)
        if v.shape != tid.shape:
            raise ExplainError(f"measurement {name!r} has {v.size} values for {tid.size} tiles")
        values[name] = v
    features = []
    for i in range(tid.size):
        if x1[i] <= x0[i] or y1[i] <= y0[i]:
            continue
        a, b, c, d = int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"slide2expr/{slide_id}/tile/{int(tid[i])}")),
                "geometry": {"type": "Polygon", "coordinates": [[[a, b], [c, b], [c, d], [a, d], [a, b]]]},
                "properties": {
                    "objectType": "detection",
                    "name": f"tile {int(tid[i])}",
                    "measurements": {n: float(v[i]) for n, v in values.items() if np.isfinite(v[i])},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def slide_measurements(scores: pd.DataFrame, tile_ids, *, genes) -> dict[str, np.ndarray]:
    """Measurement name → ``(n_tiles,)`` values in the order of ``tile_ids``, from long-form tile scores of one
    slide and model (:func:`attention_scores` rows: ``score``, ``gene``, ``tile_id``, ``value``)."""
    tile_ids = pd.Index(np.asarray(tile_ids, dtype=np.int64))
    out = {}
    for g in genes:
        for score in MEASUREMENTS:
            d = scores[(scores["gene"] == g) & (scores["score"] == score)]
            if d.empty:
                continue
            v = d.set_index(d["tile_id"].astype(np.int64))["value"]
            out[measurement_name(score, g)] = v.reindex(tile_ids).to_numpy(dtype=np.float64)
    return out


def write_detections(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    slide_id: str,
    path: str | os.PathLike,
    model: str = "mil",
    genes=None,
    scores: pd.DataFrame | None = None,
    slide_size: tuple[int, int] | None = None,
) -> Path:
    """Write the tiles of ``slide_id`` as QuPath detections with ``model``'s attention and tile prediction per gene.

    Every tile of the slide's grid (at the run's tiling) is one detection; measurements ``"<GENE> attention"``
    (attention × tiles in the bag) and ``"<GENE> prediction"`` (the tile's prediction), for each gene of ``genes``
    (default the run's). ``scores`` are :func:`attention_scores` rows of the run (read when not given).

    Returns ``path`` (compact UTF-8 JSON, written atomically).
    """
    from slide2expr.contract import write_bytes_atomic

    run = load_run(run)
    genes = list(run.genes if genes is None else genes)
    if scores is None:
        scores = attention_scores(run, models=[model])
    scores = scores[(scores["model"] == model) & (scores["slide_id"] == slide_id)]
    tiles = read_tiles(store, run.tiling, slide_id)
    values = slide_measurements(scores, tiles["tile_id"], genes=genes)
    collection = tile_detections(tiles, values, slide_size=slide_size, slide_id=slide_id)
    return write_bytes_atomic(Path(path), json.dumps(collection, separators=(",", ":")).encode())
