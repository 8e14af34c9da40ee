"""Bags read on access: a cohort larger than memory as a sequence of bags, each read from the pages when asked for.

:func:`lazy_cohort` plans the bags as :func:`sql.load_cohort` does (same order, same targets) but reads nothing
until a bag is indexed: ``bags[i]`` reads that bag's rows straight from its slides' data pages (:mod:`sql._rows`)
into a fresh ``(n_tiles, d)`` float32 array, and ``bags.sample(i, n, rng)`` reads only ``n`` uniformly drawn rows
of it (one ``pread`` per row), which is what a MIL step that subsamples tiles needs. Memory holds the bags the caller
keeps, never the cohort.

A :class:`LazyCohort` answers what ``regress.compare`` asks of a :class:`~slide2expr.contract.Cohort` besides the
features themselves: ``offsets``, ``bag_slice``, per-tile ``slide_ids``/``tile_ids``/``x``/``y`` (read from the
files' small columns on first use, about 20 bytes a tile) and ``features``, whose rows are read when indexed.
:func:`open_cohort` chooses between the two by a memory setting.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq

from slide2expr.contract import StoreError, is_remote, store_path
from slide2expr.sql._bags import _plan, _targets_for_plan, _warn_missing, load_cohort, read_targets
from slide2expr.sql._similar import _Reader


class LazyCohort(Sequence):
    """Bags of one tiling/encoder, read on access (see the module doc).

    Attributes: ``bag_ids``, ``groups`` (patient of each bag), ``n_tiles`` (n_bags,), ``dim``, ``y_true``
    (n_bags, n_genes) float64 or None, ``genes``, ``encoder``, ``tiling``, ``by``, ``missing_targets``.
    """

    def __init__(self, plan, files: Sequence[int], *, by: str, y_all, genes, missing, store=None):
        self.store = None if store is None else store_path(store)
        self.meta = dict(plan.meta)
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
    def n_bags(self) -> int:
        return len(self.bag_ids)

    @property
    def bags(self) -> LazyCohort:
        """The bags (this sequence: each read when indexed)."""
        return self

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """``(n_bags + 1,)`` int64: bag ``i`` is rows ``offsets[i]:offsets[i + 1]`` of the cohort's tile order."""
        return np.concatenate([[0], np.cumsum(self.n_tiles)]).astype(np.int64)

    def bag_slice(self, i: int) -> slice:
        """Bag ``i``'s rows in :attr:`offsets`' order."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    @functools.cached_property
    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        """Files in tile order and the first row of each."""
        order = np.concatenate(self._of_bag).astype(np.int64) if self._of_bag else np.zeros(0, np.int64)
        rows = np.array([self._files[j].n_rows for j in order], dtype=np.int64)
        return order, np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)

    @functools.cached_property
    def _tile_columns(self) -> dict[str, np.ndarray]:
        order, _ = self._order
        parts: dict[str, list] = {"slide_ids": [], "tile_ids": [], "x": [], "y": []}
        for j in order:
            f = self._files[int(j)]
            t = pq.read_table(f.path, columns=["tile_id", "x", "y"], use_threads=False)
            parts["slide_ids"].append(np.full(t.num_rows, f.slide_id, dtype=object))
            parts["tile_ids"].append(t.column("tile_id").to_numpy().astype(np.int32))
            parts["x"].append(t.column("x").to_numpy().astype(np.int64))
            parts["y"].append(t.column("y").to_numpy().astype(np.int64))
        empty = {"slide_ids": object, "tile_ids": np.int32, "x": np.int64, "y": np.int64}
        return {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in parts.items()}

    @property
    def slide_ids(self) -> np.ndarray:
        """``(n_tiles_total,)`` object: each tile's slide (read on first use)."""
        return self._tile_columns["slide_ids"]

    @property
    def tile_ids(self) -> np.ndarray:
        """``(n_tiles_total,)`` int32: each tile's ``tile_id`` (read on first use)."""
        return self._tile_columns["tile_ids"]

    @property
    def x(self) -> np.ndarray:
        """``(n_tiles_total,)`` int64: each tile's level-0 left coordinate (read on first use)."""
        return self._tile_columns["x"]

    @property
    def y(self) -> np.ndarray:
        """``(n_tiles_total,)`` int64: each tile's level-0 top coordinate (read on first use)."""
        return self._tile_columns["y"]

    @property
    def features(self) -> _Rows:
        """The cohort's tile rows, read when indexed (``features[::step]``, ``features[rows]``)."""
        return _Rows(self)

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


