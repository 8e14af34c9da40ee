"""Slide reading: one interface over OpenSlide (vendor formats) and plain images (PNG/JPEG/TIFF).

Coordinates are always level-0 pixels; resolutions are µm/px. A tile is a level-0 box read from the pyramid level
nearest below (finer than or equal to) the target resolution and resized with antialiasing to the target size.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from ctypes import POINTER, c_uint32
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image

#: Plausible range of a slide's level-0 resolution, µm/px (0.05: beyond any optical scanner; 20: a thumbnail).
MPP_RANGE = (0.05, 20.0)
#: slide formats whose failing to open means a damaged file more often than a wrong format
SLIDE_FORMAT_HINT_EXTENSIONS = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".tif",
    ".tiff",
    ".vms",
    ".vmu",
    ".svslide",
    ".bif",
)
#: A level is usable for a target resolution when its mpp is at most this factor above the target
#: (so 0.5015 µm/px serves 0.5 µm/px without a resize).
_LEVEL_TOLERANCE = 1.01
#: File extensions read as plain images when OpenSlide cannot open them.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Extensions of whole-slide formats OpenSlide reads (used to find slides in a directory).
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".czi",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
)

Image.MAX_IMAGE_PIXELS = None  # plain slide images are legitimately huge


class SlideError(Exception):
    """Base class of errors about one slide; the message names the slide."""


class SlideOpenError(SlideError, OSError):
    """The file cannot be opened as a slide (missing, empty, unsupported or corrupt header)."""


class SlideReadError(SlideError, OSError):
    """Reading pixels failed (truncated file, corrupt tile). The reader reopens its handle to continue."""


class MissingMPPError(SlideError, ValueError):
    """The slide has no (plausible) resolution in its metadata and none was given."""


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _float_or_none(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class SlideReader:
    """A whole-slide image opened for reading; use :func:`open_slide` to make one.

    Attributes
    ----------
    slide_id : str
        File stem unless given.
    path : Path
    vendor : str
        OpenSlide vendor (``aperio``, ``hamamatsu``, ``generic-tiff`` …) or ``image`` for plain images.
    dimensions : tuple[int, int]
        Level-0 ``(width, height)`` in pixels.
    mpp : tuple[float, float]
        Level-0 ``(x, y)`` resolution in µm/px.
    mpp_source : str
        ``"metadata"`` or ``"override"``.
    objective_power : float | None
    level_count : int
    level_downsamples : tuple[float, ...]
    level_dimensions : tuple[tuple[int, int], ...]
    """

    vendor: str = "unknown"

    def __init__(
        self,
        path: Path,
        *,
        slide_id: str,
        mpp_override: float | None,
        mpp_fallback: float | None = None,
        fast_jpeg: bool = True,
        tile_cache: TileCache | None = None,
    ) -> None:
        self.path = path
        self._fast_jpeg = fast_jpeg
        self._tile_cache = tile_cache
        self.slide_id = slide_id
        self._mpp_override = mpp_override
        self._open()
        try:
            self.mpp, self.mpp_source = self._resolve_mpp(mpp_override, mpp_fallback)
        except BaseException:
            self.close()
            raise

    # ---- to be provided by a backend ----------------------------------------------------------------------
    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _metadata_mpp(self) -> tuple[float | None, float | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_level(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:  # pragma: no cover
        """``(h, w, 3)`` uint8 RGB of level ``level`` whose top-left is level-0 ``(x, y)``; white outside."""
        raise NotImplementedError

    def native_scale(self, level: int, factor: float) -> int:
        """The largest reduction ``s`` ≤ ``factor`` (1, 2, 4 or 8) at which ``level`` decodes natively.

        JPEG-tiled levels decode at 1/2, 1/4 or 1/8 size in the DCT domain (libjpeg-turbo's scaled IDCT: an
        antialiased downsample for a fraction of the decode cost); other backends only read at full size.
        """
        return 1

    def _read_level_scaled(self, x: int, y: int, level: int, w: int, h: int, scale: int) -> np.ndarray:
        """Like :meth:`_read_level` at ``1/scale`` of the level's size (only for ``native_scale`` factors)."""
        raise NotImplementedError  # pragma: no cover - only called where native_scale allowed it

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- common --------------------------------------------------------------------------------------------
    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"<{type(self).__name__} {self.slide_id!r} {self.vendor} {w}x{h} "
            f"mpp={self.mpp[0]:.4g} ({self.mpp_source}) levels={self.level_count}>"
        )

    def _resolve_mpp(
        self, override: float | None, fallback: float | None = None
    ) -> tuple[tuple[float, float], str]:
        if override is not None:
            if not _plausible(float(override)):
                raise MissingMPPError(
                    f"{self.slide_id}: mpp override {override} µm/px (a slide list's mpp column) is outside the "
                    f"plausible range {MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px; give the scanner's level-0 resolution"
                )
            return (float(override), float(override)), "override"
        mx, my = self._metadata_mpp()
        if my is None:
            my = mx
        if mx is None or not (_plausible(mx) and _plausible(my)):
            found = "no resolution in its metadata" if mx is None else f"an implausible resolution {mx} µm/px"
            if fallback is not None and _plausible(float(fallback)):
                return (float(fallback), float(fallback)), "override"
            raise MissingMPPError(
                f"{self.slide_id} ({self.path}): {found}; pass --mpp-override or a per-slide CSV "
                "(columns path, mpp) with its level-0 resolution in µm/px"
            )
        return (mx, my), "metadata"

    def reopen(self) -> None:
        """Close and reopen the handle (OpenSlide handles stay in an error state after a failed read)."""
        with contextlib.suppress(Exception):  # a broken handle may fail to close; reopening is what matters
            self.close()
        self._open()

    def level_mpp(self, level: int) -> tuple[float, float]:
        d = self.level_downsamples[level]
        return self.mpp[0] * d, self.mpp[1] * d

    def best_level(self, mpp: float) -> int:
        """The coarsest pyramid level whose resolution is at most ``mpp`` (within 1 %); 0 when none is."""
        best = 0
        for level, d in enumerate(self.level_downsamples):
            if max(self.mpp) * d <= mpp * _LEVEL_TOLERANCE:
                best = level if d >= self.level_downsamples[best] else best
        return best

    def box_size(self, size_px: int, *, mpp: float) -> tuple[int, int]:
        """Level-0 ``(w, h)`` in pixels of a ``size_px`` square at ``mpp`` µm/px."""
        return (
            max(1, round(size_px * mpp / self.mpp[0])),
            max(1, round(size_px * mpp / self.mpp[1])),
        )

    def read_region(self, x: int, y: int, w: int, h: int, *, level: int, scale: int = 1) -> np.ndarray:
        """Read level-0 box ``(x, y, w, h)`` from ``level``: ``(ceil(h/d), ceil(w/d), 3)`` uint8 RGB.

        ``d`` is the level's downsample times ``scale``; a ``scale`` above 1 must come from
        :meth:`native_scale`. Areas outside the slide (or transparent) are white. Raises :class:`SlideReadError`
        on a corrupt read (after reopening the handle, so the reader stays usable).
        """
        d = self.level_downsamples[level] * scale
        lw, lh = max(1, math.ceil(w / d - 1e-6)), max(1, math.ceil(h / d - 1e-6))
        try:
            if scale != 1:
                return self._read_level_scaled(int(x), int(y), level, lw, lh, scale)
            return self._read_level(int(x), int(y), level, lw, lh)
        except SlideError:
            raise
        except Exception as exc:  # OpenSlideError, OSError, PIL decode errors, tifffile errors
            self.reopen()
            raise SlideReadError(
                f"{self.slide_id}: reading level {level} at ({x}, {y}) size {lw}x{lh} failed: {exc}. "
                "The file is probably truncated or has corrupt tiles; re-copy it from the source"
            ) from exc

    def read_tile(self, x: int, y: int, size_px: int, *, mpp: float) -> np.ndarray:
        """The ``size_px`` square at ``mpp`` µm/px whose level-0 top-left is ``(x, y)``.

        Returns
        -------
        np.ndarray
            ``(size_px, size_px, 3)`` uint8 RGB.
        """
        w0, h0 = self.box_size(size_px, mpp=mpp)
        xy = np.array([x], np.int64), np.array([y], np.int64)
        return self.read_tiles(*xy, w0, h0, level=self.best_level(mpp), out_px=size_px)[0]

    def read_tiles(
        self, x: np.ndarray, y: np.ndarray, w0: int, h0: int, *, level: int, out_px: int
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
        x, y = np.asarray(x), np.asarray(y)
        d = self.level_downsamples[level]
        scale = self.native_scale(level, min(w0, h0) / d / out_px)
        d *= scale
        lw, lh = max(1, round(w0 / d)), max(1, round(h0 / d))
        # a new run where the row changes or the next box does not touch this one
        brk = np.flatnonzero((np.diff(y) != 0) | (np.diff(x) > w0) | (np.diff(x) < 0)) + 1
        runs = list(pairwise([0, *brk.tolist(), len(x)]))
        cut = np.empty((len(x), lh, lw, 3), np.uint8)
        cache = self._tiles.cache if getattr(self, "_tiles", None) is not None else None
        for i, (a, b) in enumerate(runs):
            # a block's lower rows come after its top row: this thread still wants the rows in between
            hold = cache.hold_mark() if (cache is not None and i > 0) else contextlib.nullcontext()
            with hold:
                self._cut_run(x[a:b], y[a:b], lw, lh, d, level, scale, cut[a:b])
        return resize_rgb_batch(cut, out_px, out_px)

    def _cut_run(self, x, y, lw: int, lh: int, d: float, level: int, scale: int, out: np.ndarray) -> None:
        """Read the region under boxes ``x``, ``y`` (level-0 corners; ``lw × lh`` read pixels each) and cut them
        into ``out``."""
        # tile corners in read pixels, and the region from floor(first corner) to the end of the last tile
        ox = np.round(x / d).astype(np.int64)
        oy = np.round(y / d).astype(np.int64)
        x0, y0 = int(x.min()), int(y.min())
        w, h = math.ceil((ox.max() + lw) * d - x0), math.ceil((oy.max() + lh) * d - y0)
        region = self.read_region(x0, y0, w, h, level=level, scale=scale)
        ox -= math.floor(x0 / d)
        oy -= math.floor(y0 / d)
        for i, (a, b) in enumerate(zip(ox.tolist(), oy.tolist(), strict=True)):
            out[i] = region[b : b + lh, a : a + lw]

    def thumbnail(self, *, mpp: float | None = None, max_size: int | None = None) -> tuple[np.ndarray, float]:
        """A downsampled view of the whole slide.

        Parameters
        ----------
        mpp
            Target resolution in µm/px (default 8, or what ``max_size`` needs).
        max_size
            Longest side in pixels; the coarser of the two limits wins.

        Returns
        -------
        image : np.ndarray
            ``(H, W, 3)`` uint8 RGB, white where the slide is transparent or empty.
        mpp : float
            The thumbnail's resolution in µm/px (x; y follows the slide's aspect).
        """
        W, H = self.dimensions
        mx, my = self.mpp
        if mpp is None and max_size is None:
            mpp = 8.0
        target = mpp if mpp is not None else 0.0
        if max_size is not None:
            target = max(target, max(W * mx, H * my) / max_size)
        target = max(target, min(mx, my))
        tw, th = max(1, round(W * mx / target)), max(1, round(H * my / target))
        level = self.best_level(target)
        scale = self.native_scale(level, min(W / tw, H / th) / self.level_downsamples[level])
        d = self.level_downsamples[level] * scale
        lw, lh = self.level_dimensions[level]
        lw, lh = -(-lw // scale), -(-lh // scale)
        out = np.empty((th, tw, 3), np.uint8)
        # strips of the level, each resized, so memory stays bounded on huge levels
        rows_per_strip = max(1, min(lh, (1 << 25) // max(1, lw * 4)))
        scale_y = th / lh
        y_out = 0
        for y_l in range(0, lh, rows_per_strip):
            h_l = min(rows_per_strip, lh - y_l)
            y_end = round((y_l + h_l) * scale_y) if y_l + h_l < lh else th
            if y_end <= y_out:
                continue
            strip = self.read_region(0, round(y_l * d), W, round(h_l * d), level=level, scale=scale)
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
    (the same filter as PIL's ``BILINEAR`` resize, within one grey level, and about 5× faster). Returns the input
    unchanged when it already has that size.
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
        self.objective_power = _float_or_none(osr.properties.get("openslide.objective-power"))
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
        mx, my = _float_or_none(p.get("openslide.mpp-x")), _float_or_none(p.get("openslide.mpp-y"))
        if mx is None:  # generic TIFF: resolution tags
            unit = p.get("tiff.ResolutionUnit", "").lower()
            per_um = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
            rx, ry = _float_or_none(p.get("tiff.XResolution")), _float_or_none(p.get("tiff.YResolution"))
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
            return _rgba_to_rgb_white(rgba)
        buf = np.empty((h, w, 4), np.uint8)  # premultiplied BGRA in memory (ARGB uint32, little-endian)
        self._raw_read(self._handle, buf.ctypes.data_as(POINTER(c_uint32)), x, y, level, w, h)
        rgb = buf[..., 2::-1]
        alpha = buf[..., 3]
        if alpha.min() < 255:  # premultiplied: over white is c + (255 - a)
            rgb = rgb + (255 - alpha)[..., None]
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._osr.close()


#: bytes of OpenSlide's own tile cache per slide (decoded ARGB tiles; see TileCache.share_with)
OPENSLIDE_CACHE_BYTES = 128 << 20


class TileCache:
    """Decoded JPEG tiles of one slide, kept for the reads that share them.

    Tiles are read row by row, so a tile is wanted again by the next box along its row and, where a box's edge
    falls inside a JPEG tile, by the row of boxes below: the cache must hold a band of JPEG rows as wide as the
    tissue. The count-limited FIFO of 64–96 tiles this replaces did not on slides with wide tissue (a 40,000 px
    wide 20x slide at 224 px decoded each JPEG tile twice). So each reading thread says where its read starts
    (:meth:`passed`), and the rows above the lowest such mark go; beyond ``max_bytes`` the oldest tiles go first.

    Thread-safe, so that the readers of one slide on several threads (featurize's in-process reading) share one
    cache: chunks alternate between the threads, and with a cache each, every thread would decode most edge tiles
    again (the demo cohort's featurize ran at 0.6× its single-thread speed that way)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._tiles: dict[tuple[int, int, int], np.ndarray] = {}
        #: per (level, scale): each reading thread's mark (see :meth:`passed`)
        self._marks: dict[tuple[int, int], dict[int, int]] = {}
        self._openslide = None  # see share_with
        self._held: set[int] = set()  # threads inside hold_mark
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            return self._tiles.get(key)

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        """Keep ``tile`` under ``key = (level, index, scale)`` (two threads may both have decoded it: the second
        copy replaces the first)."""
        with self._lock:
            old = self._tiles.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            while self._tiles and self.nbytes + tile.nbytes > self.max_bytes:
                self.nbytes -= self._tiles.pop(next(iter(self._tiles))).nbytes
            self._tiles[key] = tile
            self.nbytes += tile.nbytes

    def passed(self, level: int, scale: int, index: int) -> None:
        """The calling thread reads in raster order and will not want the tiles of ``level`` at ``1/scale`` size
        numbered below ``index`` (the JPEG rows above its read) again: once every thread reading that level has said
        so, they go. A mark may also go back (the next slide of the same file starts at the top again); reads out of
        raster order only cost decoding again."""
        me = threading.get_ident()
        with self._lock:
            if me in self._held:
                return
            marks = self._marks.setdefault((level, scale), {})
            before = min(marks.values(), default=0)
            marks[me] = index
            low = min(marks.values())
            if low <= before:  # what is below the lowest mark went when it was reached
                return
            for k in [k for k in self._tiles if k[1] < low and k[0] == level and k[2] == scale]:
                self.nbytes -= self._tiles.pop(k).nbytes

    def clear(self) -> None:
        """Drop every tile (the slide has been read); the cache stays shared by the slide's readers."""
        with self._lock:
            self._tiles.clear()
            self.nbytes = 0
            self._marks.clear()
            self._openslide = None  # OpenSlide frees it with the last handle that uses it

    @contextlib.contextmanager
    def hold_mark(self):
        """Within this block the calling thread's reads leave its mark (:meth:`passed`) where it is: it reads a
        block of rows, whose top row it has marked, one row at a time, and goes back up for the next block."""
        me = threading.get_ident()
        with self._lock:
            self._held.add(me)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(me)

    def share_with(self, osr) -> None:
        """Give OpenSlide handle ``osr`` this slide's OpenSlide tile cache, for the tiles OpenSlide decodes itself
        (formats and levels the direct JPEG path does not read). Its default cache, one per handle, is too small
        for a band of wide tissue: 128 MiB shared read a 40,000 px wide 20x slide at 224 px 1.19× faster."""
        import openslide

        if not hasattr(openslide, "OpenSlideCache"):  # pragma: no cover - openslide-python < 1.3
            return
        with self._lock:
            if self._openslide is None:
                self._openslide = openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES)
            osr.set_cache(self._openslide)

    def __len__(self) -> int:
        return len(self._tiles)


class _TiffJpegTiles:
    """Direct decoding of JPEG-tiled TIFF levels (Aperio SVS, generic tiled TIFF) with tifffile + libjpeg-turbo.

    OpenSlide spends most of a large ``read_region`` converting and compositing premultiplied ARGB tile by tile;
    decoding the level's JPEG tiles straight into an RGB array is ≈ 3–4× faster. Used only where every level maps
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
                and match[0].compression == 7  # JPEG
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
            ok = page.photometric == 6
            if page.photometric == 2:
                head = bytes(page.jpegtables or b"")
                first = next((i for i, n in enumerate(page.databytecounts) if n), None)
                if first is not None:
                    self.tf.filehandle.seek(page.dataoffsets[first])
                    head += self.tf.filehandle.read(64)
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
    if page.photometric == 2:  # RGB, not YCbCr: no colour transform
        stream = stream[:2] + _ADOBE_RGB + stream[2:]
    th, tw = page.tilelength // scale, page.tilewidth // scale
    out = simplejpeg.decode_jpeg(stream, colorspace="RGB", min_height=th, min_width=tw)
    if out.shape[:2] != (th, tw):  # pragma: no cover - libjpeg-turbo always offers 1/2, 1/4, 1/8
        raise OSError(f"scaled JPEG decode gave {out.shape[:2]}, expected {(th, tw)}")
    return out


def _rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA over white."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    a = rgba[..., 3:4].astype(np.uint16)
    if a.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


class _ImageReader(SlideReader):
    """Plain PNG/JPEG/TIFF (one level) read into memory with PIL or tifffile."""

    vendor = "image"

    def _open(self) -> None:
        suffix = self.path.suffix.lower()
        self._dpi: tuple[float, float] | None = None
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(self.path) as tf:
                page = tf.pages[0]
                arr = page.asarray()
                self._dpi = _tiff_pixels_per_um(page)
        else:
            with Image.open(self.path) as im:
                im.load()
                dpi = im.info.get("dpi")
                if dpi and all(float(v) > 0 for v in dpi):
                    self._dpi = (float(dpi[0]) / 25400.0, float(dpi[1]) / 25400.0)
                arr = np.asarray(
                    im.convert("RGBA") if im.mode in ("RGBA", "LA", "PA", "P") else im.convert("RGB")
                )
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype != np.uint8:
            raise SlideOpenError(
                f"{self.slide_id}: {self.path} holds {arr.dtype} pixels; only 8-bit RGB is read"
            )
        self._arr = _rgba_to_rgb_white(arr[..., :4])
        h, w = self._arr.shape[:2]
        self.dimensions = (w, h)
        self.level_count = 1
        self.level_downsamples = (1.0,)
        self.level_dimensions = ((w, h),)
        self.objective_power = None
        self.properties = {}

    def _metadata_mpp(self) -> tuple[float | None, float | None]:
        if not self._dpi:
            return None, None
        return 1.0 / self._dpi[0], 1.0 / self._dpi[1]

    def _read_level(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        W, H = self.dimensions
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._arr[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._arr = np.empty((0, 0, 3), np.uint8)


def _tiff_pixels_per_um(page) -> tuple[float, float] | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    per_um = {2: 1 / 25400.0, 3: 1 / 1e4}.get(unit)
    if per_um is None:
        return None

    def _ratio(v) -> float:
        return v[0] / v[1] if isinstance(v, tuple) and v[1] else float(v if not isinstance(v, tuple) else 0)

    rx = _ratio(tags["XResolution"].value)
    ry = _ratio(tags["YResolution"].value) if "YResolution" in tags else rx
    if rx <= 0:
        return None
    return rx * per_um, (ry or rx) * per_um


def open_slide(
    path: str | os.PathLike,
    *,
    mpp_override: float | None = None,
    mpp_fallback: float | None = None,
    slide_id: str | None = None,
    fast_jpeg: bool = True,
    tile_cache: TileCache | None = None,
) -> SlideReader:
    """Open a whole-slide image (OpenSlide formats) or a plain PNG/JPEG/TIFF image behind one interface.

    Parameters
    ----------
    path
        The slide file.
    mpp_override
        Level-0 resolution in µm/px to use instead of the file's metadata.
    mpp_fallback
        Level-0 resolution in µm/px to use only where the metadata has none, or an implausible one.
    slide_id
        Identifier used in messages and the store (default: the file name without its extension).
    fast_jpeg
        Decode JPEG-tiled TIFF levels (Aperio, generic TIFF) directly with libjpeg-turbo instead of through
        OpenSlide's ``read_region`` (same pixels up to JPEG decoder rounding; ≈ 3× faster). Metadata, other
        formats and other compressions always go through OpenSlide.
    tile_cache
        Where decoded JPEG tiles are kept for neighbouring reads (default: a cache of this reader's own); pass one
        :class:`TileCache` to the readers of one slide on several threads.

    Returns
    -------
    SlideReader
        Use as a context manager or call ``close()``.

    Raises
    ------
    SlideOpenError
        The file is missing, empty, or neither OpenSlide nor PIL/tifffile can read it.
    MissingMPPError
        No plausible resolution in the metadata and no ``mpp_override`` or ``mpp_fallback``.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.png"
    >>> Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(p)
    >>> with open_slide(p, mpp_override=0.5) as s:
    ...     s.dimensions, s.mpp_source, s.read_tile(0, 0, 100, mpp=1.0).shape
    ((400, 300), 'override', (100, 100, 3))
    """
    p = Path(path)
    sid = slide_id if slide_id is not None else p.stem
    if not p.is_file():
        raise SlideOpenError(f"{sid}: {p} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise SlideOpenError(f"{sid}: {p} is empty (0 bytes); re-copy it from the source")
    import openslide

    errors = []
    fmt = None
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except Exception as exc:  # noqa: BLE001 - detection errors are reported below
        errors.append(f"OpenSlide: {exc}")
    if fmt is not None:
        try:
            return _OpenSlideReader(
                p,
                slide_id=sid,
                mpp_override=mpp_override,
                mpp_fallback=mpp_fallback,
                fast_jpeg=fast_jpeg,
                tile_cache=tile_cache,
            )
        except MissingMPPError:
            raise
        except Exception as exc:  # OpenSlideError: corrupt header or truncated directory
            errors.append(f"OpenSlide ({fmt}): {exc}")
            if fmt != "generic-tiff":
                raise SlideOpenError(
                    f"{sid}: OpenSlide cannot open {p} ({fmt}): {exc}; the file is probably truncated or "
                    "corrupt — re-copy it from the source"
                ) from exc
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            return _ImageReader(p, slide_id=sid, mpp_override=mpp_override, mpp_fallback=mpp_fallback)
        except (MissingMPPError, SlideOpenError):
            raise
        except Exception as exc:  # PIL.UnidentifiedImageError, OSError (truncated), tifffile errors
            errors.append(f"image: {exc}")
    why = "; ".join(errors) if errors else "not a format OpenSlide reads"
    hint = ""
    if p.suffix.lower() in SLIDE_FORMAT_HINT_EXTENSIONS:
        hint = (
            f" A {p.suffix} file that will not open is usually truncated or corrupt ({p.stat().st_size:,} bytes):"
            " re-copy it from the source."
        )
    raise SlideOpenError(
        f"{sid}: cannot open {p} as a slide ({why}).{hint} Supported: OpenSlide formats "
        f"(.svs .ndpi .mrxs .scn .tiff …) and plain {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images"
    )
