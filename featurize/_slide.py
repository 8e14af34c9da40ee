"""The slide reader's interface: a whole-slide image as level-0 boxes read from a pyramid, and its errors.

Coordinates are always level-0 pixels; resolutions are µm/px. A tile is a level-0 box read from the pyramid level
nearest below (finer than or equal to) the target resolution and resized with antialiasing to the target size.
Backends (:mod:`._openslide`, :mod:`._image`) provide the handle; :func:`featurize.open_slide` picks one.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slide2expr.featurize._regions import read_thumbnail, read_tile_runs

if TYPE_CHECKING:
    from slide2expr.featurize._tilecache import TileCache

#: Plausible range of a slide's level-0 resolution, µm/px (0.05: beyond any optical scanner; 20: a thumbnail).
MPP_RANGE = (0.05, 20.0)
#: A level is usable for a target resolution when its mpp is at most this factor above the target
#: (so 0.5015 µm/px serves 0.5 µm/px without a resize).
LEVEL_TOLERANCE = 1.01


class SlideError(Exception):
    """Base class of errors about one slide; the message names the slide."""


class SlideOpenError(SlideError, OSError):
    """The file cannot be opened as a slide (missing, empty, unsupported or corrupt header)."""


class SlideReadError(SlideError, OSError):
    """Reading pixels failed (truncated file, corrupt tile). The reader reopens its handle to continue."""


class MissingMPPError(SlideError, ValueError):
    """The slide has no (plausible) resolution in its metadata and none was given."""


def plausible_mpp(mpp: float | None) -> bool:
    """Whether ``mpp`` is a finite level-0 resolution within :data:`MPP_RANGE`."""
    return mpp is not None and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def float_or_none(value) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def resolve_mpp(
    reader: SlideReader, override: float | None, fallback: float | None
) -> tuple[tuple[float, float], str]:
    """An open slide's level-0 ``((x, y), source)``: ``override`` wins, then its metadata's ``(x, y)`` when
    plausible, then ``fallback``; :class:`MissingMPPError` when none is plausible."""
    slide_id, path = reader.slide_id, reader.path
    if override is not None:
        if not plausible_mpp(float(override)):
            raise MissingMPPError(
                f"{slide_id}: mpp override {override} µm/px (a slide list's mpp column) is outside the "
                f"plausible range {MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px; give the scanner's level-0 resolution"
            )
        return (float(override), float(override)), "override"
    mx, my = reader._metadata_mpp()
    if my is None:
        my = mx
    if mx is None or not (plausible_mpp(mx) and plausible_mpp(my)):
        found = "no resolution in its metadata" if mx is None else f"an implausible resolution {mx} µm/px"
        if fallback is not None and plausible_mpp(float(fallback)):
            return (float(fallback), float(fallback)), "override"
        raise MissingMPPError(
            f"{slide_id} ({path}): {found}; pass --mpp-override or a per-slide CSV "
            "(columns path, mpp) with its level-0 resolution in µm/px"
        )
    return (mx, my), "metadata"


class SlideReader:
    """A whole-slide image opened for reading; use :func:`featurize.open_slide` to make one.

    Attributes
    ----------
    slide_id, path : str, Path
        The slide's id (its file stem unless given) and file.
    vendor : str
        OpenSlide's vendor (``aperio``, ``hamamatsu``, ``generic-tiff`` …), or ``image`` for plain images.
    dimensions, mpp, mpp_source : tuple[int, int], tuple[float, float], str
        Level-0 ``(width, height)`` in pixels, ``(x, y)`` in µm/px, and where that came from (``metadata`` or
        ``override``).
    objective_power, level_count, level_downsamples, level_dimensions
        The scanner's objective (or None) and the pyramid.
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
        self.path, self.slide_id = path, slide_id
        self._fast_jpeg, self._tile_cache = fast_jpeg, tile_cache
        self._open()
        try:
            self.mpp, self.mpp_source = resolve_mpp(self, mpp_override, mpp_fallback)
        except BaseException:
            self.close()
            raise

    # ---- a backend provides ``_open()`` (sets the attributes above), ``_metadata_mpp() -> (x, y)``,
    # ``_read_level(x, y, level, w, h)`` (``(h, w, 3)`` uint8 RGB of ``level`` whose top-left is level-0 ``(x, y)``,
    # white outside) and ``close()``; one that decodes at reduced size also ``native_scale`` and
    # ``_read_level_scaled(x, y, level, w, h, scale)`` (the same at ``1/scale`` of the level's size)
    def native_scale(self, level: int, factor: float) -> int:
        """The largest reduction ``s`` ≤ ``factor`` (1, 2, 4 or 8) at which ``level`` decodes natively.

        JPEG-tiled levels decode at 1/2, 1/4 or 1/8 size in the DCT domain (libjpeg-turbo's scaled IDCT: an
        antialiased downsample for a fraction of the decode cost); other backends only read at full size.
        """
        return 1

    def decoded_tiles(self) -> TileCache | None:
        """The cache of decoded JPEG tiles this reader reads through, or None."""
        return None

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

    def reopen(self) -> None:
        """Close and reopen the handle (OpenSlide handles stay in an error state after a failed read)."""
        with contextlib.suppress(Exception):  # a broken handle may fail to close; reopening is what matters
            self.close()
        self._open()

    def best_level(self, mpp: float) -> int:
        """The coarsest pyramid level whose resolution is at most ``mpp`` (within 1 %); 0 when none is."""
        best = 0
        for level, d in enumerate(self.level_downsamples):
            if max(self.mpp) * d <= mpp * LEVEL_TOLERANCE:
                best = level if d >= self.level_downsamples[best] else best
        return best

    def box_size(self, size_px: int, *, mpp: float) -> tuple[int, int]:
        """Level-0 ``(w, h)`` in pixels of a ``size_px`` square at ``mpp`` µm/px."""
        return (max(1, round(size_px * mpp / self.mpp[0])), max(1, round(size_px * mpp / self.mpp[1])))

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
        """The ``(size_px, size_px, 3)`` uint8 RGB square at ``mpp`` µm/px whose level-0 top-left is ``(x, y)``."""
        w0, h0 = self.box_size(size_px, mpp=mpp)
        xy = np.array([x], np.int64), np.array([y], np.int64)
        return self.read_tiles(*xy, w0, h0, level=self.best_level(mpp), out_px=size_px)[0]

    def read_tiles(
        self, x: np.ndarray, y: np.ndarray, w0: int, h0: int, *, level: int, out_px: int
    ) -> np.ndarray:
        """``(k, out_px, out_px, 3)`` uint8 RGB: the tiles of level-0 size ``(w0, h0)`` at corners ``x``, ``y``,
        one region read per run of neighbours in a row (see :func:`featurize._regions.read_tile_runs`)."""
        return read_tile_runs(self, np.asarray(x), np.asarray(y), w0, h0, level=level, out_px=out_px)

    def thumbnail(self, *, mpp: float | None = None, max_size: int | None = None) -> tuple[np.ndarray, float]:
        """A downsampled view of the whole slide at ``mpp`` µm/px (default 8) and/or at most ``max_size`` px on
        its longest side (the coarser wins): ``(image, mpp)``, the image ``(H, W, 3)`` uint8 RGB, white where the
        slide is empty, ``mpp`` its resolution in µm/px (x; y follows the slide's aspect)."""
        return read_thumbnail(self, mpp=mpp, max_size=max_size)