class _Rows:
    """Rows of a :class:`LazyCohort` in tile order; indexing with a slice or integer array reads those rows only."""

    def __init__(self, cohort: LazyCohort):
        self._cohort = cohort

    def __len__(self) -> int:
        return int(self._cohort.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self._cohort.dim

    def __getitem__(self, key) -> np.ndarray:
        rows = np.arange(len(self))[key]
        if np.ndim(rows) == 0:
            return self[np.array([rows])][0]
        order, starts = self._cohort._order
        where = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), self._cohort.dim), dtype=np.float32)
        for k in np.unique(where):
            mine = np.flatnonzero(where == k)
            local = rows[mine] - starts[k]
            sort = np.argsort(local, kind="stable")
            out[mine[sort]] = self._cohort._read(int(order[k]), local[sort])
        return out


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
    if is_remote(store):
        raise StoreError(
            f"{store}: bags are read on access from local files only; copy the store to a folder (aws s3 sync "
            "STORE DIR) and give that folder, or load it in memory (--in-memory)"
        )
    plan = _plan(store, encoder=encoder, tiling=tiling, by=by)
    table = read_targets(store, targets) if targets is not None else None
    y_all, gene_names, missing, _, excluded = _targets_for_plan(plan, table, genes, stacklevel=2)
    _warn_missing(missing, drop_missing=False, stacklevel=2)
    skip = set(excluded)
    files = [j for j in range(len(plan.files)) if j not in skip]
    return LazyCohort(plan, files, by=by, y_all=y_all, genes=gene_names, missing=missing, store=store)


#: Share of the memory setting that a cohort loaded in memory may take (the rest is for the models and outputs).
IN_MEMORY_SHARE = 0.5
#: The memory setting's default: this share of the machine's physical memory.
DEFAULT_MEMORY_SHARE = 1 / 3


def default_max_memory_gb() -> float:
    """A third of the machine's physical memory, in GB (8 GB where it cannot be read).

    >>> default_max_memory_gb() > 0
    True
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8.0
    return round(total * DEFAULT_MEMORY_SHARE / 1e9, 1)


def check_max_memory_gb(max_memory_gb: float | None) -> float:
    """``max_memory_gb`` as a positive number of GB (None: :func:`default_max_memory_gb`); ValueError naming it."""
    if max_memory_gb is None:
        return default_max_memory_gb()
    if isinstance(max_memory_gb, bool) or not isinstance(max_memory_gb, int | float) or not max_memory_gb > 0:
        raise ValueError(f"max_memory_gb={max_memory_gb!r}: give the memory bound in GB as a number > 0")
    return float(max_memory_gb)


def open_cohort(
    store: str | os.PathLike,
    *,
    encoder: str,
    tiling: str | None = None,
    targets: str | os.PathLike | None = None,
    by: str = "patient",
    genes: Sequence[str] | None = None,
    max_memory_gb: float | None = None,
    lazy: bool | None = None,
):
    """The cohort of :func:`sql.load_cohort` in memory when its float32 features take at most
    :data:`IN_MEMORY_SHARE` of ``max_memory_gb`` (default :func:`default_max_memory_gb`), else a
    :class:`LazyCohort` (bags read on access); ``lazy`` True or False forces the choice. An ``s3://`` store is
    loaded in memory (bags are read on access from local files only)."""
    budget = check_max_memory_gb(max_memory_gb)
    if lazy is None and is_remote(store):
        lazy = False  # an object store is read whole (ranged reads of each file's embedding column)
    if lazy is None:
        lazy = (
            lazy_cohort(store, encoder=encoder, tiling=tiling, by=by).nbytes > IN_MEMORY_SHARE * budget * 1e9
        )
    if lazy:
        return lazy_cohort(store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes)
    return load_cohort(store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes)
