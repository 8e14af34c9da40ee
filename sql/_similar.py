"""Tile similarity search that scales: exact cosine search over a store, and an approximate index derived from it.

:func:`similar_tiles` returns the ``k`` tiles of one tiling/encoder most similar (cosine) to a query tile, as a
table that joins with the ``tiles``/``slides`` views on ``(slide_id, tile_id)``. Two ways, same answer format:

- **exact**: one streaming pass over every embeddings file (plain pages read straight into a buffer,
  :mod:`sql._rows`), cosine against the query, a running top-k. Memory stays at one slide's embeddings.
- **index**: an approximate nearest-neighbour index over the embeddings' principal components (the unit vectors
  projected on :data:`PCA_DIM` axes fitted on a random sample of tiles), an inverted file of
  :data:`N_LISTS_PER_SQRT` × √N lists with 8-bit codes (faiss ``IVF…,SQ8`` on an HNSW coarse quantizer), and for
  each tile a sign code of its residual (one bit per dimension of what the axes leave out, and one scale). A query
  takes :data:`SHORTLIST_FACTOR` × ``candidates`` tiles by the 8-bit codes, adds each one's residual estimate (the
  1-bit estimator of RaBitQ, Gao & Long 2024, without its random rotation), keeps the best ``candidates``, reads
  those tiles' full embeddings from the store and re-scores them exactly, so every returned score is the exact
  cosine and only the membership of the top k is approximate. The residual code matters where the embeddings'
  variance is spread over many dimensions: their order among near-tied neighbours is set by the dimensions the
  axes leave out, and reading a candidate from the store (a random read) costs more than ranking ten by code.

The index is derived data, never the source of truth: it lives in ``STORE/.index/<tiling>/<encoder>/<fingerprint>/``
(hidden: no view or glob of the store reads it), written to a hidden temporary folder and renamed into place, and
its fingerprint hashes every embeddings file's name, size and modification time, so re-featurizing, adding or
removing a slide makes it stale (:func:`open_similarity_index` then says so, and ``method="auto"`` rebuilds it).
Stores of at most :data:`EXACT_MAX_TILES` tiles are searched exactly unless an index is asked for or was built.

>>> from slide2expr.sql._similar import EXACT_MAX_TILES
>>> EXACT_MAX_TILES > 0
True
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr.contract import EMBEDDINGS_DIR, StoreError, check_store, is_remote
from slide2expr.sql._rows import PageMap, page_map, read_column, read_rows

#: Derived similarity indexes live here (hidden: no view or glob of the store ever reads them).
INDEX_DIR = ".index"
#: Stores with at most this many tiles (of the tiling/encoder) are searched exactly by ``method="auto"``.
EXACT_MAX_TILES = 200_000
#: Principal axes the index keeps (at most the embedding dimension).
PCA_DIM = 128
#: Tiles sampled (whole data pages at random) to fit the projection and train the inverted lists.
SAMPLE_TILES = 200_000
#: Inverted lists per √N tiles (clipped to [64, 65,536]).
N_LISTS_PER_SQRT = 2
#: k-means iterations that place the lists' centroids.
KMEANS_ITERATIONS = 10
#: Lists visited per query unless given: this share of the index's lists, and at least N_PROBE (a fixed count would
#: visit an ever smaller share as the lists grow with √N; on the 9.3 M-tile benchmark store recall stops rising at
#: about this share). Candidates re-scored exactly unless given.
N_PROBE, N_PROBE_SHARE = 48, 1 / 24
CANDIDATES = 200
#: A query ranks this many times ``candidates`` tiles by the 8-bit codes and their residual sign codes, and the store
#: re-scores the best ``candidates`` of them.
SHORTLIST_FACTOR = 10
#: Threads reading candidates' rows for re-scoring (random reads: the disk serves several at once).
RESCORE_THREADS = 8
METHODS = ("auto", "exact", "index")
RESULT_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("slide_id", pa.string()),
        ("tile_id", pa.int32()),
        ("x", pa.int64()),
        ("y", pa.int64()),
        ("score", pa.float32()),
    ]
)
_ROWS_PER_STEP = 8192


class SimilarityError(StoreError):
    """A similarity query that cannot be answered: no such tile, encoder or tiling, a stale or missing index."""


# ---- the embeddings files of one tiling/encoder -------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingFiles:
    """The embeddings files of one tiling/encoder, in slide id order, and what identifies them."""

    store: Path
    tiling: str
    encoder: str
    slide_ids: tuple[str, ...]
    paths: tuple[Path, ...]
    n_rows: tuple[int, ...]
    dim: int
    fingerprint: str

    @property
    def n_tiles(self) -> int:
        return sum(self.n_rows)

    def starts(self) -> np.ndarray:
        """(n_files + 1,) first global row of each file, then the total."""
        return np.concatenate([[0], np.cumsum(self.n_rows, dtype=np.int64)])


def _folder(store: Path, tiling: str, encoder: str) -> Path:
    return store / EMBEDDINGS_DIR / tiling / encoder


def resolve_embeddings(
    store: str | os.PathLike, *, encoder: str | None, tiling: str | None
) -> tuple[str, str]:
    """The (tiling, encoder) to search: each given one must exist; ``None`` picks the only one there is."""
    if is_remote(store):
        raise SimilarityError(
            f"store {store} is on an object store, but the similarity search (`slide2expr similar STORE`) and the "
            f"pooled statistics read its embeddings as local files: copy it to a folder (`aws s3 sync {store} DIR`) "
            "and give that folder"
        )
    root = check_store(store) / EMBEDDINGS_DIR
    pairs = sorted((p.parent.name, p.name) for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []
    have = [(t, e) for t, e in pairs if (encoder is None or e == encoder) and (tiling is None or t == tiling)]
    listing = ", ".join(f"{t}/{e}" for t, e in pairs) or "none"
    if not have:
        raise SimilarityError(
            f"no embeddings for encoder {encoder or '*'!s} at tiling {tiling or '*'!s} in {store}; "
            f"tiling/encoder pairs in the store: {listing}"
        )
    if len(have) > 1:
        raise SimilarityError(
            f"{store} holds several tiling/encoder pairs ({listing}): pick one with --encoder/--tiling "
            "(encoder=/tiling= in Python)"
        )
    return have[0]


def _file_stats(folder: Path) -> list[tuple[str, Path, int, int]]:
    out = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".parquet") and not entry.name.startswith("."):
            st = entry.stat()
            out.append((entry.name[: -len(".parquet")], Path(entry.path), st.st_size, st.st_mtime_ns))
    return sorted(out)


def stats_fingerprint(folder: Path) -> str:
    """Hash of every embeddings file's name, size and modification time (a ``scandir``, no file is opened)."""
    h = hashlib.sha256()
    for sid, _, size, mtime in _file_stats(folder):
        h.update(f"{sid}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def list_embedding_files(
    store: str | os.PathLike, *, encoder: str | None = None, tiling: str | None = None
) -> EmbeddingFiles:
    """The embeddings files of one tiling/encoder, from their footers; empty files (no tissue) are left out."""
    tiling, encoder = resolve_embeddings(store, encoder=encoder, tiling=tiling)
    root = Path(store)
    folder = _folder(root, tiling, encoder)
    ids, paths, rows, dims = [], [], [], set()
    for sid, path, _, _ in _file_stats(folder):
        md = pq.read_metadata(path)
        if md.num_rows == 0:
            continue
        t = md.schema.to_arrow_schema().field("embedding").type
        dims.add(int(t.list_size))
        ids.append(sid)
        paths.append(path)
        rows.append(md.num_rows)
    if not ids:
        raise SimilarityError(f"{folder} holds no tiles: run `slide2expr featurize` first")
    if len(dims) > 1:
        raise SimilarityError(
            f"{folder} mixes embedding dimensions {sorted(dims)}: re-featurize the odd slides"
        )
    return EmbeddingFiles(
        root, tiling, encoder, tuple(ids), tuple(paths), tuple(rows), dims.pop(), stats_fingerprint(folder)
    )


