"""Plain PNG/JPEG/TIFF/BMP images as one-level slides, read into memory with PIL or tifffile."""

from __future__ import annotations

import numpy as np
from PIL import Image

from slide2expr.featurize._regions import rgba_over_white
from slide2expr.featurize._slide import SlideOpenError, SlideReader

Image.MAX_IMAGE_PIXELS = None  # plain slide images are legitimately huge
#: micrometres per inch and per centimetre (the units of image resolution tags)
UM_PER_INCH, UM_PER_CM = 25400.0, 1e4
#: TIFF ResolutionUnit codes
_TIFF_INCH, _TIFF_CM = 2, 3


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
                    self._dpi = (float(dpi[0]) / UM_PER_INCH, float(dpi[1]) / UM_PER_INCH)
                arr = np.asarray(
                    im.convert("RGBA") if im.mode in ("RGBA", "LA", "PA", "P") else im.convert("RGB")
                )
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype != np.uint8:
            raise SlideOpenError(
                f"{self.slide_id}: {self.path} holds {arr.dtype} pixels; only 8-bit RGB is read"
            )
        self._arr = rgba_over_white(arr[..., :4])
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
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else _TIFF_INCH
    per_um = {_TIFF_INCH: 1 / UM_PER_INCH, _TIFF_CM: 1 / UM_PER_CM}.get(unit)
    if per_um is None:
        return None

    def _ratio(v) -> float:
        return v[0] / v[1] if isinstance(v, tuple) and v[1] else float(v if not isinstance(v, tuple) else 0)

    rx = _ratio(tags["XResolution"].value)
    ry = _ratio(tags["YResolution"].value) if "YResolution" in tags else rx
    if rx <= 0:
        return None
    return rx * per_um, (ry or rx) * per_um
