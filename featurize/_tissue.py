"""Tissue detection on a slide thumbnail, the tile grid at a physical resolution, and the QC image."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

#: zlib level of the QC image: the fastest (the file is a little larger than at PNG's default)
QC_PNG_COMPRESSION = 1
#: Thumbnail resolution for tissue detection, µm/px (≈ 8–16 is what the mask needs).
TISSUE_MPP = 8.0
#: Saturation below this is glass whatever Otsu says (a blank slide's Otsu threshold splits noise).
MIN_SATURATION = 0.07
#: Objects smaller than this are dust, not tissue (µm²); holes smaller than this are filled.
MIN_OBJECT_UM2 = 20_000.0
MAX_HOLE_UM2 = 20_000.0
#: Pale tissue (mucin pools) is also tissue where the optical density averaged over ``PALE_WINDOW_UM`` exceeds the
#: glass's by this much (summed over R, G, B) and the averaged saturation is above ``MIN_SATURATION``.
PALE_OD = 0.08
PALE_WINDOW_UM = 40.0
#: Pen ink, told from stain by how far one channel stands above the others (RGB levels, 0–255). Blue pen: blue
#: above red by more than ``BLUE_PEN_B_OVER_R`` and above green by more than ``BLUE_PEN_B_OVER_G`` (H&E is never far
#: bluer than red: dense lymphocytes, as in tertiary lymphoid structures, reach b - r ≈ 60; ink ≈ 100 and more).
BLUE_PEN_B_OVER_R, BLUE_PEN_B_OVER_G = 70, 30
#: Green pen: green above red by more than ``GREEN_PEN_G_OVER_R`` and above blue by more than
#: ``GREEN_PEN_G_OVER_B`` (eosin and haematoxylin both leave green the lowest channel).
GREEN_PEN_G_OVER_R, GREEN_PEN_G_OVER_B = 15, 10
#: Black pen and dark debris: no channel reaches this (stained nuclei stay above it in at least one channel).
DARK_MAX_LEVEL = 60
#: Fewer candidate (non-pen) pixels than this: nothing to threshold, no tissue.
MIN_CANDIDATES = 16
#: Haematoxylin only joins the mask when its values spread over more than this (else Otsu splits noise) …
MIN_HAEMATOXYLIN_SPREAD = 0.02
#: … and only where the pixel is not glass: HSV value below ``GLASS_VALUE`` (glass is near white).
GLASS_VALUE = 0.9
#: Glass pixels needed to measure the glass's optical density (else a low percentile of the slide stands in).
MIN_GLASS_PIXELS = 100
#: Where a slide shows too little glass, a low percentile of its optical density (``GLASS_OD_PERCENTILE``), capped
#: at ``GLASS_OD_CAP``, stands in for the glass's (clean glass is ≈ 0.05).
GLASS_OD_PERCENTILE, GLASS_OD_CAP = 1, 0.1
#: Bumped when the detection changes, so resumed stores do not mix masks of two versions.
TISSUE_VERSION = 2


def tissue_mask(thumb: np.ndarray, *, mpp: float) -> np.ndarray:
    """Tissue mask of an RGB thumbnail.

    Otsu threshold on HSV saturation (floored at :data:`MIN_SATURATION`), OR-ed with Otsu on the haematoxylin
    channel of the HED deconvolution (pale, haematoxylin-rich tissue) and with pale tissue that neither reaches, such
    as mucin pools: optical density above the glass's by :data:`PALE_OD` and saturation above
    :data:`MIN_SATURATION`, both averaged over :data:`PALE_WINDOW_UM`. Pen marks (strongly blue, green or black
    pixels) and dark debris are removed; then small objects are dropped and small holes filled.

    Parameters
    ----------
    thumb
        ``(H, W, 3)`` uint8 RGB, white background.
    mpp
        The thumbnail's resolution in µm/px (sets the morphology sizes).

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool, True on tissue.
    """
    from scipy.ndimage import binary_closing
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_holes, remove_small_objects

    rgb = thumb.astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    pen = (
        ((b - r > BLUE_PEN_B_OVER_R) & (b - g > BLUE_PEN_B_OVER_G))
        | ((g - r > GREEN_PEN_G_OVER_R) & (g - b > GREEN_PEN_G_OVER_B))
        | (np.maximum(np.maximum(r, g), b) < DARK_MAX_LEVEL)
    )
    # large intermediates are dropped as soon as they are used: peak memory counts on big slides
    del rgb, r, g, b
    candidates = ~pen
    if candidates.sum() < MIN_CANDIDATES:
        return np.zeros(thumb.shape[:2], bool)
    sat, val = _saturation_value(thumb)
    t_sat = max(_otsu(sat[candidates], threshold_otsu), MIN_SATURATION)
    mask = (sat > t_sat) & candidates
    hema = _haematoxylin(thumb)
    h_vals = hema[candidates]
    if np.ptp(h_vals) > MIN_HAEMATOXYLIN_SPREAD:
        t_h = _otsu(h_vals, threshold_otsu)
        del h_vals
        # haematoxylin only counts where the pixel is not glass and not almost grey
        mask |= (hema > t_h) & (val < GLASS_VALUE) & (sat > MIN_SATURATION / 2) & candidates
    mask |= _pale_tissue(thumb, sat, candidates, mpp=mpp)
    del sat, val, hema
    px_area = mpp * mpp
    if mask.any():
        mask = binary_closing(mask, structure=disk(1).astype(bool), border_value=0)
        mask = remove_small_objects(mask, max_size=max(1, int(MIN_OBJECT_UM2 / px_area)))
        mask = remove_small_holes(mask, max_size=max(1, int(MAX_HOLE_UM2 / px_area)))
        mask &= ~_dilate(pen, 1)
    return mask


# Per-channel lookup tables give skimage's float64 HSV saturation/value and HED haematoxylin channel without its
# (H, W, 3) float64 intermediates, which dominate the peak memory on a large thumbnail. The arithmetic is skimage's,
# element by element (tests compare against rgb2hsv / rgb2hed).


def _unit_lut() -> np.ndarray:
    from skimage.util import img_as_float

    return img_as_float(np.arange(256, dtype=np.uint8))  # exactly skimage's uint8 → float64


def _saturation_value(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of a uint8 RGB image, as ``skimage.color.rgb2hsv`` computes them (float64)."""
    lut = _unit_lut()
    r, g, b = thumb[..., 0], thumb[..., 1], thumb[..., 2]
    # channel by channel: numpy's reduction over a last axis of 3 is much slower
    vmax = lut[np.maximum(np.maximum(r, g), b)]
    delta = vmax - lut[np.minimum(np.minimum(r, g), b)]
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = delta / vmax
    sat[delta == 0.0] = 0.0
    return sat, vmax