class _Reader:
    """One embeddings file opened for row reads: its page map (or pyarrow for other layouts), ids and coordinates.

    Every read goes through the one descriptor opened here (the footer too), so a file replaced by rename meanwhile
    is never read half old, half new. ``pages`` given (an index's stored map) skips the footer and the page walk;
    ``expect`` = (size, mtime_ns) refuses a file that changed since the map was made.
    """

    def __init__(self, path: Path, *, pages: PageMap | None = None, expect: tuple[int, int] | None = None):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self._pf: pq.ParquetFile | None = None
        self._fh = None
        try:
            if expect is not None:
                st = os.fstat(self.fd)
                if (st.st_size, st.st_mtime_ns) != tuple(expect):
                    raise SimilarityError(
                        f"{path} changed since the similarity index was built: build it again (--build)"
                    )
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # a row is a few KB: no readahead
            if pages is None:
                pf = self.pf
                leaf = next(
                    i
                    for i in range(pf.metadata.num_columns)
                    if pf.schema.column(i).path.startswith("embedding.")
                )
                pages = page_map(self.fd, pf, leaf, pf.schema_arrow.field("embedding").type.list_size)
            self.pages: PageMap | None = pages
        except BaseException:
            self.close()
            raise

    @property
    def pf(self) -> pq.ParquetFile:
        if self._pf is None:
            self._fh = os.fdopen(os.dup(self.fd), "rb")
            self._pf = pq.ParquetFile(self._fh)
        return self._pf

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        os.close(self.fd)

    def columns(self, names: Sequence[str]) -> pa.Table:
        return self.pf.read(columns=list(names), use_threads=False)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if self.pages is not None:
            return read_rows(self.fd, self.pages, rows)
        emb = self.columns(["embedding"]).column(0).take(pa.array(rows))
        return _to_numpy(emb)

    def all_rows(self, buffer: np.ndarray | None = None) -> np.ndarray:
        if self.pages is not None:
            n = self.pages.n_rows
            out = (
                None if buffer is None or buffer.dtype != self.pages.dtype or len(buffer) < n else buffer[:n]
            )
            return read_column(self.fd, self.pages, out)
        return _to_numpy(self.columns(["embedding"]).column(0))


def _to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise StoreError("null embeddings in the store: re-featurize the slide")
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), -1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


