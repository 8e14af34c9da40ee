"""Pooled bag features of a store in one streaming pass, cached beside it: mean, max, min and std per dimension.

The statistics the pooled baselines use (``BagPooler(stats=("mean", "max"))`` and friends) are fold-independent:
each bag's mean or max does not depend on which patients train. They are computed once per store from per-slide
sufficient statistics — tile count, mean and sum of squared deviations (float64), max and min — read slide by slide
straight from the Parquet pages (:mod:`sql._rows`), so memory holds one slide's embeddings whatever the cohort's
size. The per-slide statistics are cached in ``STORE/.cache/pooled/<tiling>/<encoder>/<fingerprint>.parquet``
(derived, never the source of truth; with :data:`POOLED_FORMAT` in its name; the fingerprint hashes every embeddings file's name, size and modification
time, so a changed store recomputes them) and combined into patient or slide bags on each call (Chan et al.'s
pairwise update for the variance).

Medians and quantiles have no such streaming form: ask for them in memory (``regress.BagPooler`` on loaded bags).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr.contract import StoreError, store_path, tcga_patient
from slide2expr.sql._bags import BAG_UNITS, _slide_patients
from slide2expr.sql._similar import _ROWS_PER_STEP, EmbeddingFiles, _Reader, list_embedding_files

#: Derived per-slide statistics live here (hidden: no view or glob of the store reads them).
POOLED_DIR = ".cache/pooled"
#: Version of the cached statistics' computation (part of the cache's name: another version recomputes them).
POOLED_FORMAT = "v2"
#: Statistics that one streaming pass gives exactly.
STREAMED_STATS = ("mean", "max", "min", "std")


@dataclass(frozen=True)
class PooledFeatures:
    """Pooled features of every bag: ``features`` (n_bags, len(stats) × d) float64, columns grouped by statistic as
    ``BagPooler`` orders them (``mean_0 … mean_{d-1}, max_0 …``); bags in :func:`sql.load_cohort`'s order."""

    bag_ids: tuple[str, ...]
    groups: tuple[str, ...]
    n_tiles: np.ndarray
    stats: tuple[str, ...]
    features: np.ndarray
    encoder: str
    tiling: str
    by: str
    fingerprint: str

    def feature_names(self) -> list[str]:
        d = self.features.shape[1] // len(self.stats)
        return [f"{s}_{j}" for s in self.stats for j in range(d)]


def _slide_stats(reader: _Reader) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, M2, max, min) of one slide's embeddings, in steps of rows (float64 sums)."""
    values = reader.all_rows()
    n, d = values.shape
    mean, m2 = np.zeros(d), np.zeros(d)
    vmax = np.full(d, -np.inf, np.float32)
    vmin = np.full(d, np.inf, np.float32)
    seen = 0
    for a in range(0, n, _ROWS_PER_STEP):
        chunk = values[a : a + _ROWS_PER_STEP].astype(np.float32)
        k = len(chunk)
        c_mean = chunk.mean(axis=0, dtype=np.float64)
        c_m2 = ((chunk.astype(np.float64) - c_mean) ** 2).sum(axis=0)  # float64: std as BagPooler's
        mean, m2, seen = *_merge(seen, mean, m2, k, c_mean, c_m2), seen + k
        np.maximum(vmax, chunk.max(axis=0), out=vmax)
        np.minimum(vmin, chunk.min(axis=0), out=vmin)
    return n, mean, m2, vmax, vmin


def _merge(na: int, mean_a: np.ndarray, m2_a: np.ndarray, nb: int, mean_b: np.ndarray, m2_b: np.ndarray):
    """Mean and sum of squared deviations of two groups joined (Chan, Golub and LeVeque's pairwise update)."""
    if na == 0:
        return mean_b, m2_b
    n = na + nb
    delta = mean_b - mean_a
    return mean_a + delta * (nb / n), m2_a + m2_b + delta**2 * (na * nb / n)


def _cache_path(files: EmbeddingFiles) -> Path:
    name = f"{files.fingerprint}-{POOLED_FORMAT}.parquet"
    return files.store / POOLED_DIR / files.tiling / files.encoder / name


