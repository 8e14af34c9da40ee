"""Bags read on access: a cohort larger than memory as a sequence of bags, each read from the pages when asked for.

:func:`lazy_cohort` plans the bags as :func:`sql.load_cohort` does (same order, same targets) but reads nothing
until a bag is indexed: ``bags[i]`` reads that bag's rows straight from its slides' data pages (:mod:`sql._rows`)
into a fresh ``(n_tiles, d)`` float32 array, and ``bags.sample(i, n, rng)`` reads only ``n`` uniformly drawn rows
of it (one ``pread`` per row), which is what a MIL step that subsamples tiles needs. Memory holds the bags the caller
keeps, never the cohort.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slide2expr.sql._bags import _plan, _targets_for_plan, _warn_missing, read_targets
from slide2expr.sql._similar import _Reader


class LazyCohort(Sequence):
    """Bags of one tiling/encoder, read on access (see the module doc).

    Attributes: ``bag_ids``, ``groups`` (patient of each bag), ``n_tiles`` (n_bags,), ``dim``, ``y_true``
    (n_bags, n_genes) float64 or None, ``genes``, ``encoder``, ``tiling``, ``by``, ``missing_targets``.
    """

    def __init__(self, plan, files: Sequence[int], *, by: str, y_all, genes, missing):
        self._files = [plan.files[j] for j in files]
        file_bag = np.asarray([plan.bag_of_file[j] for j in files], dtype=np.int64)
        bags = list(dict.fromkeys(file_bag.tolist()))  # plan order, bags with at least one file kept
        self._of_bag = [np.flatnonzero(file_bag == b) for b in bags]
        self.bag_ids = np.array([plan.bag_ids[b] for b in bags], dtype=object)
        self.groups = np.array([plan.groups[b] for b in bags], dtype=object)
        self.dim, self.encoder, self.tiling, self.by = plan.dim, plan.encoder, plan.tiling, by
        self.y_true = None if y_all is None else y_all[bags]
        self.genes = genes
        self.missing_targets = tuple(m for m in missing if m in set(self.bag_ids))
        self.n_tiles = np.array(
            [sum(self._files[j].n_rows for j in js) for js in self._of_bag], dtype=np.int64
        )

    def __len__(self) -> int:
        return len(self.bag_ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole cohort as float32: what :func:`sql.load_cohort` would hold."""
        return int(self.n_tiles.sum()) * self.dim * 4

    def _read(self, j: int, rows: np.ndarray | None) -> np.ndarray:
        reader = _Reader(self._files[j].path)
        try:
            values = reader.all_rows() if rows is None else reader.rows(rows)
        finally:
            reader.close()
        return np.asarray(values, dtype=np.float32)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        parts = [self._read(int(j), None) for j in self._of_bag[i]]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def sample(self, i: int, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``min(n, n_tiles[i])`` rows of bag ``i`` drawn uniformly without replacement, in bag order,
        ``(n, d)`` float32; only those rows are read."""
        rng = np.random.default_rng(rng)
        total = int(self.n_tiles[i])
        if n >= total:
            return self[i]
        pick = np.sort(rng.choice(total, size=n, replace=False))
        out, start = [], 0
        for j in self._of_bag[i]:
            rows = self._files[int(j)].n_rows
            mine = pick[(pick >= start) & (pick < start + rows)] - start
            if len(mine):
                out.append(self._read(int(j), mine))
            start += rows
        return np.concatenate(out)


def lazy_cohort(
    store: str | os.PathLike,
    *,
    encoder: str,
    tiling: str | None = None,
    targets: str | os.PathLike | None = None,
    by: str = "patient",
    genes: Sequence[str] | None = None,
) -> LazyCohort:
    """The bags of :func:`sql.load_cohort` (same order, same ``y_true``), read on access; nothing is read now but
    the footers and the targets. Bags without targets are kept with NaN rows and listed in ``missing_targets``."""
    plan = _plan(Path(store), encoder=encoder, tiling=tiling, by=by)
    table = read_targets(store, targets) if targets is not None else None
    y_all, gene_names, missing, _, excluded = _targets_for_plan(plan, table, genes, stacklevel=2)
    _warn_missing(missing, drop_missing=False, stacklevel=2)
    files = [j for j in range(len(plan.files)) if j not in set(excluded)]
    return LazyCohort(plan, files, by=by, y_all=y_all, genes=gene_names, missing=missing)
