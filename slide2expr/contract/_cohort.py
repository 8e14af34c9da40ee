"""``Cohort``: what sql produces and regress consumes — bags as views into one flat feature array, with targets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Cohort:
    """Bags, targets and groups for training, built by :func:`slide2expr.sql.load_cohort`.

    Attributes
    ----------
    features
        ``(n_tiles_total, d)`` float32, all tiles of all bags in bag order, tiles of a slide in ``tile_id`` order.
    offsets
        ``(n_bags + 1,)`` int64; bag ``i`` is ``features[offsets[i]:offsets[i + 1]]``.
    bag_ids
        ``(n_bags,)`` str: patient ids (``by="patient"``) or slide ids (``by="slide"``).
    groups
        ``(n_bags,)`` str: the patient of each bag (use as ``groups=`` for grouped CV).
    slide_ids, tile_ids, x, y
        ``(n_tiles_total,)`` per tile: its slide, ``tile_id`` and level-0 top-left coordinates.
    y_true
        ``(n_bags, n_genes)`` float64 targets (transformed values), NaN where a bag has no value; or None.
    genes
        ``(n_genes,)`` gene names, column order of ``y_true``.
    encoder, tiling
        Where the features came from; ``meta`` holds the embeddings files' metadata (weights sha256, dim, …).
    missing_targets
        Bag ids that have tiles but no targets (reported, not silently dropped).
    """

    features: np.ndarray
    offsets: np.ndarray
    bag_ids: np.ndarray
    groups: np.ndarray
    slide_ids: np.ndarray
    tile_ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    y_true: np.ndarray | None
    genes: tuple[str, ...]
    encoder: str
    tiling: str
    by: str = "patient"
    meta: dict = field(default_factory=dict)
    missing_targets: tuple[str, ...] = ()

    @property
    def bags(self) -> list[np.ndarray]:
        """Bags as a list of ``(n_tiles, d)`` views into :attr:`features` (no copies)."""
        f, o = self.features, self.offsets
        return [f[o[i] : o[i + 1]] for i in range(len(o) - 1)]

    @property
    def n_bags(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def bag_slice(self, i: int) -> slice:
        """Rows of bag ``i`` in the per-tile arrays."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))
