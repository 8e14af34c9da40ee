"""Tile scores rasterised at tile resolution over a slide: the score map and its figures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from slide2expr.explain._inputs import ExplainError

#: Colour-scale names accepted by :func:`plot_heatmap`.
SCALES = ("raw", "percentile")
#: Overlapping tiles: cells stay at least 1/this of the tile stride, so large slides stay small grids.
MAX_CELLS_PER_STRIDE = 4
#: Smoothing divides by the smoothed tissue coverage; this floor keeps cells far from tissue from dividing by zero.
_COVERAGE_FLOOR = 1e-12


@dataclass(frozen=True)
class ScoreMap:
    """Tile scores on a regular grid of cells in level-0 pixel space.

    Cell ``(r, c)`` covers level-0 ``[origin_x + c * cell_px, origin_x + (c + 1) * cell_px)`` in x and likewise in y.

    Attributes
    ----------
    values
        ``(n_rows, n_cols)`` float64: the mean score of the tiles covering each cell (overlap-aware), NaN where no
        tile covers it.
    counts
        ``(n_rows, n_cols)`` int32: how many tiles cover each cell.
    cell_px
        Cell side in level-0 pixels.
    origin
        ``(x, y)`` level-0 pixel position of cell ``(0, 0)``'s top-left corner.
    slide_size
        ``(width, height)`` of the slide at level 0.
    mpp
        ``(x, y)`` µm per level-0 pixel.
    tile_values
        ``(n_tiles,)`` the scores rasterised (before smoothing), for percentile scales.
    label
        What the score is (e.g. ``"attention"``), used in colour-bar labels.
    """

    values: np.ndarray
    counts: np.ndarray
    cell_px: float
    origin: tuple[float, float]
    slide_size: tuple[int, int]
    mpp: tuple[float, float]
    tile_values: np.ndarray
    label: str = "score"

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in level-0 px, for ``imshow(..., extent=...)`` with y pointing down."""
        ox, oy = self.origin
        h, w = self.values.shape
        return (ox, ox + w * self.cell_px, oy + h * self.cell_px, oy)

    @property
    def cell_area_mm2(self) -> float:
        return (self.cell_px * self.mpp[0] / 1000.0) * (self.cell_px * self.mpp[1] / 1000.0)

    def percentile(self) -> np.ndarray:
        """``values`` as percentile ranks (0–100) among this slide's tile scores; NaN stays NaN."""
        ref = np.sort(self.tile_values[np.isfinite(self.tile_values)])
        out = np.full(self.values.shape, np.nan)
        ok = np.isfinite(self.values)
        if ref.size:
            lo = np.searchsorted(ref, self.values[ok], side="left")
            hi = np.searchsorted(ref, self.values[ok], side="right")
            out[ok] = 100.0 * (lo + hi) / (2.0 * ref.size)
        return out


def _grid_step(starts: np.ndarray, sizes: np.ndarray) -> float:
    """The cell side: the tile stride, refined so overlapping tiles cover whole cells where it stays coarse."""
    u = np.unique(starts)
    diffs = np.diff(u)
    diffs = diffs[diffs > 0]
    size = float(np.median(sizes))
    stride = float(diffs.min()) if diffs.size else size
    stride = min(stride, size)
    g = math.gcd(int(round(stride)), int(round(size)))
    # overlap-aware: a cell no larger than gcd(stride, size) makes every tile cover whole cells; cells stay at least
    # 1/MAX_CELLS_PER_STRIDE of the stride (tiles then cover the cells whose centre they contain)
    return float(max(g, stride / float(MAX_CELLS_PER_STRIDE))) if g > 0 else stride


def check_sigma(sigma: float) -> None:
    """Raise :class:`ExplainError` unless ``sigma`` (smoothing in cells) is at least 0."""
    if not sigma >= 0:
        raise ExplainError(f"sigma must be at least 0 (0: no smoothing), got {sigma}")


