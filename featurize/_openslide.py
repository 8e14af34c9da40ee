"""Vendor formats through OpenSlide 4, with JPEG-tiled TIFF levels decoded directly (tifffile + libjpeg-turbo)."""

from __future__ import annotations

import math
from ctypes import POINTER, c_uint32
from pathlib import Path

import numpy as np

from slide2expr.featurize._image import UM_PER_CM, UM_PER_INCH
from slide2expr.featurize._regions import rgba_over_white
from slide2expr.featurize._slide import SlideReader, float_or_none
from slide2expr.featurize._tilecache import TileCache

#: TIFF compression code of JPEG-compressed tiles
TIFF_JPEG = 7
#: TIFF photometric interpretations of JPEG tiles: RGB (no colour transform) and YCbCr
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6
#: bytes of a tile's JPEG stream searched for a JFIF marker
JFIF_PROBE_BYTES = 64


class _OpenSlideReader(SlideReader):
    """Vendor formats through OpenSlide 4."""

    def _open(self) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(self.path))
        osr = self._osr
        self.vendor = osr.properties.get("openslide.vendor", "unknown")
        self.dimensions = tuple(int(v) for v in osr.dimensions)
        self.level_count = osr.level_count
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in osr.level_dimensions)
        self.objective_power = float_or_none(osr.properties.get("openslide.objective-power"))
        self.properties = dict(osr.properties)
        self._tiles = None
        if self._fast_jpeg and self.vendor in ("aperio", "generic-tiff"):
            self._tiles = _TiffJpegTiles.open(self.path, self.level_dimensions, cache=self._tile_cache)
        if self._tile_cache is not None:  # what OpenSlide decodes, the slide's other threads share too
            self._tile_cache.share_with(osr)
        try:
            from openslide import lowlevel

            self._raw_read = lowlevel._read_region  # fills a premultiplied ARGB buffer; skips PIL
            self._handle = osr._osr
        except AttributeError:  # pragma: no cover - other openslide-python versions
            self._raw_read = None

    def _metadata_mpp(self) -> tuple[float | None, float | None]:
        p = self.properties
        mx, my = float_or_none(p.get("openslide.mpp-x")), float_or_none(p.get("openslide.mpp-y"))
        if mx is None:  # generic TIFF: resolution tags
            unit = p.get("tiff.ResolutionUnit", "").lower()
            per_um = {"centimeter": UM_PER_CM, "inch": UM_PER_INCH}.get(unit)
            rx, ry = float_or_none(p.get("tiff.XResolution")), float_or_none(p.get("tiff.YResolution"))
            if per_um and rx:
                mx = per_um / rx
                my = per_um / ry if ry else mx
        return mx, my

    def native_scale(self, level: int, factor: float) -> int:
        if self._tiles is None or not self._tiles.has(level):
            return 1
        return self._tiles.native_scale(level, factor)

    def _read_level_scaled(self, x: int, y: int, level: int, w: int, h: int, scale: int) -> np.ndarray:
        d = self.level_downsamples[level] * scale
        return self._tiles.read(level, math.floor(x / d), math.floor(y / d), w, h, scale=scale)

    def _read_level(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        if self._tiles is not None and self._tiles.has(level):
            d = self.level_downsamples[level]
            return self._tiles.read(level, math.floor(x / d), math.floor(y / d), w, h)
        if self._raw_read is None:  # pragma: no cover
            rgba = np.asarray(self._osr.read_region((x, y), level, (w, h)))
            return rgba_over_white(rgba)
        buf = np.empty((h, w, 4), np.uint8)  # premultiplied BGRA in memory (ARGB uint32, little-endian)
        self._raw_read(self._handle, buf.ctypes.data_as(POINTER(c_uint32)), x, y, level, w, h)
        rgb = buf[..., 2::-1]
        alpha = buf[..., 3]
        if alpha.min() < 255:  # premultiplied: over white is c + (255 - a)
            rgb = rgb + (255 - alpha)[..., None]
        return np.ascontiguousarray(rgb)

    def decoded_tiles(self) -> TileCache | None:
        return self._tiles.cache if self._tiles is not None else None

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._osr.close()


class _TiffJpegTiles:
    """Direct decoding of JPEG-tiled TIFF levels (Aperio SVS, generic tiled TIFF) with tifffile + libjpeg-turbo.

    OpenSlide spends most of a large ``read_region`` converting and compositing premultiplied ARGB tile by tile;
    decoding the level's JPEG tiles straight into an RGB array is several times faster. Used only where every level maps
    to exactly one JPEG-tiled TIFF page of the same size; anything else stays with OpenSlide.
    """

    def __init__(self, tf, pages: dict[int, object], cache: TileCache | None = None) -> None:
        self.tf = tf
        self.pages = pages
        self.cache = cache if cache is not None else TileCache()
        self._scalable_levels: dict[int, bool] = {}

    @classmethod
    def open(cls, path: Path, level_dimensions, *, cache: TileCache | None = None) -> _TiffJpegTiles | None:
        try:
            import tifffile

            tf = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 - not readable by tifffile: OpenSlide reads it
            return None
        pages: dict[int, object] = {}
        tiled = [p for p in tf.pages if p.is_tiled]
        for level, (w, h) in enumerate(level_dimensions):
            match = [p for p in tiled if p.shape[:2] == (h, w)]
            if (
                len(match) == 1
                and match[0].compression == TIFF_JPEG
                and match[0].planarconfig == 1
                and match[0].shape[2:] == (3,)
                and match[0].dtype == np.uint8
                and match[0].tiledepth == 1
            ):
                pages[level] = match[0]
        if not pages:
            tf.close()
            return None
        return cls(tf, pages, cache)

    def has(self, level: int) -> bool:
        return level in self.pages

    def _scalable(self, level: int) -> bool:
        """Whether the scaled decode gets this level's colours right: YCbCr tiles, or RGB tiles whose stream has no
        JFIF marker (libjpeg lets JFIF's YCbCr claim override the Adobe marker that says RGB)."""
        ok = self._scalable_levels.get(level)
        if ok is None:
            page = self.pages[level]
            ok = page.photometric == PHOTOMETRIC_YCBCR
            if page.photometric == PHOTOMETRIC_RGB:
                head = bytes(page.jpegtables or b"")
                first = next((i for i, n in enumerate(page.databytecounts) if n), None)
                if first is not None:
                    self.tf.filehandle.seek(page.dataoffsets[first])
                    head += self.tf.filehandle.read(JFIF_PROBE_BYTES)
                ok = b"JFIF" not in head
            self._scalable_levels[level] = ok
        return ok

    def native_scale(self, level: int, factor: float) -> int:
        """Largest of 8, 4, 2 that is ≤ ``factor`` and divides the level's JPEG tile size; else 1."""
        page = self.pages[level]
        if not self._scalable(level):
            return 1
        for s in (8, 4, 2):
            if s <= factor * (1 + 1e-6) and page.tilewidth % s == 0 and page.tilelength % s == 0:
                return s
        return 1

    def _tile(self, level: int, index: int, scale: int = 1) -> np.ndarray:
        key = (level, index, scale)
        t = self.cache.get(key)
        if t is None:
            page = self.pages[level]
            fh = self.tf.filehandle
            n = page.databytecounts[index]
            if n == 0:
                t = np.full((page.tilelength // scale, page.tilewidth // scale, 3), 255, np.uint8)
            else:
                fh.seek(page.dataoffsets[index])
                data = fh.read(n)
                if len(data) != n:
                    raise OSError(f"tile {index} of level {level} is cut short (file truncated)")
                if scale == 1:
                    seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                    t = seg[0]
                else:
                    t = _decode_jpeg_scaled(data, page, scale)
            self.cache.put(key, t)
        return t

    def read(self, level: int, x: int, y: int, w: int, h: int, *, scale: int = 1) -> np.ndarray:
        """``(h, w, 3)`` uint8 of level ``level`` at ``1/scale`` size, at coordinates ``(x, y)`` of that
        size; white outside the image."""
        page = self.pages[level]
        H, W = -(-page.shape[0] // scale), -(-page.shape[1] // scale)
        tw, th = page.tilewidth // scale, page.tilelength // scale
        per_row = -(-page.shape[1] // page.tilewidth)
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 <= x0 or y1 <= y0:
            return out
        # boxes come in raster order: this thread will not want the JPEG rows above this box again
        self.cache.passed(level, scale, y0 // th * per_row)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tile(level, ty * per_row + tx, scale)
                ax, ay = max(x0, tx * tw), max(y0, ty * th)
                bx, by = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[ay - y : by - y, ax - x : bx - x] = tile[
                    ay - ty * th : by - ty * th, ax - tx * tw : bx - tx * tw
                ]
        return out

    def close(self) -> None:
        self.tf.close()  # the cache may be shared with other readers of the slide: it goes with its last owner


#: An Adobe APP14 segment with transform 0: tells libjpeg the three components are R, G, B, not YCbCr
#: (TIFF says so in its Photometric tag, which a bare JPEG stream does not carry).
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def _decode_jpeg_scaled(data: bytes, page, scale: int) -> np.ndarray:
    """Decode one JPEG tile of a TIFF page at ``1/scale`` size with libjpeg-turbo's scaled IDCT (simplejpeg)."""
    import simplejpeg

    tables = page.jpegtables
    stream = bytes(tables[:-2]) + data[2:] if tables else data  # abbreviated TIFF tile → one full stream
    if page.photometric == PHOTOMETRIC_RGB:  # no colour transform
        stream = stream[:2] + _ADOBE_RGB + stream[2:]
    th, tw = page.tilelength // scale, page.tilewidth // scale
    out = simplejpeg.decode_jpeg(stream, colorspace="RGB", min_height=th, min_width=tw)
    if out.shape[:2] != (th, tw):  # pragma: no cover - libjpeg-turbo always offers 1/2, 1/4, 1/8
        raise OSError(f"scaled JPEG decode gave {out.shape[:2]}, expected {(th, tw)}")
    return out