# ---- exact search ---------------------------------------------------------------------------------------------


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, best first (ties by index)."""
    part = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def exact_search(
    files: EmbeddingFiles,
    queries: np.ndarray,
    *,
    k: int,
    exclude: Sequence[tuple[int, int] | None] | None = None,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each of ``queries`` (``(n_queries, dim)``), the ``k`` rows of ``files`` with the highest cosine, by one
    streaming pass over every file (memory: ``threads`` slides' embeddings at a time).

    Returns one ``(file_index, row, score)`` triple of ``(k,)`` arrays per query, best first; ``exclude[q]`` =
    ``(file_index, row)`` leaves that tile out of query q's answer. ``progress`` gets each file's embedding bytes.
    """
    q = _unit(np.atleast_2d(queries))
    skip = list(exclude) if exclude is not None else [None] * len(q)

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        reader = _Reader(files.paths[i])
        try:
            values = reader.all_rows()
        finally:
            reader.close()
        scores = np.empty((len(q), len(values)), np.float32)
        for a in range(0, len(values), _ROWS_PER_STEP):
            chunk = values[a : a + _ROWS_PER_STEP].astype(np.float32)
            norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", chunk, chunk)), np.float32(1e-12))
            scores[:, a : a + len(chunk)] = (q @ chunk.T) / norm
        for j, ex in enumerate(skip):
            if ex is not None and ex[0] == i:
                scores[j, ex[1]] = -np.inf
        best = np.stack([_top(s, k) for s in scores]) if len(values) else np.zeros((len(q), 0), np.int64)
        if progress is not None:
            progress(values.nbytes)
        return best.astype(np.int64), np.take_along_axis(scores, best, axis=1)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(one, range(len(files.paths))))
    fi = np.concatenate([np.full(r.shape, i, np.int64) for i, (r, _) in enumerate(parts)], axis=1)
    rows = np.concatenate([r for r, _ in parts], axis=1)
    scores = np.concatenate([s for _, s in parts], axis=1)
    out = []
    for j in range(len(q)):
        best = _top(scores[j], k)
        best = best[np.isfinite(scores[j][best])]
        out.append((fi[j][best], rows[j][best], scores[j][best]))
    return out


# ---- the index ------------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What building an index did: its folder, size, tiles, and seconds per stage."""

    path: Path
    n_tiles: int
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def index_root(store: str | os.PathLike, tiling: str, encoder: str) -> Path:
    """``STORE/.index/<tiling>/<encoder>/``: the index folders of one tiling/encoder (one per fingerprint)."""
    return Path(store) / INDEX_DIR / tiling / encoder


def _require_faiss():
    try:
        import faiss
    except ImportError:
        raise SimilarityError(
            "a similarity index needs faiss: pip install 'slide2expr[similarity]' (or faiss-cpu); "
            "method='exact' searches without one"
        ) from None
    return faiss