def _haematoxylin(thumb: np.ndarray) -> np.ndarray:
    """The H channel of ``skimage.color.rgb2hed`` (float64), from three per-channel lookup tables."""
    from skimage.color import hed_from_rgb

    optical = np.log(np.maximum(_unit_lut(), 1e-6)) / np.log(1e-6)
    hema = (optical * hed_from_rgb[0, 0])[thumb[..., 0]]
    hema += (optical * hed_from_rgb[1, 0])[thumb[..., 1]]
    hema += (optical * hed_from_rgb[2, 0])[thumb[..., 2]]
    return np.maximum(hema, 0.0, out=hema)


def _pale_tissue(thumb: np.ndarray, sat: np.ndarray, candidates: np.ndarray, *, mpp: float) -> np.ndarray:
    """Pale tissue: mean optical density over ≈ ``PALE_WINDOW_UM`` above the glass's by ``PALE_OD``, where the mean
    saturation there is above ``MIN_SATURATION`` (grey smudges and shadows are not tissue).

    Mucin pools in H&E are pale blue-grey (saturation ≈ 0.07–0.17, optical density 0.15–0.4 against glass's ≈ 0.05
    on the synthetic slides), below Otsu's split between stained tissue and glass: Otsu alone leaves most of them
    out, and the genes they drive cannot be learned.
    """
    from scipy.ndimage import uniform_filter

    lut = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)
    od = lut[thumb[..., 0]] + lut[thumb[..., 1]] + lut[thumb[..., 2]]
    glass = candidates & (sat < MIN_SATURATION / 2)
    glass_od = (
        float(np.median(od[glass]))
        if glass.sum() >= MIN_GLASS_PIXELS
        else min(GLASS_OD_CAP, float(np.percentile(od, GLASS_OD_PERCENTILE)))
    )
    size = max(3, int(round(PALE_WINDOW_UM / mpp)) | 1)
    pale = uniform_filter(od, size) > glass_od + PALE_OD
    del od
    pale &= uniform_filter(sat.astype(np.float32), size) > MIN_SATURATION
    # and the pixel itself is not glass: the averages alone would add a rim of glass around all tissue
    return pale & (sat > MIN_SATURATION / 2) & candidates


