"""The featurization pipeline: plan (tissue, grid) and read tiles in worker processes, embed on the device, write
beside the model.

Data flow for a cohort::

    worker processes (one slide handle each)        main thread                    writer thread
    plan slide i+1 (thumbnail → mask → grid)  ─┐
    read chunks of slide i (blocks of 4 rows)  ─┼─► uint8 batches → encoder ──► queue ─► tiles/, qc/, slides/,
                                               ┘    (bf16 autocast, channels_last)         embeddings/ (last)

Work is submitted ahead in a bounded window in consumption order, so the next slide is planned and read while
the current one is embedded, and memory stays bounded whatever the slide size. The embeddings file is written
last: it is the commit marker that resume checks. Worker processes put the tiles they read in a ring of shared
memory (:class:`TileRing`) rather than pickling them through the pool's one result pipe, which at GPU rates was
the limit. On CUDA the main thread overlaps the device: see ``featurize._run._CudaBatches``.

On a CPU with few cores (``workers=0``, the default on ≤ 2 cores) the encoder already uses every core, so the same
work runs on one thread per core of the main process instead, in bursts: eight chunks are planned and read on all
cores, then their batches are embedded on all cores. Reading beside the encoder would cost about twice its own CPU
time there (one encoder thread preempted, the other spinning at the next barrier). Those threads read row runs
and share the slide's decoded JPEG tiles (:class:`featurize._reader.TileCache`); reader processes, which cannot
share them, read blocks of a few rows (:func:`make_blocks`), and each tile's embedding goes to its row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slide2expr.contract import (
    SLIDES_SCHEMA,
    STORE_FORMAT,
    TILES_SCHEMA,
    embeddings_path,
    embeddings_schema,
    package_version,
    qc_path,
    read_metadata,
    slide_path,
    tiles_path,
    tiling_name,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.featurize._inputs import SlideInput, file_fingerprint
from slide2expr.featurize._reader import _LEVEL_TOLERANCE, SlideError, SlideReader, TileCache, open_slide
from slide2expr.featurize._tissue import (
    TISSUE_MPP,
    TISSUE_VERSION,
    TileGrid,
    qc_image,
    tile_grid,
    tissue_mask,
)

#: Bumped when the pipeline changes what it writes (part of the config hash, so resume redoes old slides).
PIPELINE_VERSION = 1


# ---- plan: open, tissue, grid (runs in a worker) -------------------------------------------------------------


@dataclass
class SlidePlan:
    """What a slide's run needs and records; built by :func:`plan_slide`."""

    slide: SlideInput
    fingerprint: dict
    status: str = "ok"  # ok | failed | no_tissue
    error: str | None = None
    vendor: str | None = None
    width: int | None = None
    height: int | None = None
    mpp: tuple[float, float] | None = None
    mpp_source: str | None = None
    objective_power: float | None = None
    levels: int | None = None
    level: int = 0
    level_downsample: float = 1.0
    grid: TileGrid | None = None  # kept tiles
    tissue_area_mm2: float | None = None
    qc_png: bytes | None = None
    seconds_plan: float = 0.0
    seconds_read: float = 0.0
    note: str | None = None  # something the user should hear about a slide that did not fail


@dataclass(frozen=True)
class TilingParams:
    mpp: float
    tile_px: int
    overlap_px: int = 0
    min_tissue: float = 0.5
    tissue_mpp: float = TISSUE_MPP

    @property
    def name(self) -> str:
        return tiling_name(mpp=self.mpp, tile_px=self.tile_px, overlap_px=self.overlap_px)

    def as_dict(self) -> dict:
        return {
            "mpp": self.mpp,
            "tile_px": self.tile_px,
            "overlap_px": self.overlap_px,
            "min_tissue": self.min_tissue,
            "tissue_mpp": self.tissue_mpp,
            "tissue_version": TISSUE_VERSION,
        }


#: open slide handles: one per reading thread (a reader process has one thread; ``workers=0`` reads on threads of
#: the main process), keyed by ``(path, mpp override, thread id)``
_READERS: dict[tuple[str, float | None, int], SlideReader] = {}
#: decoded JPEG tiles, one cache per slide shared by the threads reading it (the last few slides only)
_TILE_CACHES: dict[tuple[str, float | None], TileCache] = {}
_LOCK = threading.Lock()


