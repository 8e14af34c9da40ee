"""Ground truth of a synthetic cohort: label maps per slide, compartment fractions per tile and per patient."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from slide2expr.synth._compartments import COMPARTMENTS, TISSUE_COMPARTMENTS

TRUTH_JSON = "truth.json"
TRUTH_DIR = "truth"


class CohortError(ValueError):
    """A synthetic cohort folder is missing, incomplete, or asked for something it does not hold."""


def read_truth(cohort_dir: str | os.PathLike) -> dict:
    """The cohort's ``truth.json`` (gene model, patient compositions, parameters)."""
    path = Path(cohort_dir) / TRUTH_JSON
    if not path.is_file():
        raise CohortError(
            f"{path} not found: is {cohort_dir} a synthetic cohort? Make one with `slide2expr synth`"
        )
    return json.loads(path.read_text())


def label_map_path(cohort_dir: str | os.PathLike, slide_id: str) -> Path:
    return Path(cohort_dir) / TRUTH_DIR / f"{slide_id}.npz"


def load_label_map(cohort_dir: str | os.PathLike, *, slide_id: str) -> tuple[np.ndarray, dict]:
    """A slide's label map and its geometry.

    Returns
    -------
    labels : (h_l, w_l) uint8, values index ``COMPARTMENTS``.
    meta : ``{"ds": level-0 px per label px, "label_mpp": µm per label px, "mpp", "width", "height"}``.
    """
    path = label_map_path(cohort_dir, slide_id)
    if not path.is_file():
        raise CohortError(
            f"no label map for slide {slide_id!r} in {Path(cohort_dir) / TRUTH_DIR}: check the slide id"
        )
    with np.load(path) as z:
        labels = z["labels"]
        meta = {k: z[k].item() for k in ("ds", "label_mpp", "mpp", "width", "height")}
    return labels, meta


@lru_cache(maxsize=2)
def _integral(path: str, mtime_ns: int) -> tuple[np.ndarray, int]:
    """(n_labels, h+1, w+1) int32 summed-area tables of the one-hot label map, and ds."""
    with np.load(path) as z:
        labels = z["labels"]
        ds = int(z["ds"])
    h, w = labels.shape
    tab = np.zeros((len(COMPARTMENTS), h + 1, w + 1), np.int32)
    for k in range(len(COMPARTMENTS)):
        np.cumsum(np.cumsum(labels == k, axis=0, dtype=np.int32), axis=1, out=tab[k, 1:, 1:])
    return tab, ds