def tile_score_map(
    tiles,
    scores: np.ndarray,
    *,
    slide_size: tuple[int, int],
    mpp: tuple[float, float],
    cell_px: float | None = None,
    sigma: float = 0.0,
    label: str = "score",
) -> ScoreMap:
    """Rasterise per-tile scores onto a tile-resolution grid over the slide.

    Parameters
    ----------
    tiles
        Tile boxes with columns (or keys) ``x, y, w, h`` in level-0 px, ``n_tiles`` rows.
    scores
        ``(n_tiles,)`` one score per tile (attention, tile prediction, SHAP value …); NaN tiles are skipped.
    slide_size
        ``(width, height)`` at level 0.
    mpp
        ``(x, y)`` µm per level-0 pixel.
    cell_px
        Cell side in level-0 px; default: the tile stride (refined when tiles overlap).
    sigma
        Gaussian smoothing in cells (0: none). Smoothing is normalised by tissue coverage, so the edge of the
        tissue is not darkened, and cells without tiles stay NaN.
    label
        What the score is, for colour-bar labels.

    Returns
    -------
    ScoreMap
        ``values`` holds, per cell, the mean score of all tiles covering it (overlapping tiles are averaged).

    Examples
    --------
    Two 100 px tiles side by side, overlapping by half: the shared cell holds the mean of both scores.

    >>> tiles = {"x": [0, 50], "y": [0, 0], "w": [100, 100], "h": [100, 100]}
    >>> m = tile_score_map(tiles, [1.0, 3.0], slide_size=(150, 100), mpp=(0.5, 0.5))
    >>> m.cell_px, m.values.tolist()
    (50.0, [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    """
    check_sigma(sigma)
    x = np.asarray(tiles["x"], dtype=np.float64)
    y = np.asarray(tiles["y"], dtype=np.float64)
    w = np.asarray(tiles["w"], dtype=np.float64)
    h = np.asarray(tiles["h"], dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != x.shape:
        raise ExplainError(
            f"scores has shape {s.shape} but there are {x.shape[0]} tiles: give one score per tile"
        )
    if x.size == 0:
        raise ExplainError("no tiles to rasterise: the slide has an empty tile grid")
    if cell_px is None:
        cell_px = min(_grid_step(x, w), _grid_step(y, h))
    if cell_px <= 0:
        raise ExplainError(f"cell_px must be positive, got {cell_px}")
    ox, oy = float(x.min() % cell_px), float(y.min() % cell_px)
    width, height = int(slide_size[0]), int(slide_size[1])
    n_cols = max(int(math.ceil((max(width, (x + w).max()) - ox) / cell_px)), 1)
    n_rows = max(int(math.ceil((max(height, (y + h).max()) - oy) / cell_px)), 1)
    total = np.zeros((n_rows, n_cols))
    counts = np.zeros((n_rows, n_cols), np.int32)
    # cells whose centre lies inside the tile box: [c0, c1) columns, [r0, r1) rows
    c0 = np.ceil((x - ox) / cell_px - 0.5).astype(np.int64)
    c1 = np.ceil((x + w - ox) / cell_px - 0.5).astype(np.int64)
    r0 = np.ceil((y - oy) / cell_px - 0.5).astype(np.int64)
    r1 = np.ceil((y + h - oy) / cell_px - 0.5).astype(np.int64)
    c1, r1 = np.maximum(c1, c0 + 1), np.maximum(r1, r0 + 1)
    c0, r0 = np.clip(c0, 0, n_cols - 1), np.clip(r0, 0, n_rows - 1)
    c1, r1 = np.clip(c1, 1, n_cols), np.clip(r1, 1, n_rows)
    ok = np.isfinite(s)
    if ((c1 - c0) == 1).all() and ((r1 - r0) == 1).all():
        np.add.at(total, (r0[ok], c0[ok]), s[ok])
        np.add.at(counts, (r0[ok], c0[ok]), 1)
    else:
        for i in np.flatnonzero(ok):
            total[r0[i] : r1[i], c0[i] : c1[i]] += s[i]
            counts[r0[i] : r1[i], c0[i] : c1[i]] += 1
    values = np.full((n_rows, n_cols), np.nan)
    has = counts > 0
    values[has] = total[has] / counts[has]
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        num = gaussian_filter(np.where(has, values, 0.0), sigma, mode="constant")
        den = gaussian_filter(has.astype(np.float64), sigma, mode="constant")
        values = np.where(has, num / np.maximum(den, _COVERAGE_FLOOR), np.nan)
    return ScoreMap(
        values=values,
        counts=counts,
        cell_px=float(cell_px),
        origin=(ox, oy),
        slide_size=(width, height),
        mpp=(float(mpp[0]), float(mpp[1])),
        tile_values=s[ok],
        label=label,
    )


#: Plain words for the score labels of :func:`slide_score_maps`, shown on colour bars: what the score is, and what
#: its raw values mean.
PLAIN_LABELS = {
    "attention × bag size": ("attention", "1 = an average tile"),
    "tile prediction": ("predicted expression of the tile", ""),
    "tile SHAP": ("tile's push on the prediction (SHAP)", ""),
}
#: Scale-bar lengths to choose from, in mm: the longest that fits in a fifth of the panel's width.
SCALE_BAR_MM = (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 50.0)


def scale_label(label: str, scale: str) -> str:
    """The colour-bar text that states the scale in plain words.

    Examples
    --------
    >>> scale_label("attention × bag size", "raw")
    'attention (raw values; 1 = an average tile)'
    >>> scale_label("tile prediction", "percentile")
    'predicted expression of the tile: percentile in this slide'
    """
    what, note = PLAIN_LABELS.get(label, (label, ""))
    if scale == "raw":
        return f"{what} (raw values{'; ' + note if note else ''})"
    return f"{what}: percentile in this slide"


def scale_bar_mm(width_mm: float) -> float:
    """The scale bar for a panel ``width_mm`` wide: the longest of :data:`SCALE_BAR_MM` within a fifth of it.

    Examples
    --------
    >>> scale_bar_mm(12.0), scale_bar_mm(3.0), scale_bar_mm(0.4)
    (2.0, 0.5, 0.05)
    """
    fits = [b for b in SCALE_BAR_MM if b <= width_mm / 5.0]
    return fits[-1] if fits else SCALE_BAR_MM[0]


def _mm_text(mm: float) -> str:
    return f"{mm * 1000:g} µm" if mm < 1 else f"{mm:g} mm"


def add_scale_bar(ax, *, width_px: float, mpp: float, color: str = "black") -> float:
    """Replace ``ax``'s pixel axes by a scale bar in mm (bottom left) for an image ``width_px`` level-0 px wide at
    ``mpp`` µm per pixel; returns the bar's length in mm."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    mm = scale_bar_mm(width_px * mpp / 1000.0)
    bar = AnchoredSizeBar(
        ax.transData,
        mm * 1000.0 / mpp,
        _mm_text(mm),
        "lower left",
        pad=0.3,
        borderpad=0.4,
        sep=3,
        color=color,
        frameon=True,
        size_vertical=max(width_px / 150.0, 1.0),
        fontproperties={"size": 7},
    )
    bar.patch.set_alpha(0.7)
    ax.add_artist(bar)
    ax.set_xticks([])
    ax.set_yticks([])
    return mm


def _percentile_ticks(cb) -> None:
    cb.set_ticks([0, 50, 100])
    cb.set_ticklabels(["0 lowest", "50", "100 highest"])


def draw_heatmap(
    ax,
    score_map: ScoreMap,
    *,
    thumbnail: np.ndarray | None = None,
    scale: str = "percentile",
    cmap: str = "inferno",
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    hotspots=None,
    hotspot_color: str = "cyan",
):
    """Draw ``score_map`` (over ``thumbnail``) on ``ax`` with a scale bar in mm; returns the image artist (for a
    colour bar)."""
    if scale not in SCALES:
        raise ExplainError(f"scale must be one of {SCALES}, got {scale!r}")
    width, height = score_map.slide_size
    if thumbnail is not None:
        ax.imshow(thumbnail, extent=(0, width, height, 0), interpolation="bilinear")
    data = score_map.values if scale == "raw" else score_map.percentile()
    if scale == "percentile":
        vmin = 0.0 if vmin is None else vmin
        vmax = 100.0 if vmax is None else vmax
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(
        masked,
        extent=score_map.extent,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        alpha=alpha if thumbnail is not None else 1.0,
        interpolation="nearest",
    )
    if hotspots is not None:
        for rings in _hotspot_rings(hotspots):
            for k, ring in enumerate(rings):
                ring = np.asarray(ring)
                ax.plot(ring[:, 0], ring[:, 1], color=hotspot_color, lw=1.4 if k == 0 else 0.8)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    add_scale_bar(ax, width_px=width, mpp=score_map.mpp[0])
    return im


def _hotspot_rings(hotspots) -> list[list]:
    if hotspots is None:
        return []
    if hasattr(hotspots, "columns"):
        import json

        return [json.loads(g)["coordinates"] for g in hotspots["geometry"]]
    return [h["coordinates"] if isinstance(h, dict) else h for h in hotspots]


def plot_heatmap(
    score_map: ScoreMap,
    *,
    thumbnail: np.ndarray | None = None,
    scale: str = "percentile",
    title: str | None = None,
    cmap: str = "inferno",
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    hotspots=None,
    figsize: tuple[float, float] = (6.0, 5.0),
) -> Figure:
    """A heatmap of tile scores over the slide thumbnail, with its colour scale shown and stated.

    Parameters
    ----------
    score_map
        From :func:`tile_score_map`.
    thumbnail
        ``(H, W, 3)`` uint8 slide thumbnail (any size; it is stretched over the slide's level-0 extent), or None.
    scale
        ``"percentile"``: each cell's score as its percentile rank among the slide's tiles (0–100, comparable
        across slides); ``"raw"``: the score itself (e.g. softmax attention, which sums to 1 over the bag).
    hotspots
        A hotspot table from :func:`find_hotspots` (its ``geometry`` column), drawn as outlines.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    im = draw_heatmap(
        ax,
        score_map,
        thumbnail=thumbnail,
        scale=scale,
        cmap=cmap,
        alpha=alpha,
        vmin=vmin,
        vmax=vmax,
        hotspots=hotspots,
    )
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label(scale_label(score_map.label, scale), fontsize=8)
    if scale == "percentile":
        _percentile_ticks(cb)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_slide_maps(
    maps: dict[str, ScoreMap],
    *,
    thumbnail: np.ndarray | None = None,
    scale: str = "percentile",
    raw_first: bool = False,
    title: str | None = None,
    hotspots=None,
    hotspots_on: str | None = None,
    panel_inches: float = 3.6,
) -> Figure:
    """One row of panels for a slide and gene: the thumbnail, then one heatmap per score in ``maps``.

    Parameters
    ----------
    maps
        Panel title → :class:`ScoreMap` (e.g. from ``slide_score_maps``).
    scale
        Colour scale of every map panel (``"percentile"`` or ``"raw"``), stated on each colour bar.
    raw_first
        Also show the first map on the raw scale, in its own panel before the others.
    hotspots
        Hotspot table (its ``geometry`` column) outlined on the panel named ``hotspots_on`` (default: the first).
    """
    panels = []
    names = list(maps)
    if raw_first and scale != "raw":
        panels.append((names[0], maps[names[0]], "raw"))
    panels += [(name, m, scale) for name, m in maps.items()]
    n = len(panels) + (thumbnail is not None)
    fig = Figure(figsize=(panel_inches * n, panel_inches * 0.95), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    k = 0
    if thumbnail is not None:
        w, h = maps[names[0]].slide_size
        axes[0].imshow(thumbnail, extent=(0, w, h, 0))
        axes[0].set_title("H&E thumbnail", fontsize=8)
        add_scale_bar(axes[0], width_px=w, mpp=maps[names[0]].mpp[0])
        for side in axes[0].spines.values():
            side.set_visible(False)
        k = 1
    target = hotspots_on or names[0]
    for name, m, sc in panels:
        ax = axes[k]
        outline = hotspots is not None and name == target and sc == scale
        im = draw_heatmap(ax, m, thumbnail=thumbnail, scale=sc, hotspots=hotspots if outline else None)
        cb = fig.colorbar(im, ax=ax, shrink=0.7)
        cb.set_label(scale_label(m.label, sc), fontsize=6)
        if sc == "percentile":
            _percentile_ticks(cb)
        cb.ax.tick_params(labelsize=6)
        ax.set_title(
            name + (" + hotspots" if outline else "") + (" (raw)" if sc == "raw" else ""), fontsize=8
        )
        k += 1
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