def _forget_inherited_readers() -> None:
    """In a forked child: forget the parent's open slides. A forked handle shares its file offset with the
    parent's and its siblings', so reader processes that reused one garbled each other's seek-and-read (closing
    the child's copies leaves the parent's descriptors open)."""
    global _LOCK
    _READERS.clear()
    _TILE_CACHES.clear()
    _LOCK = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_readers)


def _slide_key(slide: SlideInput) -> tuple:
    return (str(slide.path), slide.mpp, slide.mpp_fallback)


def _reader_for(slide: SlideInput) -> SlideReader:
    """This thread's open handle for ``slide`` (one slide open per thread; reopened when another is asked for)."""
    me = threading.get_ident()
    key = (*_slide_key(slide), me)
    r = _READERS.get(key)
    if r is None:
        with _LOCK:
            mine = [_READERS.pop(k) for k in [k for k in _READERS if k[-1] == me]]
            cache = _TILE_CACHES.pop(key[:-1], None)
            if cache is None:  # not `or`: an empty cache is falsy, and the threads of a slide must share one
                cache = TileCache()
            _TILE_CACHES[key[:-1]] = cache  # most recent last
            while len(_TILE_CACHES) > 3:
                _TILE_CACHES.pop(next(iter(_TILE_CACHES)))
        for old in mine:
            with contextlib.suppress(Exception):
                old.close()
        r = open_slide(
            slide.path,
            mpp_override=slide.mpp,
            mpp_fallback=slide.mpp_fallback,
            slide_id=slide.slide_id,
            tile_cache=cache,
        )
        with _LOCK:
            _READERS[key] = r
    return r


def _drop_reader(slide: SlideInput) -> None:
    with _LOCK:
        r = _READERS.pop((*_slide_key(slide), threading.get_ident()), None)
    if r is not None:
        with contextlib.suppress(Exception):
            r.close()


def _clear_tile_cache(slide: SlideInput) -> None:
    """Free this process's decoded tiles of ``slide``, whose reads are all done (reader processes keep theirs
    until they have opened three newer slides)."""
    with _LOCK:
        cache = _TILE_CACHES.get(_slide_key(slide))
    if cache is not None:
        cache.clear()


def _close_readers() -> None:
    with _LOCK:
        readers = list(_READERS.values())
        _READERS.clear()
        _TILE_CACHES.clear()
    for r in readers:
        with contextlib.suppress(Exception):
            r.close()


def plan_slide(slide: SlideInput, tiling: TilingParams) -> SlidePlan:
    """Open ``slide``, detect tissue on a thumbnail and lay out the kept tiles. Never raises for slide problems:
    they end up in ``status``/``error``."""
    t0 = time.perf_counter()
    plan = SlidePlan(slide=slide, fingerprint=file_fingerprint(slide.path))
    try:
        r = _reader_for(slide)
        plan.vendor = r.vendor
        plan.width, plan.height = r.dimensions
        plan.mpp, plan.mpp_source = r.mpp, r.mpp_source
        plan.objective_power = r.objective_power
        plan.levels = r.level_count
        plan.level = r.best_level(tiling.mpp)
        plan.level_downsample = r.level_downsamples[plan.level]
        thumb, tmpp = r.thumbnail(mpp=tiling.tissue_mpp)
        mask = tissue_mask(thumb, mpp=tmpp)
        full = tile_grid(
            r.dimensions,
            slide_mpp=r.mpp,
            mpp=tiling.mpp,
            tile_px=tiling.tile_px,
            overlap_px=tiling.overlap_px,
            mask=mask,
            mask_mpp=tmpp,
        )
        finest = min(r.mpp)
        if tiling.mpp < finest / _LEVEL_TOLERANCE:  # beyond the rounding of scanners' metadata
            plan.note = (
                f"tiles at {tiling.mpp:g} µm/px are finer than the scan's {finest:.3g} µm/px: its pixels are "
                f"enlarged {finest / tiling.mpp:.2g}×, which adds no detail (--mpp {finest:.3g} or coarser reads "
                "the scan as it is)"
            )
        grid = full.select(full.tissue_frac >= tiling.min_tissue)
        plan.grid = grid
        plan.tissue_area_mm2 = float(mask.sum()) * tmpp * tmpp / 1e6
        if len(full) == 0:
            plan.status = "no_tissue"
            side = tiling.tile_px * tiling.mpp
            plan.error = (
                f"the slide ({plan.width * r.mpp[0] / 1000:.2f} × {plan.height * r.mpp[1] / 1000:.2f} mm) is smaller "
                f"than one tile ({side / 1000:.2f} mm at {tiling.tile_px} px × {tiling.mpp:g} µm/px); use a smaller "
                "--tile or a finer --mpp"
            )
        elif len(grid) == 0:
            plan.status = "no_tissue"
            plan.error = (
                f"no tile has a tissue fraction >= {tiling.min_tissue} (tissue covers {plan.tissue_area_mm2:.3f} mm², "
                f"{len(full)} tile positions); check the QC image or lower --min-tissue"
            )
        plan.qc_png = _qc_png(thumb, tmpp, r.mpp, mask, grid, f"{slide.slide_id} {tiling.name} n={len(grid)}")
    except SlideError as exc:
        plan.status, plan.error = "failed", str(exc)
        _drop_reader(slide)
    except (
        OSError,
        ValueError,
        MemoryError,
        RuntimeError,
    ) as exc:  # an unexpected decoder or library failure
        plan.status, plan.error = "failed", f"{slide.slide_id}: {type(exc).__name__}: {exc}"
        _drop_reader(slide)
    plan.seconds_plan = time.perf_counter() - t0
    return plan


