"""Pixels out of a slide reader: tiles cut from row runs, thumbnails read in strips, antialiased resizes.

The functions take any reader with the :class:`featurize.SlideReader` interface (``read_region``,
``native_scale``, ``level_downsamples`` …); the reader's methods ``read_tiles`` and ``thumbnail`` call them.
"""

from __future__ import annotations

import contextlib
import math
from itertools import pairwise

import numpy as np
from PIL import Image

#: a thumbnail's resolution when neither its µm/px nor its size is given (what tissue detection reads)
DEFAULT_THUMBNAIL_MPP = 8.0
#: a thumbnail is read in strips of the level of at most this many bytes (as ARGB), each resized at once, so memory
#: stays bounded on huge levels
THUMBNAIL_STRIP_BYTES = 32 << 20


def read_tile_runs(
    reader, x: np.ndarray, y: np.ndarray, w0: int, h0: int, *, level: int, out_px: int
) -> np.ndarray:
    """Tiles of level-0 size ``(w0, h0)`` at corners ``x``, ``y``, resized to ``out_px`` squares: one region
    read per run of neighbours in a row (featurize reads a row run, or a block of a few rows' runs, at a time).

    The region is decoded at 1/2–1/8 size where the codec can and the tiles stay at least ``out_px`` wide;
    each tile is cut at the read pixel nearest its corner (at most half a read pixel off).

    Returns
    -------
    np.ndarray
        ``(k, out_px, out_px, 3)`` uint8 RGB.
    """
    d = reader.level_downsamples[level]
    scale = reader.native_scale(level, min(w0, h0) / d / out_px)
    d *= scale
    lw, lh = max(1, round(w0 / d)), max(1, round(h0 / d))
    # a new run where the row changes or the next box does not touch this one
    brk = np.flatnonzero((np.diff(y) != 0) | (np.diff(x) > w0) | (np.diff(x) < 0)) + 1
    runs = list(pairwise([0, *brk.tolist(), len(x)]))
    cut = np.empty((len(x), lh, lw, 3), np.uint8)
    cache = reader.decoded_tiles()
    for i, (a, b) in enumerate(runs):
        # a block's lower rows come after its top row: this thread still wants the rows in between
        hold = cache.hold_mark() if (cache is not None and i > 0) else contextlib.nullcontext()
        with hold:
            _cut_run(reader, x[a:b], y[a:b], lw, lh, d, level, scale, cut[a:b])
    return resize_rgb_batch(cut, out_px, out_px)


def _cut_run(reader, x, y, lw: int, lh: int, d: float, level: int, scale: int, out: np.ndarray) -> None:
    """Read the region under boxes ``x``, ``y`` (level-0 corners; ``lw × lh`` read pixels each) and cut them
    into ``out``."""
    # tile corners in read pixels, and the region from floor(first corner) to the end of the last tile
    ox = np.round(x / d).astype(np.int64)
    oy = np.round(y / d).astype(np.int64)
    x0, y0 = int(x.min()), int(y.min())
    w, h = math.ceil((ox.max() + lw) * d - x0), math.ceil((oy.max() + lh) * d - y0)
    region = reader.read_region(x0, y0, w, h, level=level, scale=scale)
    ox -= math.floor(x0 / d)
    oy -= math.floor(y0 / d)
    for i, (a, b) in enumerate(zip(ox.tolist(), oy.tolist(), strict=True)):
        out[i] = region[b : b + lh, a : a + lw]


def read_thumbnail(
    reader, *, mpp: float | None = None, max_size: int | None = None
) -> tuple[np.ndarray, float]:
    """A downsampled view of the whole slide.

    Parameters
    ----------
    mpp
        Target resolution in µm/px (default :data:`DEFAULT_THUMBNAIL_MPP`, or what ``max_size`` needs).
    max_size
        Longest side in pixels; the coarser of the two limits wins.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB, white where the slide is transparent or empty.
    mpp : float
        The thumbnail's resolution in µm/px (x; y follows the slide's aspect).
    """
    W, H = reader.dimensions
    mx, my = reader.mpp
    if mpp is None and max_size is None:
        mpp = DEFAULT_THUMBNAIL_MPP
    target = mpp if mpp is not None else 0.0
    if max_size is not None:
        target = max(target, max(W * mx, H * my) / max_size)
    target = max(target, min(mx, my))
    tw, th = max(1, round(W * mx / target)), max(1, round(H * my / target))
    level = reader.best_level(target)
    scale = reader.native_scale(level, min(W / tw, H / th) / reader.level_downsamples[level])
    d = reader.level_downsamples[level] * scale
    lw, lh = reader.level_dimensions[level]
    lw, lh = -(-lw // scale), -(-lh // scale)
    out = np.empty((th, tw, 3), np.uint8)
    rows_per_strip = max(1, min(lh, THUMBNAIL_STRIP_BYTES // max(1, lw * 4)))
    scale_y = th / lh
    y_out = 0
    for y_l in range(0, lh, rows_per_strip):
        h_l = min(rows_per_strip, lh - y_l)
        y_end = round((y_l + h_l) * scale_y) if y_l + h_l < lh else th
        if y_end <= y_out:
            continue
        strip = reader.read_region(0, round(y_l * d), W, round(h_l * d), level=level, scale=scale)
        strip = strip[:h_l, :lw]
        out[y_out:y_end] = resize_rgb(strip, tw, y_end - y_out)
        y_out = y_end
    return out, W * mx / tw


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize of ``(h, w, 3)`` uint8 RGB to ``(height, width, 3)`` (see :func:`resize_rgb_batch`)."""
    return resize_rgb_batch(image[None], width, height)[0]


def resize_rgb_batch(images: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize of ``(n, h, w, 3)`` uint8 RGB to ``(n, height, width, 3)``.

    Exact integer reductions use PIL's box ``reduce``; other factors torch's antialiased bilinear filter on uint8
    (the same filter as PIL's ``BILINEAR`` resize, within one grey level, and faster on batches). Returns the
    input unchanged when it already has that size.

    >>> resize_rgb_batch(np.zeros((2, 8, 8, 3), np.uint8), 4, 4).shape
    (2, 4, 4, 3)
    """
    n, h, w = images.shape[:3]
    if (w, h) == (width, height):
        return np.ascontiguousarray(images)
    if w % width == 0 and h % height == 0 and w // width == h // height and w > width:
        # box filter for exact integer factors: fast and exact
        return np.stack(
            [np.asarray(Image.fromarray(np.ascontiguousarray(t)).reduce(w // width)) for t in images]
        )
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # channels_last view, no copy
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def rgba_over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA over white (RGB passes through)."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    a = rgba[..., 3:4].astype(np.uint16)
    if a.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)
