"""Opening a slide: OpenSlide formats and plain images behind one :class:`featurize.SlideReader` interface."""

from __future__ import annotations

import os
from pathlib import Path

from slide2expr.featurize._image import _ImageReader
from slide2expr.featurize._openslide import _OpenSlideReader
from slide2expr.featurize._slide import MissingMPPError, SlideOpenError, SlideReader
from slide2expr.featurize._tilecache import TileCache

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
        OpenSlide's ``read_region`` (same pixels up to JPEG decoder rounding, faster). Metadata, other
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