def _otsu(values: np.ndarray, fn) -> float:
    if values.size == 0 or np.ptp(values) == 0:
        return float(values.max()) if values.size else 0.0
    return float(fn(values))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    return binary_dilation(mask, structure=disk(radius).astype(bool)) if mask.any() else mask


@dataclass(frozen=True)
class TileGrid:
    """Tiles of one slide at a physical resolution, in ``tile_id`` order (row-major over the full grid).

    Attributes
    ----------
    x, y : np.ndarray
        ``(n_tiles,)`` int64 level-0 top-left corners.
    tissue_frac : np.ndarray
        ``(n_tiles,)`` float32 fraction of the tile covered by the tissue mask.
    col, row : np.ndarray
        ``(n_tiles,)`` int32 grid position (a tile's neighbours are ±1).
    w0, h0 : int
        Level-0 size of every tile.
    stride_x0, stride_y0 : float
        Level-0 step between neighbouring tiles.
    """

    x: np.ndarray
    y: np.ndarray
    tissue_frac: np.ndarray
    col: np.ndarray
    row: np.ndarray
    w0: int
    h0: int
    stride_x0: float
    stride_y0: float
    n_cols: int
    n_rows: int

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, keep: np.ndarray) -> TileGrid:
        """The tiles where ``keep`` (bool, ``(n_tiles,)``) is True, order kept."""
        return TileGrid(
            self.x[keep],
            self.y[keep],
            self.tissue_frac[keep],
            self.col[keep],
            self.row[keep],
            self.w0,
            self.h0,
            self.stride_x0,
            self.stride_y0,
            self.n_cols,
            self.n_rows,
        )


def tile_grid(
    dimensions: tuple[int, int],
    *,
    slide_mpp: tuple[float, float],
    mpp: float,
    tile_px: int,
    overlap_px: int = 0,
    mask: np.ndarray | None = None,
    mask_mpp: float | None = None,
) -> TileGrid:
    """Every tile position that fits inside the slide, with its tissue fraction.

    A tile is ``tile_px`` pixels at ``mpp`` µm/px; neighbours overlap by ``overlap_px`` (at ``mpp``). Tiles are
    numbered row-major; only tiles entirely inside the level-0 image are listed.

    Parameters
    ----------
    dimensions
        Level-0 ``(width, height)``.
    slide_mpp
        Level-0 ``(x, y)`` µm/px.
    mask, mask_mpp
        ``(h, w)`` bool tissue mask and its µm/px; without it every tissue fraction is 1.

    Returns
    -------
    TileGrid
    """
    if tile_px <= 0:
        raise ValueError(f"tile size must be positive, got {tile_px}")
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap must be in [0, tile size {tile_px}), got {overlap_px}")
    W, H = dimensions
    sx, sy = mpp / slide_mpp[0], mpp / slide_mpp[1]  # level-0 px per target px
    w0, h0 = max(1, round(tile_px * sx)), max(1, round(tile_px * sy))
    step_x, step_y = (tile_px - overlap_px) * sx, (tile_px - overlap_px) * sy
    n_cols = 0 if w0 > W else int(math.floor((W - w0) / step_x + 1e-9)) + 1
    n_rows = 0 if h0 > H else int(math.floor((H - h0) / step_y + 1e-9)) + 1
    rows, cols = np.divmod(np.arange(n_rows * n_cols, dtype=np.int64), max(n_cols, 1))
    x = np.round(cols * step_x).astype(np.int64)
    y = np.round(rows * step_y).astype(np.int64)
    if mask is None:
        frac = np.ones(x.shape[0], np.float32)
    else:
        if mask_mpp is None:
            raise ValueError("mask_mpp is required with a mask")
        frac = _box_fractions(
            mask, x, y, w0, h0, scale_x=slide_mpp[0] / mask_mpp, scale_y=slide_mpp[1] / mask_mpp
        )
    return TileGrid(
        x, y, frac, cols.astype(np.int32), rows.astype(np.int32), w0, h0, step_x, step_y, n_cols, n_rows
    )


