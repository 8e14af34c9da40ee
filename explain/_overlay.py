"""Score maps as pyramidal TIFF overlays: level 0 the size of the slide's level 0, readable by OpenSlide and QuPath.

Each pixel takes the colour of the map cell under it (nearest cell, no smoothing beyond the map's own), so the
overlay lines up with the slide pixel for pixel in any viewer that opens both; pixels no tile covers are white.
Tiles are generated one at a time, so a slide of 100k × 80k px never exists in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slide2expr.explain._inputs import ExplainError
from slide2expr.explain._maps import SCALES, ScoreMap

#: TIFF tile side (px) of every pyramid level.
OVERLAY_TILE = 256
#: The smallest level written: the pyramid stops once both sides are at most this many px.
OVERLAY_MIN_SIDE = 512
#: Colour of pixels that no tile covers (white, as glass on an H&E slide).
NO_TILE_RGB = (255, 255, 255)


def _colours(score_map: ScoreMap, *, scale: str, cmap: str) -> np.ndarray:
    """``(n_rows + 1, n_cols + 1, 3)`` uint8 cell colours; the extra last row and column are :data:`NO_TILE_RGB`,
    so index -1 is "outside the map"."""
    from matplotlib import colormaps

    if scale not in SCALES:
        raise ExplainError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "percentile":
        v = score_map.percentile() / 100.0
    else:
        ref = score_map.values[np.isfinite(score_map.values)]
        lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)
        v = (score_map.values - lo) / (hi - lo) if hi > lo else np.zeros_like(score_map.values)
    rgb = (colormaps[cmap](np.nan_to_num(np.clip(v, 0.0, 1.0)))[..., :3] * 255).round().astype(np.uint8)
    rgb[~np.isfinite(v)] = NO_TILE_RGB
    h, w = rgb.shape[:2]
    out = np.empty((h + 1, w + 1, 3), np.uint8)
    out[:] = NO_TILE_RGB
    out[:h, :w] = rgb
    return out


def _cell_index(n_px: int, downsample: float, origin: float, cell_px: float, n_cells: int) -> np.ndarray:
    """Cell index of each pixel of a level (its centre in level-0 px), -1 outside the map."""
    centre = (np.arange(n_px, dtype=np.float64) + 0.5) * downsample
    idx = np.floor((centre - origin) / cell_px).astype(np.int64)
    idx[(idx < 0) | (idx >= n_cells)] = -1
    return idx


def _level_tiles(colours: np.ndarray, rows: np.ndarray, cols: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The ``(tile, tile, 3)`` tiles of one level, row by row (edge tiles padded with :data:`NO_TILE_RGB`)."""
    h, w = rows.size, cols.size
    for ty in range(0, h, tile):
        r = np.full(tile, -1, np.int64)
        r[: min(tile, h - ty)] = rows[ty : ty + tile]
        band = colours[r]
        for tx in range(0, w, tile):
            c = np.full(tile, -1, np.int64)
            c[: min(tile, w - tx)] = cols[tx : tx + tile]
            yield np.ascontiguousarray(band[:, c])


def write_overlay(
    score_map: ScoreMap,
    path: str | os.PathLike,
    *,
    scale: str = "percentile",
    cmap: str = "inferno",
    description: str = "",
) -> Path:
    """Write ``score_map`` as a pyramidal, tiled RGB TIFF whose level 0 is the slide's level-0 size.

    Parameters
    ----------
    score_map
        From :func:`tile_score_map` (its ``slide_size`` and ``mpp`` set the TIFF's size and resolution).
    path
        The ``.tiff`` file (written to a hidden name beside it, then renamed).
    scale
        ``"percentile"``: each cell's percentile within the slide (0–100 %), as the heatmaps show it; ``"raw"``:
        the score scaled from the slide's minimum to its maximum.
    cmap
        A matplotlib colour map.
    description
        Text stored in the TIFF's ImageDescription (OpenSlide shows it as ``tiff.ImageDescription``).

    Returns
    -------
    pathlib.Path
        ``path``. Levels halve until both sides are at most :data:`OVERLAY_MIN_SIDE` px; every level is
        :data:`OVERLAY_TILE` px tiles, deflate-compressed; level 0 carries the slide's µm per pixel.

    Examples
    --------
    >>> import tempfile, openslide
    >>> from slide2expr.explain import tile_score_map
    >>> m = tile_score_map({"x": [0, 100], "y": [0, 0], "w": [100, 100], "h": [100, 100]}, [1.0, 2.0],
    ...                    slide_size=(1000, 700), mpp=(0.5, 0.5))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with openslide.OpenSlide(write_overlay(m, Path(d) / "o.tiff", scale="raw")) as s:
    ...         pixel = [s.read_region(xy, 0, (1, 1)).getpixel((0, 0))[:3] for xy in ((150, 50), (500, 500))]
    ...         s.dimensions, s.level_count, pixel
    ((1000, 700), 2, [(252, 255, 164), (255, 255, 255)])
    """
    import tifffile

    width, height = score_map.slide_size
    colours = _colours(score_map, scale=scale, cmap=cmap)
    n_rows, n_cols = score_map.values.shape
    ox, oy = score_map.origin
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            level, w, h = 0, int(width), int(height)
            while True:
                ds = 2.0**level
                rows = _cell_index(h, ds, oy, score_map.cell_px, n_rows)
                cols = _cell_index(w, ds, ox, score_map.cell_px, n_cols)
                extra = {}
                if level == 0:
                    # resolution in pixels per centimetre: 1e4 µm / (µm per px)
                    extra = dict(
                        resolution=(1e4 / score_map.mpp[0], 1e4 / score_map.mpp[1]),
                        resolutionunit="CENTIMETER",
                        description=description or None,
                    )
                tw.write(
                    _level_tiles(colours, rows, cols, OVERLAY_TILE),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(OVERLAY_TILE, OVERLAY_TILE),
                    photometric="rgb",
                    compression="zlib",
                    subfiletype=0 if level == 0 else 1,
                    metadata=None,
                    **extra,
                )
                if max(w, h) <= OVERLAY_MIN_SIDE:
                    break
                level, w, h = level + 1, (w + 1) // 2, (h + 1) // 2
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