def _area_below(tab: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact area of each class in [0, v) x [0, u) (label px, fractional), (n_labels, n)."""
    _, hp, wp = tab.shape
    u = np.clip(u, 0.0, wp - 1.0)
    v = np.clip(v, 0.0, hp - 1.0)
    j = np.minimum(np.floor(u).astype(np.int64), wp - 2)
    i = np.minimum(np.floor(v).astype(np.int64), hp - 2)
    a = u - j
    b = v - i
    # the integral of a piecewise-constant image is bilinear inside each cell: interpolation is exact
    return (
        tab[:, i, j] * (1 - a) * (1 - b)
        + tab[:, i, j + 1] * a * (1 - b)
        + tab[:, i + 1, j] * (1 - a) * b
        + tab[:, i + 1, j + 1] * a * b
    )


def tile_truth(
    cohort_dir: str | os.PathLike,
    *,
    slide_id: str,
    x,
    y,
    w,
    h,
) -> pd.DataFrame:
    """Ground truth per tile: the share of each compartment and, per gene, of its driver compartments.

    Parameters
    ----------
    cohort_dir : a folder written by :func:`make_cohort`.
    slide_id : the slide the tiles belong to.
    x, y, w, h : (n,) arrays of tile boxes in level-0 px of that slide (top-left corner and size); scalars
        broadcast (e.g. one tile size for all).

    Returns
    -------
    DataFrame with n rows, in the order given: ``slide_id, x, y, w, h``, ``frac_<compartment>`` for every
    compartment of ``COMPARTMENTS`` (``frac_background`` includes any part of the box outside the slide; the row sums
    to 1), ``tissue_frac`` (1 - background), and ``driver_frac_<GENE>`` for every gene: the share of the tile covered
    by that gene's driver compartments (0 for negative-control genes). Shares are exact areas on the label map
    (``label_mpp`` µm per px); rendered borders wander about ±1 label px around it.

    Examples
    --------
    ``truth = tile_truth(cohort, slide_id=s, x=tiles.x, y=tiles.y, w=tiles.w, h=tiles.h)`` then
    ``truth["driver_frac_FSCN1"] >= 0.5`` marks the tiles inside that gene's hotspots.
    """
    path = label_map_path(cohort_dir, slide_id)
    if not path.is_file():
        raise CohortError(
            f"no label map for slide {slide_id!r} in {Path(cohort_dir) / TRUTH_DIR}: check the slide id"
        )
    truth = read_truth(cohort_dir)
    tab, ds = _integral(str(path), path.stat().st_mtime_ns)
    try:
        x, y, w, h = (np.asarray(a, np.float64).ravel() for a in np.broadcast_arrays(x, y, w, h))
    except ValueError:
        raise CohortError(
            f"x, y, w, h must have the same length (or be scalars), got {np.size(x)}, {np.size(y)}, {np.size(w)}, "
            f"{np.size(h)}"
        ) from None
    if np.any(w <= 0) or np.any(h <= 0):
        raise CohortError("tile widths and heights must be positive (level-0 px)")
    u0, u1, v0, v1 = x / ds, (x + w) / ds, y / ds, (y + h) / ds
    area = (
        _area_below(tab, u1, v1)
        - _area_below(tab, u0, v1)
        - _area_below(tab, u1, v0)
        + _area_below(tab, u0, v0)
    )
    fr = area / ((u1 - u0) * (v1 - v0))[None, :]
    fr[0] = 1.0 - fr[1:].sum(axis=0)  # outside the map counts as glass
    out = {"slide_id": [slide_id] * x.size, "x": x.astype(np.int64), "y": y.astype(np.int64),
           "w": w.astype(np.int64), "h": h.astype(np.int64)}  # fmt: skip
    for k, name in enumerate(COMPARTMENTS):
        out[f"frac_{name}"] = fr[k]
    out["tissue_frac"] = 1.0 - fr[0]
    idx = {name: k for k, name in enumerate(COMPARTMENTS)}
    for gene, spec in truth["genes"].items():
        out[f"driver_frac_{gene}"] = sum((fr[idx[c]] for c in spec["drivers"]), np.zeros(x.size))
    return pd.DataFrame(out)


def patient_truth(cohort_dir: str | os.PathLike) -> pd.DataFrame:
    """Per patient: sample id, number of slides, tissue area, and the share of the tissue in each compartment.

    Returns
    -------
    DataFrame, one row per patient in id order: ``patient_id, sample_id, n_slides, tissue_mm2`` and
    ``frac_<compartment>`` for each tissue compartment (rows sum to 1). These are the fractions the expression
    model used.
    """
    truth = read_truth(cohort_dir)
    rows = []
    for pid, p in sorted(truth["patients"].items()):
        row = {"patient_id": pid, "sample_id": p["sample_id"], "n_slides": len(p["slides"]),
               "tissue_mm2": p["tissue_mm2"]}  # fmt: skip
        row.update({f"frac_{c}": p["fractions"][c] for c in TISSUE_COMPARTMENTS})
        rows.append(row)
    return pd.DataFrame(rows)


def write_truth_tiles(
    cohort_dir: str | os.PathLike,
    *,
    store: str | os.PathLike,
    tiling: str,
    out: str | os.PathLike,
) -> Path:
    """Write the tile-level ground truth of a synthetic cohort's featurized tiles to ``out``.

    For every tile of every slide of ``store`` that has a tile grid at ``tiling`` and a label map in ``cohort_dir``:
    the share of the tile covered by each gene's planted driver regions. ``explain`` reads it from a run directory
    (``RUN/truth_tiles.parquet``, the contract's ``RunLayout.truth_tiles``) and measures localisation against it.

    Returns
    -------
    ``out``, a Parquet file in the contract's ``TRUTH_TILES_SCHEMA``: ``slide_id, tile_id, gene, driver_frac``, one
    row per tile and gene.

    Raises
    ------
    CohortError
        ``cohort_dir`` is not a synthetic cohort, or no slide of ``store`` has both tiles and a label map.
    """
    from slide2expr import sql
    from slide2expr.contract import TRUTH_TILES_SCHEMA, tiles_path, write_table_atomic

    read_truth(cohort_dir)
    parts = []
    for sid in sql.read_slides(store)["slide_id"]:
        if not tiles_path(store, tiling, sid).exists() or not label_map_path(cohort_dir, sid).is_file():
            continue
        tiles = sql.read_tiles(store, tiling, sid)
        if tiles.empty:
            continue
        truth = tile_truth(cohort_dir, slide_id=sid, x=tiles["x"], y=tiles["y"], w=tiles["w"], h=tiles["h"])
        cols = [c for c in truth.columns if c.startswith("driver_frac_")]
        long = (
            truth[cols]
            .assign(tile_id=tiles["tile_id"].to_numpy())
            .melt(id_vars="tile_id", var_name="gene", value_name="driver_frac")
        )
        long["gene"] = long["gene"].str.removeprefix("driver_frac_")
        long.insert(0, "slide_id", sid)
        parts.append(long)
    if not parts:
        raise CohortError(
            f"no slide of the store {store} has tiles at {tiling} and a label map in {Path(cohort_dir) / TRUTH_DIR}: "
            "featurize this synthetic cohort's slides into the store first"
        )
    df = pd.concat(parts, ignore_index=True)
    table = pa.Table.from_pandas(df, preserve_index=False).cast(TRUTH_TILES_SCHEMA)
    return write_table_atomic(table, out, metadata={"kind": "truth_tiles"})
