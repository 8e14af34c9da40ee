"""Writing OpenSlide-readable pyramidal slides (Aperio SVS and generic tiled TIFF) with JPEG tiles."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

#: Downsample between consecutive pyramid levels.
LEVEL_FACTOR = 4
#: Minimum number of pyramid levels written.
MIN_LEVELS = 3
_SUBSAMPLING = (2, 2)
#: Region borders are resolved on a grid of this many level-0 px.
_STEP = 2


class SlideWriteError(RuntimeError):
    """A synthetic slide could not be written or does not read back as declared."""


@dataclass(frozen=True)
class SlideSpec:
    """Everything that defines one synthetic slide's pixels.

    Attributes
    ----------
    labels : (h_l, w_l) uint8 label map; label px ``(i, j)`` covers level-0 px ``[i*ds, (i+1)*ds)``.
    ds : level-0 px per label px (an integer).
    width, height : level-0 size in px.
    mpp : µm per level-0 px.
    atlases : per label value, an (A, A, 3) uint8 periodic RGB texture (A a multiple of ``tile``); None for glass.
    background : (3,) uint8 colour of the glass (label 0).
    offsets : (n_labels, 2) int, where each atlas starts (multiples of ``tile``, so tiles never wrap).
    displacement : (2, D, D) int16, periodic level-0 px shifts that make region borders irregular.
    tile : tile side in px.
    quality : JPEG quality.
    """

    labels: np.ndarray
    ds: int
    width: int
    height: int
    mpp: float
    atlases: tuple
    background: np.ndarray
    offsets: np.ndarray
    displacement: np.ndarray
    tile: int
    quality: int


def n_levels(width: int, height: int, tile: int) -> int:
    """Pyramid levels: divide by ``LEVEL_FACTOR`` until the level fits in about one tile (at least 3)."""
    levels = 1
    while max(width, height) / LEVEL_FACTOR ** (levels - 1) > tile:
        levels += 1
    return max(MIN_LEVELS, levels)


def _encode(tile: np.ndarray, quality: int) -> bytes:
    return bytes(
        imagecodecs.jpeg8_encode(
            tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=_SUBSAMPLING
        )
    )


def _reduce(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).reduce(LEVEL_FACTOR))


def _level0_tiles(spec: SlideSpec, level1: np.ndarray):
    """Yield level-0 tiles as ``(jpeg bytes, byte count)`` in row-major order; fill ``level1`` as a side effect.

    Tiles fully inside one compartment (or glass) are slices of its atlas and are encoded once per atlas position;
    tiles on a border are composed per pixel from the displaced label map.
    """
    t, ds = spec.tile, spec.ds
    lab = spec.labels
    disp = spec.displacement
    nd = disp.shape[1]
    dmax = int(np.abs(disp).max()) + 1
    # label map padded with glass so border lookups never go out of range
    pad = dmax // ds + 2
    lpad = np.pad(lab, ((pad, pad + t // ds + 2), (pad, pad + t // ds + 2)))
    glass = np.empty((t, t, 3), np.uint8)
    glass[:] = spec.background
    cache: dict[tuple[int, int, int], tuple[bytes, np.ndarray]] = {}
    ar4 = np.arange(0, t, _STEP) + _STEP // 2
    t1 = t // LEVEL_FACTOR
    for y0 in range(0, spec.height, t):
        for x0 in range(0, spec.width, t):
            ly0 = (y0 - dmax) // ds + pad
            ly1 = (y0 + t + dmax) // ds + pad + 1
            lx0 = (x0 - dmax) // ds + pad
            lx1 = (x0 + t + dmax) // ds + pad + 1
            block = lpad[ly0:ly1, lx0:lx1]
            v = int(block.flat[0])
            if (block == v).all():
                if v == 0:
                    key = (0, 0, 0)
                    px = glass
                else:
                    atlas = spec.atlases[v]
                    a = atlas.shape[0]
                    oy, ox = spec.offsets[v]
                    ay, ax = (y0 + oy) % a, (x0 + ox) % a
                    key = (v, ay, ax)
                    px = atlas[ay : ay + t, ax : ax + t]
                hit = cache.get(key)
                if hit is None:
                    hit = cache[key] = (_encode(px, spec.quality), _reduce(px))
                data, small = hit
            else:
                # per-pixel labels on a 4-px grid (borders move by the smooth displacement field)
                yy = (y0 + ar4)[:, None]
                xx = (x0 + ar4)[None, :]
                dy = disp[0, yy % nd, xx % nd]
                dx = disp[1, yy % nd, xx % nd]
                lv = lpad[(yy + dy) // ds + pad, (xx + dx) // ds + pad]
                lv = np.repeat(np.repeat(lv, _STEP, axis=0), _STEP, axis=1)
                px = glass.copy()
                for u in np.flatnonzero(np.bincount(lv.ravel(), minlength=len(spec.atlases))):
                    if u == 0:
                        continue
                    atlas = spec.atlases[u]
                    a = atlas.shape[0]
                    oy, ox = spec.offsets[u]
                    ay, ax = (y0 + oy) % a, (x0 + ox) % a
                    np.copyto(px, atlas[ay : ay + t, ax : ax + t], where=(lv == u)[:, :, None])
                data, small = _encode(px, spec.quality), _reduce(px)
            level1[
                y0 // LEVEL_FACTOR : y0 // LEVEL_FACTOR + t1, x0 // LEVEL_FACTOR : x0 // LEVEL_FACTOR + t1
            ] = small
            yield data, len(data)


def aperio_description(*, width: int, height: int, tile: int, quality: int, mpp: float, name: str) -> str:
    """The ImageDescription OpenSlide's Aperio reader recognises (vendor ``aperio``, ``aperio.MPP``, ``AppMag``)."""
    mag = round(10.0 / mpp)
    return (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {mag}|StripeWidth = {tile}|ScanScope ID = SLIDE2EXPR-SYNTH|"
        f"Filename = {name}|Date = 01/01/26|Time = 00:00:00|MPP = {mpp:.4f}"
    )


