"""Opening a store's slides through featurize's reader (thumbnails, full-resolution tiles)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slide2expr.explain._inputs import ExplainError, slide_row


def open_store_slide(store: str | os.PathLike, slide_id: str):
    """Open ``slide_id`` from the path recorded in ``STORE/slides/<slide_id>.parquet``.

    The recorded mpp is passed as an override when the store says it came from one, so coordinates agree with the
    tile grid. Raises :class:`ExplainError` naming the slide and its path when the file is gone or unreadable.
    """
    from slide2expr.featurize import SlideError, open_slide

    row = slide_row(store, slide_id)
    path = row.get("path")
    if not path:
        raise ExplainError(f"slide {slide_id!r} has no path in {store}/slides: re-featurize it")
    override = row.get("mpp_x") if row.get("mpp_source") == "override" else None
    try:
        return open_slide(Path(path), mpp_override=override, slide_id=slide_id)
    except SlideError as exc:
        raise ExplainError(
            f"slide {slide_id!r} cannot be opened from {path}: {exc}. Put the slide file back at that path "
            "(or re-featurize from its new location)"
        ) from exc


def slide_thumbnail(store: str | os.PathLike, slide_id: str, *, max_size: int = 1024) -> np.ndarray:
    """``(H, W, 3)`` uint8 thumbnail of the slide, longest side at most ``max_size`` px."""
    with open_store_slide(store, slide_id) as reader:
        image, _ = reader.thumbnail(max_size=max_size)
    return image


def read_tiles_full_res(store: str | os.PathLike, slide_id: str, boxes) -> list[np.ndarray]:
    """Level-0 (full-resolution) pixels of each ``(x, y, w, h)`` box: a list of ``(h, w, 3)`` uint8 arrays."""
    with open_store_slide(store, slide_id) as reader:
        return [
            reader.read_region(int(x), int(y), int(w), int(h), level=0)[: int(h), : int(w)]
            for x, y, w, h in boxes
        ]