def slide_statistics(
    files: EmbeddingFiles,
    *,
    cache: bool = True,
    threads: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
) -> pa.Table:
    """Per-slide statistics of ``files``: ``slide_id``, ``n_tiles``, ``mean``/``m2`` (float64 × d), ``max``/``min``
    (float32 × d); read from the cache when it matches the store, else computed in one pass (and cached)."""
    path = _cache_path(files)
    if cache and path.is_file():
        return pq.read_table(path)
    total, done = files.n_tiles * files.dim * 4, [0]

    def one(i: int):
        reader = _Reader(files.paths[i])
        try:
            out = _slide_stats(reader)
        finally:
            reader.close()
        done[0] += out[0] * files.dim * 4
        if progress is not None:
            progress("pool", done[0], total)
        return out

    with ThreadPoolExecutor(max(1, threads)) as pool:
        rows = list(pool.map(one, range(len(files.paths))))
    d = files.dim

    def column(k: int, t: pa.DataType) -> pa.Array:
        flat = np.concatenate([r[k] for r in rows]).astype(t.to_pandas_dtype())
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, t), d)

    table = pa.table(
        {
            "slide_id": pa.array(files.slide_ids, pa.string()),
            "n_tiles": pa.array([r[0] for r in rows], pa.int64()),
            "mean": column(1, pa.float64()),
            "m2": column(2, pa.float64()),
            "max": column(3, pa.float32()),
            "min": column(4, pa.float32()),
        }
    )
    if cache:
        _write_cache(path, table)
    return table


def _write_cache(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="none")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    for old in path.parent.glob("*.parquet"):
        if old != path:
            old.unlink(missing_ok=True)


def pooled_features(
    store: str | os.PathLike,
    *,
    encoder: str | None = None,
    tiling: str | None = None,
    stats: Sequence[str] = ("mean", "max"),
    by: str = "patient",
    cache: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> PooledFeatures:
    """Pooled features of every bag, from one streaming pass over the embeddings (cached; see the module doc).

    Parameters
    ----------
    store
        The store directory.
    encoder, tiling
        Which embeddings; ``None`` picks the only one the store has.
    stats
        Any of :data:`STREAMED_STATS`, in the order of the columns (``std`` with ``ddof=0``, as numpy's).
    by
        ``"patient"`` (all tiles of a patient's slides pooled, as in a patient bag) or ``"slide"``.
    cache
        Read and write the per-slide statistics under ``STORE/.cache/pooled/``; ``False`` computes them afresh.
    progress
        ``progress("pool", done, total)`` as the pass goes (bytes of float32 embeddings).

    Returns
    -------
    PooledFeatures
        ``features`` (n_bags, len(stats) × d) float64, equal (within float64 rounding) to
        ``regress.BagPooler(stats=stats)`` over the bags :func:`sql.load_cohort` returns.
    """
    stats = tuple(stats)
    bad = [s for s in stats if s not in STREAMED_STATS]
    if not stats or bad:
        raise ValueError(
            f"stats={stats!r}: streaming pooling gives {', '.join(STREAMED_STATS)}; medians and quantiles need the "
            "bags in memory (regress.BagPooler)"
        )
    if by not in BAG_UNITS:
        raise ValueError(f"by={by!r}: use 'patient' (all tiles of a patient's slides) or 'slide'")
    files = list_embedding_files(store, encoder=encoder, tiling=tiling)
    table = slide_statistics(files, cache=cache, progress=progress)
    patients = _slide_patients(store_path(store))
    sids = table.column("slide_id").to_pylist()
    pids = [patients.get(s) or tcga_patient(s) for s in sids]
    unknown = [s for s, p in zip(sids, pids, strict=True) if p is None]
    if unknown:
        raise StoreError(f"{len(unknown)} slide(s) have no patient id: {', '.join(unknown[:10])}")
    order = sorted(range(len(sids)), key=lambda i: (pids[i], sids[i]))
    d = files.dim
    arrays = {k: _matrix(table.column(k), d) for k in ("mean", "m2", "max", "min")}
    counts = table.column("n_tiles").to_numpy()
    keys = [pids[i] if by == "patient" else sids[i] for i in order]
    bag_ids, groups, rows = [], [], []
    for key, i in zip(keys, order, strict=True):
        if not bag_ids or bag_ids[-1] != key:
            bag_ids.append(key)
            groups.append(pids[i])
            rows.append([])
        rows[-1].append(i)
    out = np.empty((len(bag_ids), len(stats) * d))
    n_tiles = np.empty(len(bag_ids), np.int64)
    for b, idx in enumerate(rows):
        n, mean, m2 = 0, np.zeros(d), np.zeros(d)
        for i in idx:
            mean, m2, n = (
                *_merge(n, mean, m2, int(counts[i]), arrays["mean"][i], arrays["m2"][i]),
                n + int(counts[i]),
            )
        n_tiles[b] = n
        values = {"mean": mean, "std": np.sqrt(m2 / n), "max": arrays["max"][idx].max(axis=0),
                  "min": arrays["min"][idx].min(axis=0)}  # fmt: skip
        out[b] = np.concatenate([values[s] for s in stats])
    return PooledFeatures(tuple(bag_ids), tuple(groups), n_tiles, stats, out, files.encoder, files.tiling, by,
                          files.fingerprint)  # fmt: skip


def _matrix(col: pa.ChunkedArray, d: int) -> np.ndarray:
    arr = col.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), d)
