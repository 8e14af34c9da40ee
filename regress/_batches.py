"""Batches of bags bounded in tiles: what a fitted model scores at once when it reads every tile of many bags."""

from __future__ import annotations

import numpy as np

from slide2expr.contract import Cohort

#: Tiles scored at once when a fitted model reads every tile of many bags (``predict``, held-out tile scores): a
#: batch of a cohort read on access holds at most this many tiles' features and outputs (a larger bag alone).
TILE_BATCH = 100_000


def bag_tiles(cohort: Cohort, index) -> np.ndarray:
    """``(len(index),)`` tiles of the cohort's bags ``index``."""
    return np.array(
        [cohort.bag_slice(int(i)).stop - cohort.bag_slice(int(i)).start for i in index], dtype=np.int64
    )


def tile_batches(sizes, *, max_bags: int | None = None, max_tiles: int | None = None) -> list[range]:
    """Consecutive positions of bags of ``sizes`` tiles in batches of at most ``max_bags`` bags and ``max_tiles``
    tiles (default :data:`TILE_BATCH`; a larger bag alone).

    >>> [list(b) for b in tile_batches([5, 5, 20, 1, 1, 1], max_tiles=10)]
    [[0, 1], [2], [3, 4, 5]]
    >>> [list(b) for b in tile_batches([5, 5, 20, 1, 1, 1], max_bags=2, max_tiles=100)]
    [[0, 1], [2, 3], [4, 5]]
    """
    max_tiles = TILE_BATCH if max_tiles is None else max_tiles
    out, start, tiles = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and ((max_bags is not None and i - start >= max_bags) or tiles + n > max_tiles):
            out.append(range(start, i))
            start, tiles = i, 0
        tiles += int(n)
    if start < len(sizes):
        out.append(range(start, len(sizes)))
    return out