def write_slide(path: str | os.PathLike, spec: SlideSpec, *, fmt: str, name: str) -> dict:
    """Write one pyramidal slide; return ``{"levels": n, "level_dimensions": [(w, h), …], "bytes": size}``.

    ``fmt`` is ``"svs"`` (Aperio ImageDescription with ``MPP`` and ``AppMag``) or ``"tiff"`` (generic tiled TIFF
    with X/YResolution in px per cm). Level k is level 0 downsampled by ``4**k`` (box filter); every level is a
    tiled, JPEG (YCbCr 4:2:0) page. The file is written to a hidden temporary name and renamed into place.
    """
    if fmt not in ("svs", "tiff"):
        raise ValueError(f"fmt must be 'svs' or 'tiff', not {fmt!r}")
    path = Path(path)
    t, w, h = spec.tile, spec.width, spec.height
    nlev = n_levels(w, h, t)
    wp, hp = math.ceil(w / t) * t, math.ceil(h / t) * t
    level1 = np.empty((hp // LEVEL_FACTOR, wp // LEVEL_FACTOR, 3), np.uint8)
    common = {
        "tile": (t, t),
        "compression": "jpeg",
        "compressionargs": {"level": spec.quality},
        "photometric": "rgb",
        "subsampling": _SUBSAMPLING,
        "metadata": None,
        "software": "slide2expr synth",
    }
    px_per_cm = 1e4 / spec.mpp
    dims = [(w, h)]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=wp * hp * 3 > 2**31) as tw:
            kw = dict(common)
            if fmt == "svs":
                kw["description"] = aperio_description(
                    width=w, height=h, tile=t, quality=spec.quality, mpp=spec.mpp, name=name
                )
            else:
                kw.update(
                    description=f"slide2expr synthetic slide {name}",
                    resolution=(px_per_cm, px_per_cm),
                    resolutionunit="CENTIMETER",
                )
            tw.write(_level0_tiles(spec, level1), shape=(h, w, 3), dtype=np.uint8, **kw)
            img = level1
            for k in range(1, nlev):
                lw, lh = math.ceil(w / LEVEL_FACTOR**k), math.ceil(h / LEVEL_FACTOR**k)
                if k > 1:
                    img = np.asarray(Image.fromarray(img).reduce(LEVEL_FACTOR))
                data = np.ascontiguousarray(img[:lh, :lw])
                dims.append((lw, lh))
                kw = dict(common, subfiletype=1)
                if fmt == "svs":
                    kw["description"] = (
                        f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {lw}x{lh} - ({t}x{t}) JPEG/RGB Q={spec.quality}"
                    )
                else:
                    f = LEVEL_FACTOR**k
                    kw.update(resolution=(px_per_cm / f, px_per_cm / f), resolutionunit="CENTIMETER")
                tw.write(data, maxworkers=1, **kw)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"levels": nlev, "level_dimensions": dims, "bytes": path.stat().st_size}


def verify_slide(
    path: str | os.PathLike, *, vendor: str, mpp: float, levels: int, width: int, height: int
) -> None:
    """Open ``path`` with OpenSlide and check vendor, mpp, level count and size; raise SlideWriteError if not."""
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        got = {
            "vendor": s.properties.get(openslide.PROPERTY_NAME_VENDOR),
            "mpp": float(s.properties.get(openslide.PROPERTY_NAME_MPP_X, "nan")),
            "levels": s.level_count,
            "size": s.dimensions,
        }
    want = {"vendor": vendor, "mpp": mpp, "levels": levels, "size": (width, height)}
    if (
        got["vendor"] != vendor
        or not math.isclose(got["mpp"], mpp, rel_tol=1e-3)
        or got["levels"] != levels
        or (got["size"] != (width, height))
    ):
        raise SlideWriteError(f"{path}: OpenSlide reads {got}, expected {want}")