def _sample(readers: list[_Reader], files: EmbeddingFiles, n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` unit rows drawn as whole data pages at random (files in other layouts: random rows)."""
    units = []  # (file, first row, rows)
    for i, r in enumerate(readers):
        if r.pages is not None:
            units += [
                (i, int(a), int(b - a)) for a, b in zip(r.pages.rows[:-1], r.pages.rows[1:], strict=True)
            ]
        else:
            units += [(i, int(a), min(256, files.n_rows[i] - int(a))) for a in range(0, files.n_rows[i], 256)]
    order = rng.permutation(len(units))
    picked, total = [], 0
    for u in order:
        picked.append(units[u])
        total += units[u][2]
        if total >= n:
            break
    picked.sort()
    parts = [_unit(readers[i].rows(np.arange(a, a + m))) for i, a, m in picked]
    return np.concatenate(parts)


def _projection(sample: np.ndarray, dim: int) -> np.ndarray:
    """``(d, dim)`` orthonormal axes: the sample's mean direction, then its leading principal axes."""
    mean = sample.mean(axis=0)
    centred = sample - mean
    cov = centred.T @ centred / max(1, len(sample) - 1)
    _, vecs = np.linalg.eigh(cov.astype(np.float64))
    m = mean / max(np.linalg.norm(mean), 1e-12)
    axes = vecs[:, ::-1][:, : dim - 1]
    axes = axes - np.outer(m, m @ axes)
    axes, _ = np.linalg.qr(axes)
    return np.hstack([m[:, None], axes]).astype(np.float32)


def _n_lists(n_tiles: int) -> int:
    return int(np.clip(round(N_LISTS_PER_SQRT * np.sqrt(n_tiles)), 64, 65_536))


def build_similarity_index(
    store: str | os.PathLike,
    *,
    encoder: str | None = None,
    tiling: str | None = None,
    pca_dim: int = PCA_DIM,
    sample_tiles: int = SAMPLE_TILES,
    n_lists: int | None = None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> BuildReport:
    """Build the similarity index of one tiling/encoder; write ``STORE/.index/<tiling>/<encoder>/<fingerprint>/``.

    One streaming pass over the embeddings (plus a sample of whole data pages first): memory holds the sample, one
    slide's embeddings, and the index itself (``pca_dim`` + d/8 + 4 bytes per tile plus its id). Writes, atomically
    (a hidden folder renamed into place): ``index.faiss`` (inverted lists of 8-bit codes of the projected unit
    vectors), ``projection.npy`` (``(d, pca_dim)`` float32), ``residual_signs.npy`` ``(N, d/8)`` uint8 and
    ``residual_scale.npy`` (N,) float32 (each unit vector's residual off the axes: its signs, packed, and
    |r|²/|r|₁), ``tile_id.npy`` (N,) int32, ``x.npy``/``y.npy`` (N,) int64 (rows
    in file order: slides by id, tiles by tile_id), each file's page map (``page_at.npy``, ``page_first_row.npy``,
    ``page_offset.npy``: queries read candidates without parsing footers) and ``index.json`` (files with their size
    and modification time, fingerprint, parameters, timings).
    Folders of older fingerprints of the same tiling/encoder are removed.

    ``progress(stage, done, total)`` is called as the pass goes (bytes of embeddings read).
    """
    faiss = _require_faiss()
    if pca_dim < 2 or sample_tiles < 1:
        raise ValueError(
            f"pca_dim={pca_dim}, sample_tiles={sample_tiles}: need pca_dim ≥ 2 and sample_tiles ≥ 1"
        )
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    files = list_embedding_files(store, encoder=encoder, tiling=tiling)
    readers = [_Reader(p) for p in files.paths]
    try:
        seconds["list"] = time.perf_counter() - t0
        t = time.perf_counter()
        rng = np.random.default_rng(seed)
        dim = min(pca_dim, files.dim)
        sample = _sample(readers, files, sample_tiles, rng)
        seconds["sample"] = time.perf_counter() - t
        t = time.perf_counter()
        axes = _projection(sample, dim)
        projected = sample @ axes
        del sample
        lists = n_lists or _n_lists(files.n_tiles)
        lists = int(min(lists, max(1, len(projected) // 8)))
        index = faiss.index_factory(dim, f"IVF{lists}_HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.niter = KMEANS_ITERATIONS
        index.train(projected)
        del projected
        seconds["train"] = time.perf_counter() - t
        t = time.perf_counter()
        tile_ids, xs, ys, signs, scale = _add_all(index, readers, files, axes, progress)
        seconds["add"] = time.perf_counter() - t
        page_arrays, page_dtypes = _page_arrays(readers)
        file_stats = [[(st := os.fstat(r.fd)).st_size, st.st_mtime_ns] for r in readers]
    finally:
        for r in readers:
            r.close()
    t = time.perf_counter()
    params = {"pca_dim": dim, "n_lists": lists, "sample_tiles": sample_tiles, "seed": seed, "codes": "SQ8",
              "residual": "signs",
              "quantizer": "HNSW32", "kmeans_iterations": KMEANS_ITERATIONS, "library": f"faiss {faiss.__version__}"}  # fmt: skip
    meta = {
        "tiling": files.tiling,
        "encoder": files.encoder,
        "dim": files.dim,
        "n_tiles": files.n_tiles,
        "fingerprint": files.fingerprint,
        "slide_ids": list(files.slide_ids),
        "n_rows": list(files.n_rows),
        "file_stats": file_stats,
        "page_dtype": page_dtypes,
        "params": params,
        "seconds": seconds,
    }
    arrays = {
        "tile_id": tile_ids,
        "x": xs,
        "y": ys,
        "residual_signs": signs,
        "residual_scale": scale,
        **page_arrays,
    }
    path = _write_index(files, index, axes, arrays, meta, faiss)
    seconds["write"] = time.perf_counter() - t
    size = sum(p.stat().st_size for p in path.iterdir())
    return BuildReport(path, files.n_tiles, size, seconds, params)


def _add_all(index, readers, files: EmbeddingFiles, axes: np.ndarray, progress) -> tuple[np.ndarray, ...]:
    """Project every row of every file and add it to ``index`` (ids = global rows), reading the next file while
    this one is added; return the rows' tile ids, coordinates and residual codes (:func:`_residual_code`)."""
    starts = files.starts()
    total = files.n_tiles * files.dim * 4
    tile_ids = np.empty(files.n_tiles, np.int32)
    xs = np.empty(files.n_tiles, np.int64)
    ys = np.empty(files.n_tiles, np.int64)
    signs = np.empty((files.n_tiles, (files.dim + 7) // 8), np.uint8)
    scale = np.empty(files.n_tiles, np.float32)
    done = 0

    def load(i: int) -> tuple[np.ndarray, pa.Table]:
        return readers[i].all_rows(), readers[i].columns(["tile_id", "x", "y"])

    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(load, 0) if readers else None
        for i in range(len(readers)):
            values, cols = nxt.result()
            nxt = pool.submit(load, i + 1) if i + 1 < len(readers) else None
            a = int(starts[i])
            tile_ids[a : a + len(values)] = cols.column("tile_id").to_numpy()
            xs[a : a + len(values)] = cols.column("x").to_numpy()
            ys[a : a + len(values)] = cols.column("y").to_numpy()
            for s in range(0, len(values), _ROWS_PER_STEP * 4):
                units = _unit(values[s : s + _ROWS_PER_STEP * 4])
                chunk = units @ axes
                index.add_with_ids(chunk, np.arange(a + s, a + s + len(chunk), dtype=np.int64))
                signs[a + s : a + s + len(chunk)], scale[a + s : a + s + len(chunk)] = _residual_code(
                    units, chunk, axes
                )
            done += values.size * 4
            if progress is not None:
                progress("index", done, total)
    return tile_ids, xs, ys, signs, scale


def _residual_code(
    units: np.ndarray, projected: np.ndarray, axes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each unit row's residual ``r`` off the axes as its signs (packed bits) and the scale ``|r|²/|r|₁`` that turns
    a query residual's inner product with the signs (±1) into an estimate of its inner product with ``r`` (exact
    when the query residual is ``r``)."""
    r = units - projected @ axes.T
    scale = np.einsum("ij,ij->i", r, r) / np.maximum(np.abs(r).sum(axis=1), np.float32(1e-12))
    return np.packbits(r > 0, axis=1), scale.astype(np.float32)


def _residual_estimate(signs: np.ndarray, scale: np.ndarray, rq: np.ndarray) -> np.ndarray:
    """Estimated inner products of the query residual ``rq`` with the residuals coded as ``signs``/``scale``."""
    bits = np.unpackbits(signs, axis=1, count=len(rq)).astype(np.float32)
    return scale * (2 * (bits @ rq) - rq.sum())


def _read_ahead(arr: np.ndarray | None) -> None:
    """Ask the kernel to read a memory-mapped array into the page cache in the background (where it can)."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        mm.madvise(mmap.MADV_WILLNEED)


def _page_arrays(readers: list[_Reader]) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """Every file's page map as three flat arrays (``page_at`` (n_files + 1,) indexes the other two) and each
    file's value dtype (None: not plain pages; such a file is opened the slow way)."""
    firsts, offsets, at, dtypes = [], [], [0], []
    for r in readers:
        pm = r.pages
        if pm is not None:
            firsts.append(pm.rows[:-1])
            offsets.append(pm.offsets)
        at.append(at[-1] + (len(pm.offsets) if pm is not None else 0))
        dtypes.append(None if pm is None else pm.dtype.str)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return {
        "page_at": np.array(at, np.int64),
        "page_first_row": cat(firsts),
        "page_offset": cat(offsets),
    }, dtypes


def _write_index(files: EmbeddingFiles, index, axes: np.ndarray, arrays: dict, meta: dict, faiss) -> Path:
    root = index_root(files.store, files.tiling, files.encoder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / files.fingerprint
    tmp = root / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "projection.npy", axes)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "index.json").write_text(json.dumps(meta, indent=1))
        for p in tmp.iterdir():
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # same fingerprint, same content: replace it whole
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():
        if old != final and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return final


class SimilarityIndex:
    """An opened similarity index of one tiling/encoder; :meth:`query` answers top-k questions with exact scores.

    Open it once and query many times (the index is read into memory, ``pca_dim`` bytes per tile; the residual codes,
    d/8 bytes per tile, are memory-mapped and read ahead; ids and coordinates memory-mapped; the store's files stay
    open for the exact re-scoring).
    """

    def __init__(self, path: Path, files: EmbeddingFiles):
        faiss = _require_faiss()
        self.path, self.files = path, files
        self.meta = json.loads((path / "index.json").read_text())
        self.index = faiss.read_index(str(path / "index.faiss"))
        self._faiss = faiss
        self.axes = np.load(path / "projection.npy")
        self.tile_id = np.load(path / "tile_id.npy", mmap_mode="r")
        self.x = np.load(path / "x.npy", mmap_mode="r")
        self.y = np.load(path / "y.npy", mmap_mode="r")
        self.page_at = np.load(path / "page_at.npy")
        self.page_first_row = np.load(path / "page_first_row.npy")
        self.page_offset = np.load(path / "page_offset.npy")
        # an index built without residual codes ranks by its 8-bit codes alone; the codes are mapped and read ahead
        # in the background, so opening the index for one query does not wait for d/8 bytes per tile
        has_codes = (path / "residual_signs.npy").is_file()
        self.residual_signs = np.load(path / "residual_signs.npy", mmap_mode="r") if has_codes else None
        _read_ahead(self.residual_signs)
        self.residual_scale = np.load(path / "residual_scale.npy") if has_codes else None
        self.starts = files.starts()
        self._slide = {s: i for i, s in enumerate(files.slide_ids)}
        self._readers: dict[int, _Reader] = {}
        self._pool: ThreadPoolExecutor | None = None

    @property
    def default_n_probe(self) -> int:
        """Lists a query visits unless told: :data:`N_PROBE_SHARE` of the index's lists, at least :data:`N_PROBE`."""
        lists = int(self.meta["params"]["n_lists"])
        return int(min(lists, max(N_PROBE, np.ceil(N_PROBE_SHARE * lists))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __enter__(self) -> SimilarityIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _reader(self, i: int) -> _Reader:
        """File ``i`` opened with the page map stored at build time (no footer or page walk), refused if it changed."""
        if i not in self._readers:
            dtype = self.meta["page_dtype"][i]
            pages = None
            if dtype is not None:
                a, b = int(self.page_at[i]), int(self.page_at[i + 1])
                rows = np.append(self.page_first_row[a:b], self.files.n_rows[i])
                pages = PageMap(rows, self.page_offset[a:b], np.dtype(dtype), self.files.dim)
            self._readers[i] = _Reader(
                self.files.paths[i], pages=pages, expect=tuple(self.meta["file_stats"][i])
            )
        return self._readers[i]

    def locate(self, slide_id: str, tile_id: int) -> tuple[int, int]:
        """(file index, row) of a tile; :class:`SimilarityError` when the store has no such tile."""
        i = self._slide.get(slide_id)
        if i is None:
            raise SimilarityError(
                f"no slide {slide_id!r} with {self.files.tiling}/{self.files.encoder} embeddings in {self.files.store}"
            )
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        j = int(np.searchsorted(self.tile_id[a:b], tile_id))
        if j >= b - a or int(self.tile_id[a + j]) != tile_id:
            raise SimilarityError(
                f"slide {slide_id!r} has no tile {tile_id} (tile ids {int(self.tile_id[a])}–{int(self.tile_id[b - 1])})"
            )
        return i, j

    def vector(self, slide_id: str, tile_id: int) -> np.ndarray:
        """The tile's embedding, ``(dim,)`` float32, read from the store."""
        i, j = self.locate(slide_id, tile_id)
        return self._reader(i).rows(np.array([j]))[0].astype(np.float32)

    def query(
        self,
        slide_id: str,
        tile_id: int,
        *,
        k: int = 20,
        candidates: int = CANDIDATES,
        n_probe: int | None = None,
        shortlist_factor: int = SHORTLIST_FACTOR,
    ) -> pa.Table:
        """The ``k`` tiles most similar to the given one (itself left out), exact cosine scores, best first."""
        i, j = self.locate(slide_id, tile_id)
        q = self._reader(i).rows(np.array([j]))[0].astype(np.float32)
        return self.query_vector(
            q, k=k, candidates=candidates, n_probe=n_probe, shortlist_factor=shortlist_factor,
            exclude=int(self.starts[i]) + j,
        )  # fmt: skip

    def query_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 20,
        candidates: int = CANDIDATES,
        n_probe: int | None = None,
        shortlist_factor: int = SHORTLIST_FACTOR,
        exclude: int | None = None,
    ) -> pa.Table:
        """The ``k`` tiles most similar (cosine) to ``vector`` (``(dim,)``): of the ``shortlist_factor`` ×
        ``candidates`` best tiles by the 8-bit codes, the best ``candidates`` after adding their residual codes'
        estimate (1: the 8-bit codes' best ``candidates``), re-scored exactly against their embeddings in the store;
        ``n_probe`` lists visited (None: :attr:`default_n_probe`)."""
        _check_count("k", k, "neighbours ≥ 1")
        q = _unit(np.asarray(vector, np.float32).reshape(-1))
        if q.shape[0] != self.files.dim:
            raise SimilarityError(
                f"the query vector has {q.shape[0]} values; the embeddings have {self.files.dim}"
            )
        if n_probe is not None:
            _check_count("n_probe", n_probe, "lists ≥ 1 (or None for the default)")
        _check_count(
            "shortlist_factor", shortlist_factor, "times the candidates ≥ 1 (1: no residual ranking)"
        )
        self.index.nprobe = int(self.default_n_probe if n_probe is None else n_probe)
        want = int(max(candidates, k + 1))
        coded = self.residual_signs is not None
        zq = q @ self.axes
        threads = self._faiss.omp_get_max_threads()
        self._faiss.omp_set_num_threads(1)  # one query: OpenMP's thread hand-offs cost more than they give
        try:
            approx, ids = self.index.search(zq[None, :], want * shortlist_factor if coded else want)
        finally:
            self._faiss.omp_set_num_threads(threads)
        found = ids[0] >= 0
        if exclude is not None:
            found &= ids[0] != exclude
        ids, approx = ids[0][found], approx[0][found]
        if coded and len(ids) > want:
            # the unit query's cosine with a tile = its projection's (the 8-bit codes) + its residual's (estimated)
            approx = approx + _residual_estimate(
                self.residual_signs[ids], self.residual_scale[ids], q - self.axes @ zq
            )
            ids = ids[np.argpartition(-approx, want - 1)[:want]]
        rows = np.unique(ids)
        fi = np.searchsorted(self.starts, rows, side="right") - 1
        groups = [(int(f), np.flatnonzero(fi == f)) for f in np.unique(fi)]
        readers = {f: self._reader(f) for f, _ in groups}  # opened here: one thread owns the dict
        scores = np.empty(len(rows), np.float32)

        def rescore(group: tuple[int, np.ndarray]) -> None:
            f, sel = group
            scores[sel] = _unit(readers[f].rows(rows[sel] - self.starts[f])) @ q

        if self._pool is None:
            self._pool = ThreadPoolExecutor(RESCORE_THREADS)
        list(self._pool.map(rescore, groups))  # a row is a random read: several in flight at once
        best = _top(scores, k)
        return _result(self, fi[best], rows[best] - self.starts[fi[best]], scores[best])


def _check_count(name: str, value, what: str) -> None:
    """ValueError naming ``name`` unless ``value`` is a whole number ≥ 1 (``what``: the rest of the message)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}={value!r}: give a whole number of {what}")


def _result(src, fi: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> pa.Table:
    """The result table (RESULT_SCHEMA) of ``(file index, row, score)`` triples, best first."""
    if isinstance(src, SimilarityIndex):
        g = src.starts[fi] + rows
        tile_id, x, y = (np.asarray(a[g]) for a in (src.tile_id, src.x, src.y))
        slide_ids = [src.files.slide_ids[i] for i in fi]
    else:  # EmbeddingFiles: read the few files' ids and coordinates
        tile_id, x, y = (np.empty(len(fi), t) for t in (np.int32, np.int64, np.int64))
        for f in np.unique(fi):
            sel = np.flatnonzero(fi == f)
            cols = pq.read_table(src.paths[f], columns=["tile_id", "x", "y"])
            for name, out in (("tile_id", tile_id), ("x", x), ("y", y)):
                out[sel] = cols.column(name).to_numpy()[rows[sel]]
        slide_ids = [src.slide_ids[i] for i in fi]
    return pa.Table.from_arrays(
        [pa.array(np.arange(1, len(fi) + 1, dtype=np.int32)), pa.array(slide_ids, pa.string()), pa.array(tile_id, pa.int32()),
         pa.array(x, pa.int64()), pa.array(y, pa.int64()), pa.array(np.asarray(scores, np.float32))],
        schema=RESULT_SCHEMA,
    )  # fmt: skip


def open_similarity_index(
    store: str | os.PathLike, *, encoder: str | None = None, tiling: str | None = None
) -> SimilarityIndex:
    """Open the index of one tiling/encoder; :class:`SimilarityError` when there is none or it is stale (the
    store's embeddings files changed since it was built: build it again)."""
    tiling, encoder = resolve_embeddings(store, encoder=encoder, tiling=tiling)
    root = index_root(store, tiling, encoder)
    current = stats_fingerprint(_folder(Path(store), tiling, encoder))
    path = root / current
    if not (path / "index.json").is_file():
        others = [p.name for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
        why = "is stale (the embeddings changed since it was built)" if others else "does not exist"
        raise SimilarityError(
            f"the similarity index of {tiling}/{encoder} in {store} {why}: build it with "
            "`slide2expr similar STORE --build` (sql.build_similarity_index in Python)"
        )
    meta = json.loads((path / "index.json").read_text())
    root_store = Path(store)
    folder = _folder(root_store, tiling, encoder)
    files = EmbeddingFiles(
        root_store, tiling, encoder, tuple(meta["slide_ids"]), tuple(folder / f"{s}.parquet" for s in meta["slide_ids"]),
        tuple(meta["n_rows"]), int(meta["dim"]), current,
    )  # fmt: skip
    return SimilarityIndex(path, files)


@dataclass(frozen=True)
class SimilarPlan:
    """What :func:`similar_tiles` will do: the tiling/encoder, its size, exact search or the index (and whether
    the index must be built first, and where)."""

    tiling: str
    encoder: str
    n_tiles: int
    method: str  # exact | index
    build: bool
    index_path: Path | None

    def describe(self) -> str:
        what = f"{self.tiling}/{self.encoder}: {self.n_tiles:,} tiles; "
        if self.method == "exact":
            return what + "exact search (one pass over every embeddings file)"
        if self.build:
            return what + f"build the similarity index in {self.index_path} (one pass), then query it"
        return what + f"query the similarity index in {self.index_path}"


def plan_similar(
    store: str | os.PathLike, *, encoder: str | None = None, tiling: str | None = None, method: str = "auto"
) -> SimilarPlan:
    """Check the arguments and say what :func:`similar_tiles` would do (reads footers and file stats only).

    ``method``: ``"exact"`` scans every embedding; ``"index"`` uses the index (built when missing or stale);
    ``"auto"`` is exact up to :data:`EXACT_MAX_TILES` tiles and the index above, or whenever an index of this
    tiling/encoder was built (a stale one is rebuilt).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    files = list_embedding_files(store, encoder=encoder, tiling=tiling)
    path = index_root(files.store, files.tiling, files.encoder) / files.fingerprint
    exists = (path / "index.json").is_file()
    root = path.parent
    built_before = root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir())
    use_index = method == "index" or (method == "auto" and (built_before or files.n_tiles > EXACT_MAX_TILES))
    if use_index:
        _require_faiss()
    return SimilarPlan(files.tiling, files.encoder, files.n_tiles, "index" if use_index else "exact",
                       use_index and not exists, path if use_index else None)  # fmt: skip


def _ready_plan(store, *, encoder, tiling, method: str, progress) -> SimilarPlan:
    """:func:`plan_similar`'s plan, with the index built first when the plan needs one that is missing or stale."""
    plan = plan_similar(store, encoder=encoder, tiling=tiling, method=method)
    if plan.method == "index" and plan.build:
        build_similarity_index(store, encoder=plan.encoder, tiling=plan.tiling, progress=progress)
    return plan


def similar_tiles(
    store: str | os.PathLike,
    *,
    slide_id: str,
    tile_id: int,
    k: int = 20,
    encoder: str | None = None,
    tiling: str | None = None,
    method: str = "auto",
    candidates: int = CANDIDATES,
    n_probe: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> pa.Table:
    """The ``k`` tiles most similar (cosine) to tile ``tile_id`` of ``slide_id``, the query tile left out.

    Parameters
    ----------
    store
        The store directory.
    slide_id, tile_id
        The query tile.
    k
        How many neighbours.
    encoder, tiling
        Which embeddings; ``None`` picks the only one the store has.
    method
        ``"exact"``, ``"index"`` or ``"auto"`` (see :func:`plan_similar`). The index is built (one pass, written
        under ``STORE/.index/``) when it is missing or stale.
    candidates
        Tiles the index proposes and the store re-scores exactly (more: higher recall, slower).
    n_probe
        Inverted lists the index visits (more: higher recall, slower); None: a share of the index's lists
        (:attr:`SimilarityIndex.default_n_probe`).
    progress
        ``progress(stage, done, total)`` during an exact pass or an index build (bytes of embeddings).

    Returns
    -------
    pyarrow.Table
        ``rank`` (1…k), ``slide_id``, ``tile_id``, ``x``, ``y`` (level-0 px), ``score`` (exact cosine similarity),
        best first: join it to the ``tiles`` or ``slides`` views on ``(slide_id, tile_id)``.

    Examples
    --------
    >>> import tempfile
    >>> from slide2expr.sql._similar import _doctest_store
    >>> store = _doctest_store(tempfile.mkdtemp())
    >>> hits = similar_tiles(store, slide_id="TCGA-DT-0001-01Z-00-DX1", tile_id=0, k=3)
    >>> hits.column_names, hits.num_rows
    (['rank', 'slide_id', 'tile_id', 'x', 'y', 'score'], 3)
    >>> from slide2expr import sql
    >>> con = sql.connect(store)
    >>> con.register("hits", hits)  # doctest: +ELLIPSIS
    <...>
    >>> con.execute("select count(*) from hits join tiles using (slide_id, tile_id)").fetchone()
    (3,)
    """
    _check_count("k", k, "neighbours ≥ 1")
    plan = _ready_plan(store, encoder=encoder, tiling=tiling, method=method, progress=progress)
    if plan.method == "index":
        with open_similarity_index(store, encoder=plan.encoder, tiling=plan.tiling) as index:
            return index.query(slide_id, int(tile_id), k=k, candidates=candidates, n_probe=n_probe)
    files = list_embedding_files(store, encoder=plan.encoder, tiling=plan.tiling)
    if slide_id not in files.slide_ids:
        raise SimilarityError(
            f"no slide {slide_id!r} with {files.tiling}/{files.encoder} embeddings in {store}"
        )
    i = files.slide_ids.index(slide_id)
    ids = pq.read_table(files.paths[i], columns=["tile_id"]).column(0).to_numpy()
    j = int(np.searchsorted(ids, tile_id))
    if j >= len(ids) or ids[j] != tile_id:
        raise SimilarityError(
            f"slide {slide_id!r} has no tile {tile_id} (tile ids {int(ids[0])}–{int(ids[-1])})"
        )
    reader = _Reader(files.paths[i])
    try:
        q = reader.rows(np.array([j]))[0]
    finally:
        reader.close()
    ((fi, rows, scores),) = exact_search(
        files, q, k=k, exclude=[(i, j)], progress=_byte_progress(files, progress)
    )
    return _result(files, fi, rows, scores)


def similar_to_vector(
    store: str | os.PathLike,
    vector: np.ndarray,
    *,
    k: int = 20,
    encoder: str | None = None,
    tiling: str | None = None,
    method: str = "auto",
    candidates: int = CANDIDATES,
    n_probe: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> pa.Table:
    """The ``k`` tiles most similar (cosine) to ``vector`` (a prototype, a centroid: as long as the embeddings),
    as :func:`similar_tiles` returns them; ``method``, ``candidates`` and ``n_probe`` as there."""
    _check_count("k", k, "neighbours ≥ 1")
    plan = _ready_plan(store, encoder=encoder, tiling=tiling, method=method, progress=progress)
    if plan.method == "index":
        with open_similarity_index(store, encoder=plan.encoder, tiling=plan.tiling) as index:
            return index.query_vector(vector, k=k, candidates=candidates, n_probe=n_probe)
    files = list_embedding_files(store, encoder=plan.encoder, tiling=plan.tiling)
    q = np.asarray(vector, np.float32).reshape(-1)
    if q.shape[0] != files.dim:
        raise SimilarityError(f"the query vector has {q.shape[0]} values; the embeddings have {files.dim}")
    ((fi, rows, scores),) = exact_search(files, q, k=k, progress=_byte_progress(files, progress))
    return _result(files, fi, rows, scores)


def _byte_progress(files: EmbeddingFiles, progress) -> Callable[[int], None]:
    """``progress("exact", done, total)`` over the bytes of an exact pass, from each file's byte count."""
    total, done = files.n_tiles * files.dim * 4, [0]

    def tick(nbytes: int) -> None:
        done[0] += nbytes
        if progress is not None:
            progress("exact", done[0], total)

    return tick


def _doctest_store(root: str) -> str:
    """A three-slide store of 8-d embeddings for the examples (written with the contract's writers)."""
    from slide2expr.contract import (
        SLIDES_SCHEMA,
        TILES_SCHEMA,
        embeddings_path,
        embeddings_schema,
        init_store,
        slide_path,
        tiles_path,
        write_table_atomic,
    )

    init_store(root)
    rng = np.random.default_rng(0)
    for s in range(3):
        sid, n = f"TCGA-DT-{s + 1:04d}-01Z-00-DX1", 12
        tid = np.arange(n, dtype=np.int32)
        x, y = (tid % 4).astype(np.int64) * 448, (tid // 4).astype(np.int64) * 448
        emb = pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * 8).astype(np.float32)), 8)
        meta = {"kind": "embeddings", "slide_id": sid, "encoder": "doc", "dim": 8, "dtype": "float32"}
        write_table_atomic(
            pa.table([[sid] * n, tid, x, y, emb], schema=embeddings_schema(8)),
            embeddings_path(root, "mpp0.50_px224_ov0", "doc", sid),
            metadata=meta,
        )
        write_table_atomic(pa.table([[sid] * n, tid, x, y, np.full(n, 448), np.full(n, 448), np.ones(n, np.float32)],
                                    schema=TILES_SCHEMA), tiles_path(root, "mpp0.50_px224_ov0", sid))  # fmt: skip
        row = {f.name: None for f in SLIDES_SCHEMA} | {
            "slide_id": sid,
            "patient_id": sid[:12],
            "status": "ok",
        }
        write_table_atomic(pa.Table.from_pylist([row], schema=SLIDES_SCHEMA), slide_path(root, sid))
    return root