def _box_fractions(
    mask: np.ndarray, x: np.ndarray, y: np.ndarray, w0: int, h0: int, *, scale_x: float, scale_y: float
) -> np.ndarray:
    """Mean of ``mask`` over each level-0 box mapped to mask pixels (exact area weights via an integral image)."""
    if x.size == 0:
        return np.zeros(0, np.float32)
    mh, mw = mask.shape
    integral = np.zeros((mh + 1, mw + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

    def at(yf: np.ndarray, xf: np.ndarray) -> np.ndarray:
        # bilinear interpolation of the integral image = area-weighted partial pixels
        xf = np.clip(xf, 0, mw)
        yf = np.clip(yf, 0, mh)
        x0 = np.minimum(np.floor(xf).astype(np.int64), mw - 1)
        y0 = np.minimum(np.floor(yf).astype(np.int64), mh - 1)
        fx, fy = xf - x0, yf - y0
        i00 = integral[y0, x0]
        i01 = integral[y0, x0 + 1]
        i10 = integral[y0 + 1, x0]
        i11 = integral[y0 + 1, x0 + 1]
        return i00 * (1 - fx) * (1 - fy) + i01 * fx * (1 - fy) + i10 * (1 - fx) * fy + i11 * fx * fy

    xa, ya = x * scale_x, y * scale_y
    xb, yb = (x + w0) * scale_x, (y + h0) * scale_y
    area = (np.clip(xb, 0, mw) - np.clip(xa, 0, mw)) * (np.clip(yb, 0, mh) - np.clip(ya, 0, mh))
    s = at(yb, xb) - at(ya, xb) - at(yb, xa) + at(ya, xa)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, s / np.maximum(area, 1e-12), 0.0)
    return np.clip(frac, 0, 1).astype(np.float32)


def qc_image(
    thumb: np.ndarray,
    *,
    thumb_mpp: float,
    slide_mpp: tuple[float, float],
    mask: np.ndarray,
    grid: TileGrid,
    title: str = "",
) -> bytes:
    """PNG bytes: the thumbnail with the tissue outline (green) and the kept tiles (blue boxes).

    Parameters
    ----------
    thumb
        ``(H, W, 3)`` uint8 RGB at ``thumb_mpp``.
    mask
        ``(h, w)`` bool tissue mask (any resolution; resized to the thumbnail).
    grid
        The kept tiles.
    """
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    H, W = thumb.shape[:2]
    m = mask
    if m.shape != (H, W):
        m = (
            np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.Resampling.NEAREST))
            > 0
        )
    out = thumb.copy()
    edge = find_boundaries(m, mode="inner")
    out[edge] = (0, 200, 0)
    im = Image.fromarray(out)
    draw = ImageDraw.Draw(im, "RGBA")
    kx, ky = slide_mpp[0] / thumb_mpp, slide_mpp[1] / thumb_mpp
    for x, y in zip(grid.x.tolist(), grid.y.tolist(), strict=True):
        x0, y0 = x * kx, y * ky
        draw.rectangle((x0, y0, x0 + grid.w0 * kx, y0 + grid.h0 * ky), outline=(30, 60, 230, 200))
    if title:
        draw.rectangle((0, 0, min(W, 8 + 6 * len(title)), 14), fill=(255, 255, 255, 200))
        draw.text((3, 1), title, fill=(0, 0, 0, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=QC_PNG_COMPRESSION)
    return buf.getvalue()