def _qc_png(thumb, tmpp, slide_mpp, mask, grid, title) -> bytes:
    # upscale small thumbnails (nearest) so the grid stays legible
    k = max(1, min(4, 800 // max(thumb.shape[:2])))
    if k > 1:
        thumb = np.repeat(np.repeat(thumb, k, axis=0), k, axis=1)
        mask = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    return qc_image(thumb, thumb_mpp=tmpp / k, slide_mpp=slide_mpp, mask=mask, grid=grid, title=title)


# ---- reading tiles (runs in a worker) ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Chunk:
    """Kept tiles read together: ``start:stop`` of the slide's kept grid (a run of neighbours in one row), or the
    grid rows ``index`` (a block of a few rows' runs; see :func:`make_blocks`)."""

    start: int
    stop: int
    index: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        """The chunk's tiles in the grid, in the order they are read."""
        return np.arange(self.start, self.stop) if self.index is None else self.index

    def __len__(self) -> int:
        return self.stop - self.start if self.index is None else len(self.index)


def make_chunks(grid: TileGrid, *, max_tiles: int) -> list[Chunk]:
    """Split the kept tiles (row-major) into runs of neighbours in one row, at most ``max_tiles`` each."""
    n = len(grid)
    if n == 0:
        return []
    brk = np.flatnonzero((np.diff(grid.row) != 0) | (np.diff(grid.col) != 1)) + 1
    bounds = [0, *brk.tolist(), n]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        for s in range(a, b, max_tiles):
            out.append(Chunk(s, min(b, s + max_tiles)))
    return out


def make_blocks(grid: TileGrid, *, max_tiles: int, rows: int = 4) -> list[Chunk]:
    """Split the kept tiles into blocks of ``rows`` grid rows × ``max_tiles // rows`` columns, row band by row band,
    each block's tiles row-major (its runs are read one region each).

    For reader processes, which do not share decoded JPEG tiles: where a tile box's edge falls inside a JPEG tile
    (224 px boxes on a 256 px JPEG grid), the rows of boxes above and below want the same JPEG tiles, and row runs
    dealt to different processes decode them twice (1.59 JPEG tiles per 224 px tile on a 20x slide with 8 readers,
    against 0.79 for one reader); in a block they are decoded once."""
    n = len(grid)
    if n == 0:
        return []
    cols = max(1, max_tiles // rows)
    band, bcol = grid.row // rows, grid.col // cols
    order = np.lexsort((grid.col, grid.row, bcol, band))  # by band, then block, then row-major inside
    key = band[order] * (int(bcol.max()) + 1) + bcol[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    return [Chunk(0, 0, idx) for idx in np.split(order, cuts)]


def _read_chunk_task(
    slide: SlideInput,
    level: int,
    x: np.ndarray,
    y: np.ndarray,
    w0: int,
    h0: int,
    out_px: int,
    slot: int | None = None,
):
    """Read one chunk; return ``(tiles, seconds)``, or ``(n_tiles, seconds)`` with the tiles put in ``slot`` of
    the :class:`TileRing` this process inherited."""
    t0 = time.perf_counter()
    r = _reader_for(slide)
    tiles = r.read_tiles(x, y, w0, h0, level=level, out_px=out_px)
    if slot is None:
        return tiles, time.perf_counter() - t0
    _RING[0].put(slot, tiles)
    return len(tiles), time.perf_counter() - t0


class TileRing:
    """Slots of decoded tiles in memory shared with the reader processes, so tiles reach the encoder without
    being pickled through a pipe (at GPU rates that pipe, one per pool, is what limits the run).

    Anonymous shared memory made before the readers fork: they inherit it, and it goes with the last process,
    whatever way the run ends. The main process hands a free slot to each read it submits and takes the slot back
    once the tiles are consumed (see :func:`_stream`)."""

    def __init__(self, n_slots: int, tiles_per_slot: int, out_px: int) -> None:
        import mmap

        self.shape = (tiles_per_slot, out_px, out_px, 3)
        self.slot_bytes = int(np.prod(self.shape))
        self.n_slots = n_slots
        self.buf = mmap.mmap(-1, n_slots * self.slot_bytes, flags=mmap.MAP_SHARED)
        self.free: deque[int] = deque(range(n_slots))

    def slot(self, i: int) -> np.ndarray:
        return np.frombuffer(self.buf, np.uint8, self.slot_bytes, i * self.slot_bytes).reshape(self.shape)

    def put(self, i: int, tiles: np.ndarray) -> None:
        if len(tiles) > self.shape[0] or tiles.shape[1:] != self.shape[1:]:
            raise ValueError(f"tiles {tiles.shape} do not fit a ring slot {self.shape}")
        self.slot(i)[: len(tiles)] = tiles

    def acquire(self) -> int:
        if not self.free:
            raise RuntimeError("tile ring exhausted: more reads in flight than slots")
        return self.free.popleft()

    def release(self, i: int) -> None:
        self.free.append(i)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still exported: the mapping goes with the process
            self.buf.close()


#: the ring of the run in progress (set before the reader processes fork, so they inherit it)
_RING: list[TileRing] = []


class _RingFuture:
    """A chunk read's future whose result is ``(tiles, seconds)`` with ``tiles`` a view of its ring slot: valid
    until the consumer asks the stream for its next event."""

    def __init__(self, fut: Future, ring: TileRing, slot: int) -> None:
        self.fut, self.ring, self.slot_index = fut, ring, slot

    def result(self, timeout: float | None = None):
        n, secs = self.fut.result(timeout)
        return self.ring.slot(self.slot_index)[:n], secs


class _InlineExecutor:
    """``submit`` runs the call now (``workers=0`` on one core: everything in the main process)."""

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - delivered through the future like a process pool would
            fut.set_exception(exc)
        return fut

    def barrier(self) -> None:
        pass

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        _close_readers()


def _one_torch_thread() -> None:
    """A reading thread's torch calls (the resize) run on that thread alone: as a team of their own, their OpenMP
    threads outnumbered the cores, and libgomp then stops spinning for everyone (the encoder's barriers too, which
    halved efficientnet-lite0's speed at 112 px). The setting is per thread; the encoder's stays."""
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(1)


class _BurstThreadExecutor:
    """``workers=0`` on several cores: reads run on one thread per core of the main process, each with its own
    slide handle (libjpeg-turbo, numpy and torch release the GIL), in bursts: :func:`_stream` submits a burst of
    chunks and waits for all of them (:meth:`barrier`) before the encoder runs. So reading uses every core and never
    competes with the encoder's threads, which on a small CPU costs more than the reading itself."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(
            threads, thread_name_prefix="slide2expr-read", initializer=_one_torch_thread
        )
        self.pending: list[Future] = []

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        fut = self.pool.submit(fn, *args, **kwargs)
        self.pending.append(fut)
        return fut

    def barrier(self) -> None:
        wait(self.pending)
        self.pending.clear()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        _close_readers()


def _worker_init() -> None:
    # die with the parent (a killed run must not leave readers behind), Linux only
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    # readers use numpy, PIL and torch (the resize): one thread each, leaving the other cores to the encoder
    os.environ["OMP_NUM_THREADS"] = "1"
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(1)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fork_readers() -> bool:
    """Whether reader processes are forked (Linux), and so inherit the main process's memory."""
    return sys.platform.startswith("linux")


def make_executor(workers: int):
    if workers <= 0:
        cores = usable_cores()
        return _BurstThreadExecutor(cores) if cores > 1 else _InlineExecutor()
    method = "fork" if fork_readers() else "spawn"
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method), initializer=_worker_init)
    # with fork, the first submit launches every worker: do it now, before the writer and progress threads exist
    ex.submit(os.getpid).result()
    return ex


# ---- the stream of work, in consumption order ----------------------------------------------------------------


def _stream(
    slides: list[SlideInput],
    *,
    executor,
    tiling: TilingParams,
    out_px: int,
    chunk_tiles: int,
    max_inflight: int,
    plan_ahead: int = 1,
    burst: bool = False,
    ring: TileRing | None = None,
    blocks: bool = False,
) -> Iterator[tuple]:
    """Yield ``("plan", plan)``, ``("chunk", plan, chunk, future)``…, ``("end", plan)`` per slide, in order,
    with up to ``max_inflight`` chunk reads and ``plan_ahead`` slide plans running ahead of the consumer.

    ``burst``: submit reads only once every submitted chunk has been consumed, ``max_inflight`` at a time, and wait
    for the whole burst (``executor.barrier()``) before yielding any of it: reading in the main process then never
    runs beside the encoder.

    ``blocks``: read blocks of a few rows (:func:`make_blocks`) instead of row runs (:func:`make_chunks`); a
    chunk's tiles then go to the grid rows ``chunk.rows``.

    ``ring``: reader processes put each chunk's tiles in a slot of this shared ring (at least ``max_inflight + 1``
    slots); a chunk's future then gives a view of its slot, which is reused once the consumer asks for the next
    event."""
    plan_futs: dict[int, Future] = {}

    def ensure_plans(upto: int) -> None:
        for j in range(upto, min(len(slides), upto + plan_ahead + 1)):
            if j not in plan_futs:
                plan_futs[j] = executor.submit(plan_slide, slides[j], tiling)

    def submissions() -> Iterator[tuple]:
        for i in range(len(slides)):
            ensure_plans(i)
            plan = plan_futs.pop(i).result()
            yield ("plan", plan)
            if plan.status == "ok":
                g = plan.grid
                chunks = (
                    make_chunks(g, max_tiles=chunk_tiles)
                    if not blocks
                    else make_blocks(g, max_tiles=chunk_tiles)
                )
                for c in chunks:
                    args = (plan.slide, plan.level, g.x[c.rows], g.y[c.rows], g.w0, g.h0)
                    if ring is None:
                        fut = executor.submit(_read_chunk_task, *args, out_px)
                    else:
                        slot = ring.acquire()
                        fut = _RingFuture(executor.submit(_read_chunk_task, *args, out_px, slot), ring, slot)
                    yield ("chunk", plan, c, fut)
                    ensure_plans(i + 1)
            yield ("end", plan)

    window: deque = deque()
    sub = submissions()
    inflight = 0
    exhausted = False
    held = None  # the ring slot of the chunk last yielded: the consumer is done with it when it asks again
    while True:
        if held is not None:
            held.ring.release(held.slot_index)
            held = None
        refill = not burst or inflight == 0
        while refill and not exhausted and inflight < max_inflight:
            item = next(sub, None)
            if item is None:
                exhausted = True
                break
            window.append(item)
            if item[0] == "chunk":
                inflight += 1
        if not window:
            return
        if burst:
            executor.barrier()
        item = window.popleft()
        if item[0] == "end" and burst:
            _clear_tile_cache(item[1].slide)  # read in this process, and every read of it is done
        if item[0] == "chunk":
            inflight -= 1
            if isinstance(item[3], _RingFuture):
                held = item[3]
        yield item


# ---- the writer ----------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything fixed for a run (the parts that change outputs go into the config hash)."""

    store: Path
    tiling: TilingParams
    encoder_name: str
    encoder_meta: dict
    weights_sha256: str | None
    dim: int
    dtype: str
    out_px: int
    precision: str
    #: whether the encoder runs compiled (recorded, not part of the config hash: outputs equal within rounding)
    compiled: bool = False

    @property
    def config(self) -> dict:
        return {
            "pipeline_version": PIPELINE_VERSION,
            "store_format": STORE_FORMAT,
            "tiling": self.tiling.as_dict(),
            "encoder": self.encoder_name,
            "weights_sha256": self.weights_sha256,
            "architecture": self.encoder_meta.get("architecture"),
            "output_mode": self.encoder_meta.get("output_mode"),
            "preprocessing": self.encoder_meta.get("preprocessing"),
            "dim": self.dim,
            "dtype": self.dtype,
            "out_px": self.out_px,
        }

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slide_row(plan: SlidePlan, cfg: RunConfig, *, n_tiles: int, seconds_total: float) -> pa.Table:
    s = plan.slide
    row: dict[str, Any] = {
        "slide_id": s.slide_id,
        "patient_id": s.patient_id,
        "path": os.path.abspath(s.path),  # explain opens it later, from wherever it runs
        "file_size": plan.fingerprint.get("size"),
        "file_mtime_ns": plan.fingerprint.get("mtime_ns"),
        "head_sha256": plan.fingerprint.get("head_sha256"),
        "vendor": plan.vendor,
        "width": plan.width,
        "height": plan.height,
        "mpp_x": plan.mpp[0] if plan.mpp else None,
        "mpp_y": plan.mpp[1] if plan.mpp else None,
        "mpp_source": plan.mpp_source,
        "objective_power": plan.objective_power,
        "levels": plan.levels,
        "status": plan.status,
        "error": plan.error,
        "n_tiles": n_tiles,
        "tissue_area_mm2": plan.tissue_area_mm2,
        "tiling": cfg.tiling.name,
        "encoder": cfg.encoder_name,
        "seconds_read": round(plan.seconds_plan + plan.seconds_read, 4),
        "seconds_total": round(seconds_total, 4),
        "featurized_at": datetime.now(timezone.utc),
    }
    return pa.Table.from_pylist([row], schema=SLIDES_SCHEMA)


def _file_meta(plan: SlidePlan, cfg: RunConfig, kind: str) -> dict:
    meta = {
        "format": STORE_FORMAT,
        "version": package_version(),
        "kind": kind,
        "slide_id": plan.slide.slide_id,
        "tiling": cfg.tiling.name,
        "tiling_params": cfg.tiling.as_dict(),
        "fingerprint": plan.fingerprint,
        "config_hash": cfg.config_hash,
    }
    if kind in ("embeddings", "slides"):
        meta.update(
            {
                "encoder": cfg.encoder_name,
                "encoder_spec": {
                    **cfg.encoder_meta,
                    "out_px": cfg.out_px,
                    "precision": cfg.precision,
                    "compiled": cfg.compiled,
                },
                "weights_sha256": cfg.weights_sha256,
                "dim": cfg.dim,
                "dtype": cfg.dtype,
            }
        )
    return meta


def _clean_stale_tmp(path: Path) -> None:
    """Remove hidden temporaries of ``path`` left by a killed run (only this slide's: shards never collide)."""
    if path.parent.is_dir():
        for t in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                t.unlink()


def _slide_files(cfg: RunConfig, sid: str) -> tuple[Path, Path, Path, Path]:
    store, tiling = cfg.store, cfg.tiling.name
    return (
        slide_path(store, sid),
        tiles_path(store, tiling, sid),
        embeddings_path(store, tiling, cfg.encoder_name, sid),
        qc_path(store, tiling, sid),
    )


def clean_stale_tmp(slide: SlideInput, cfg: RunConfig) -> None:
    """Remove the hidden temporaries a killed run left for ``slide``'s files; resume calls it for the slides it
    skips (a run killed while rewriting a finished slide leaves one beside the complete files)."""
    for p in _slide_files(cfg, slide.slide_id):
        _clean_stale_tmp(p)


def write_slide(plan: SlidePlan, cfg: RunConfig, emb: np.ndarray | None, *, seconds_total: float) -> None:
    """Write one slide's files: ``slides/``, ``tiles/<tiling>/``, ``qc/<tiling>/`` and, last (the commit marker
    that resume checks), ``embeddings/<tiling>/<encoder>/`` (empty for ``no_tissue``; none for ``failed``)."""
    sid = plan.slide.slide_id
    sp, tp, ep, qp = _slide_files(cfg, sid)
    for p in (sp, tp, ep, qp):
        _clean_stale_tmp(p)
    g = plan.grid
    n = len(g) if (g is not None and plan.status == "ok") else 0
    if plan.status == "failed":
        # a failed slide must not keep this encoder's embeddings from an earlier run; the tiling's tile grid and QC
        # image go too unless another encoder's embeddings of the slide still use them
        others = [p for p in ep.parent.parent.glob(f"*/{ep.name}") if p != ep]
        for p in (ep,) if others else (ep, tp, qp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    write_table_atomic(
        _slide_row(plan, cfg, n_tiles=n, seconds_total=seconds_total),
        sp,
        metadata=_file_meta(plan, cfg, "slides"),
    )
    if plan.status == "failed":
        return
    if plan.qc_png is not None:
        write_bytes_atomic(qp, plan.qc_png)
    ids = np.arange(n, dtype=np.int32)
    if n:
        cols = {"x": g.x, "y": g.y, "w": np.full(n, g.w0, np.int64), "h": np.full(n, g.h0, np.int64)}
        frac = g.tissue_frac
    else:
        cols = {k: np.zeros(0, np.int64) for k in ("x", "y", "w", "h")}
        frac = np.zeros(0, np.float32)
    sid_col = pa.array([sid] * n, pa.string())
    tiles = pa.Table.from_arrays(
        [
            sid_col,
            pa.array(ids),
            *(pa.array(cols[k]) for k in ("x", "y", "w", "h")),
            pa.array(frac, pa.float32()),
        ],
        schema=TILES_SCHEMA,
    )
    write_table_atomic(tiles, tp, metadata=_file_meta(plan, cfg, "tiles"))
    schema = embeddings_schema(cfg.dim, cfg.dtype)
    values = (
        emb.reshape(-1)
        if (emb is not None and n)
        else np.zeros(0, np.float32 if cfg.dtype == "float32" else np.float16)
    )
    table = pa.Table.from_arrays(
        [
            sid_col,
            pa.array(ids),
            pa.array(cols["x"]),
            pa.array(cols["y"]),
            _embedding_column(values, schema.field("embedding").type),
        ],
        schema=schema,
    )
    write_table_atomic(table, ep, metadata=_file_meta(plan, cfg, "embeddings"))


#: bytes of embeddings per chunk of the embedding column that write_slide hands to Parquet
EMBEDDING_CHUNK_BYTES = 16 << 20


def _embedding_column(values: np.ndarray, type_: pa.DataType) -> pa.ChunkedArray:
    """The flat ``values`` as a fixed-size-list column in chunks of about ``EMBEDDING_CHUNK_BYTES`` (zero-copy).

    Parquet's writer builds a list column's repetition and definition levels for a whole chunk at a time, two int16
    per value, as many bytes as the float32 embeddings themselves: one 38,000-tile chunk of 1,280-d embeddings took
    430 MB beside the 186 MB of embeddings at the write, in chunks 130 MB. The file is the same: one row group,
    the same pages (``tests/featurize/test_store.py``).
    """
    dim = type_.list_size
    rows = max(1, EMBEDDING_CHUNK_BYTES // (dim * values.itemsize))
    n = len(values) // dim if dim else 0
    chunks = [
        pa.FixedSizeListArray.from_arrays(pa.array(values[i * dim : (i + rows) * dim]), type=type_)
        for i in range(0, n, rows)
    ]
    return pa.chunked_array(chunks, type=type_)


def skip_if_done(slide: SlideInput, cfg: RunConfig) -> bool:
    """Resume's step for one slide: when its outputs match this config and file, remove the hidden temporaries a killed
    run left beside them, bring its ``slides/`` row up to date with this run's patient id and path (a new patient
    table or a moved file changes neither pixels nor embeddings), and return True."""
    row = _done_row(slide, cfg)
    if row is None:
        return False
    clean_stale_tmp(slide, cfg)
    want = {"patient_id": slide.patient_id, "path": os.path.abspath(slide.path)}
    changed = {k: v for k, v in want.items() if row.column(k)[0].as_py() != v}
    for k, v in changed.items():
        row = row.set_column(row.schema.get_field_index(k), row.schema.field(k), pa.array([v], pa.string()))
    if changed:
        write_table_atomic(row, slide_path(cfg.store, slide.slide_id))  # the schema keeps the file's metadata
    return True


def _done_row(slide: SlideInput, cfg: RunConfig) -> pa.Table | None:
    """The slide's ``slides/`` row when its outputs match this config and file; None otherwise."""
    import pyarrow.parquet as pq

    sp, tp, ep, _ = _slide_files(cfg, slide.slide_id)
    if not (ep.is_file() and sp.is_file() and tp.is_file()):
        return None
    try:
        meta = read_metadata(ep)
    except (OSError, pa.ArrowInvalid):
        return None
    if meta.get("config_hash") != cfg.config_hash:
        return None
    fp = meta.get("fingerprint") or {}
    now = file_fingerprint(slide.path)
    if (fp.get("size"), fp.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return None
    if (meta.get("tiling_params") or {}).get("mpp") != cfg.tiling.mpp:
        return None
    row = pq.read_table(sp)
    return row if row.num_rows == 1 and _slide_mpp_matches(row, slide) else None


def _slide_mpp_matches(row: pa.Table, slide: SlideInput) -> bool:
    """Whether the recorded level-0 resolution came from where this run's would: the CSV's ``mpp`` (same value),
    the slide's metadata, or ``--mpp-override`` standing in for missing metadata (same value)."""
    mpp, source = row.column("mpp_x")[0].as_py(), row.column("mpp_source")[0].as_py()
    if slide.mpp is not None:
        return source == "override" and mpp == slide.mpp
    if source == "metadata":
        return True
    return source == "override" and mpp == slide.mpp_fallback


class _Writer:
    """Writes finished slides on a thread beside the model; a bounded queue keeps memory flat."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="slide2expr-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            plan, emb, seconds = item
            if self.error is not None:
                continue
            try:
                write_slide(plan, self.cfg, emb, seconds_total=seconds)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by close()
                self.error = exc

    def put(self, plan: SlidePlan, emb: np.ndarray | None, seconds: float) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((plan, emb, seconds))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


# ---- the run -------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda:"):
        try:
            index = torch.device(device).index
        except RuntimeError:
            raise ValueError(f"--device {device!r}: use cuda or cuda:N with N a GPU's index") from None
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: no such CUDA device here; use --device cpu or auto")
    return device


@dataclass
class SlideResult:
    slide_id: str
    status: str  # ok | failed | no_tissue | skipped
    n_tiles: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None


@dataclass
class FeaturizeSummary:
    """What :func:`featurize_cohort` did, slide by slide.

    Attributes
    ----------
    results : list[SlideResult]
        In processing order (sorted slide ids of the shard).
    seconds : float
        Wall time of the run.
    tiles : int
        Tiles embedded in this run (skipped slides excluded).
    """

    store: Path
    tiling: str
    encoder: str
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0
    tiles: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    #: seconds the main thread waited for tiles (reading is the bottleneck when this is large)
    seconds_waiting_tiles: float = 0.0
    #: seconds it waited for the device's results (CUDA: the encoder is the bottleneck when this is large)
    seconds_waiting_device: float = 0.0
    #: seconds in the encoder's forward passes on a CPU (0 on CUDA, where they run asynchronously); with
    #: ``seconds`` it gives the share of the run the encoder was busy, which a machine's changing speed scales in
    #: both terms alike (the first batch's compiling, when the run compiles, is in it: see ``seconds_compile``)
    seconds_encoding: float = 0.0
    #: whether the encoder ran compiled (``torch.compile``), and the seconds its first batch took, compiling
    #: included (0 when it was compiled by an earlier run in this process)
    compiled: bool = False
    seconds_compile: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "store": str(self.store),
            "tiling": self.tiling,
            "encoder": self.encoder,
            "seconds": round(self.seconds, 3),
            "tiles": self.tiles,
            "tiles_per_s": round(self.tiles_per_s, 2),
            "device": self.device,
            "precision": self.precision,
            "seconds_waiting_tiles": round(self.seconds_waiting_tiles, 3),
            "seconds_waiting_device": round(self.seconds_waiting_device, 3),
            "seconds_encoding": round(self.seconds_encoding, 3),
            "compiled": self.compiled,
            "seconds_compile": round(self.seconds_compile, 3),
            "counts": {s: self.count(s) for s in ("ok", "no_tissue", "failed", "skipped")},
            "slides": [r.__dict__ for r in self.results],
        }
