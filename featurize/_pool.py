"""Reading a cohort ahead of the encoder: the :class:`ReaderPool` and the events it yields.

The pool plans each slide (thumbnail → tissue mask → kept tiles) and reads its tiles in chunks, submitted ahead in a
bounded window in consumption order, so the next slide is planned and read while the current one is embedded, and
memory stays bounded whatever the slide size::

    reader processes, or threads of the main process      the consumer (featurize_cohort)
    plan slide i+1                          ─┐
    read chunks of slide i                  ─┴─► SlidePlanned, TilesRead …, SlideEnded  ─► encoder, writer

Reader processes (``workers`` ≥ 1) read blocks of a few rows (:func:`make_blocks`) and put the tiles in a ring of
shared memory (:class:`TileRing`) rather than pickling them through the pool's one result pipe. With ``workers=0``
(the default on ≤ 2 cores, where the encoder already uses every core) the same work runs in the main process, in
bursts: a burst of chunks is planned and read on one thread per core, then their batches are embedded on every
core; those threads read row runs (:func:`make_chunks`) and share the slide's decoded JPEG tiles.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from slide2expr.featurize._executors import TileRing, fork_readers, in_process_executor, reader_processes
from slide2expr.featurize._handles import ReadWork, plan_in_process, read_in_process
from slide2expr.featurize._inputs import SlideInput
from slide2expr.featurize._plan import SlidePlan, TilingParams, make_blocks, make_chunks
from slide2expr.featurize._slide import SlideError

#: chunks a burst of in-process reading holds (bursts of 4 to 32 chunks embed equally fast)
BURST_CHUNKS = 8
#: reads in flight per reader process, and at least: enough to keep every reader busy while the encoder runs
READS_PER_WORKER, MIN_READS_IN_FLIGHT = 3, 4


@dataclass(frozen=True, eq=False)
class SlidePlanned:
    """A slide is planned (``plan.status`` is one of ``SLIDE_STATUSES``); its tiles come next when ok."""

    plan: SlidePlan


@dataclass(frozen=True, eq=False)
class TilesRead:
    """Tiles of the current slide: ``tiles`` ``(k, out_px, out_px, 3)`` uint8 go to rows ``rows`` of its grid.
    ``tiles`` may be a view of shared memory that is read into again once the next event is asked for."""

    plan: SlidePlan
    rows: np.ndarray
    tiles: np.ndarray


@dataclass(frozen=True, eq=False)
class SlideFailed:
    """Reading the current slide failed (``plan.status`` is now ``failed``, ``plan.error`` says why): the rest of its
    tiles will not come."""

    plan: SlidePlan


@dataclass(frozen=True, eq=False)
class SlideEnded:
    """The slide has no more events; ``plan.status`` is its final status."""

    plan: SlidePlan


ReadEvent = SlidePlanned | TilesRead | SlideFailed | SlideEnded


@dataclass(frozen=True, eq=False)
class _Read:
    """A chunk read in flight."""

    plan: SlidePlan
    rows: np.ndarray
    future: Future
    slot: int | None


class ReaderPool:
    """Plans and reads a cohort's slides ahead of the consumer, and owns everything that does it: the executor
    (reader processes, or threads of this process), the slide handles and decoded-tile caches of in-process
    reading, and the ring of shared memory reader processes put tiles in.

    Parameters
    ----------
    tiling
        The tile grid to plan.
    out_px
        Tiles are resized to ``out_px`` squares.
    workers
        Reader processes; 0 reads in this process (in bursts, on one thread per core).
    chunk_tiles
        Tiles per read at most.
    max_inflight
        Reads submitted ahead of the consumer (default: a burst in-process, a few per reader process).

    Use it as a context manager (or call :meth:`close`): reader processes are started (forked) when it is made,
    so make it before the run starts any thread of its own.
    """

    def __init__(
        self,
        *,
        tiling: TilingParams,
        out_px: int,
        workers: int,
        chunk_tiles: int,
        max_inflight: int | None = None,
    ) -> None:
        self.tiling, self.out_px, self.chunk_tiles = tiling, out_px, chunk_tiles
        in_process = workers <= 0
        self.burst = in_process  # see the module's docstring
        self.max_inflight = max_inflight or (
            BURST_CHUNKS if in_process else max(MIN_READS_IN_FLIGHT, READS_PER_WORKER * workers)
        )
        self.plan_ahead = 1 if in_process else 2  # slides planned ahead of the one being read
        self.work = ReadWork()  # this process's handles and caches (in-process reading)
        self.seconds_waiting = 0.0  # the consumer's requests waited for reads to finish
        self.ring: TileRing | None = None
        if in_process:
            self.executor = in_process_executor()
            self._plan, self._read = self.work.plan, self.work.read
        else:
            if fork_readers():  # made before the readers fork, so they inherit it
                self.ring = TileRing(self.max_inflight + 1, chunk_tiles, out_px)
            self.executor = reader_processes(workers, self.ring)
            self._plan, self._read = plan_in_process, read_in_process

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the readers, close the handles, free the ring."""
        try:
            self.executor.shutdown(wait=True, cancel_futures=True)
        finally:
            self.work.handles.close()
            if self.ring is not None:
                self.ring.close()

    def events(self, slides: list[SlideInput]) -> Iterator[ReadEvent]:
        """Per slide, in order: :class:`SlidePlanned`, then (when it is ok) :class:`TilesRead` per chunk (or
        :class:`SlideFailed` and no more of its tiles), then :class:`SlideEnded`; with up to ``max_inflight`` reads
        and ``plan_ahead`` slide plans running ahead of the consumer."""
        window: deque = deque()
        todo = self._submissions(slides)
        inflight, exhausted, held = 0, False, None  # held: the ring slot of the tiles last yielded
        while True:
            if held is not None:  # the consumer is done with it once it asks again
                self.ring.release(held)
                held = None
            refill = not self.burst or inflight == 0
            while refill and not exhausted and inflight < self.max_inflight:
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                window.append(item)
                inflight += isinstance(item, _Read)
            if not window:
                return
            if self.burst:
                self.executor.barrier()
            item = window.popleft()
            if isinstance(item, _Read):
                inflight -= 1
                (event, waited), held = _wait(item, self.ring), item.slot
                self.seconds_waiting += waited
                if event is not None:
                    yield event
                continue
            if (
                isinstance(item, SlideEnded) and self.burst
            ):  # read in this process, and every read of it is done
                self.work.handles.clear_cache(item.plan.slide)
            yield item

    def _submissions(self, slides: list[SlideInput]) -> Iterator[SlidePlanned | _Read | SlideEnded]:
        """The pool's work in consumption order, submitted as the window asks for it."""
        plans: dict[int, Future] = {}

        def plan_ahead(upto: int) -> None:
            for j in range(upto, min(len(slides), upto + self.plan_ahead + 1)):
                if j not in plans:
                    plans[j] = self.executor.submit(self._plan, slides[j], self.tiling)

        for i in range(len(slides)):
            plan_ahead(i)
            plan = plans.pop(i).result()
            yield SlidePlanned(plan)
            if plan.status == "ok":
                g = plan.grid
                chunks = make_chunks if self.burst else make_blocks  # see the module's docstring
                for c in chunks(g, max_tiles=self.chunk_tiles):
                    args = (plan.slide, plan.level, g.x[c.rows], g.y[c.rows], g.w0, g.h0, self.out_px)
                    slot = self.ring.acquire() if self.ring is not None else None
                    extra = () if slot is None else (slot,)
                    yield _Read(plan, c.rows, self.executor.submit(self._read, *args, *extra), slot)
                    plan_ahead(i + 1)
            yield SlideEnded(plan)


def _wait(read: _Read, ring: TileRing | None) -> tuple[TilesRead | SlideFailed | None, float]:
    """Wait for ``read``: its tiles (a view of its ring slot when it has one), the failure it ends its slide with, or
    None for a slide already failed; and the seconds waited for tiles."""
    plan = read.plan
    if plan.status != "ok":
        with contextlib.suppress(Exception):
            read.future.result()
        return None, 0.0
    t0 = time.perf_counter()
    try:
        out, seconds = read.future.result()
    except Exception as exc:  # noqa: BLE001 - a slide's read failure fails that slide only
        plan.status, plan.error = "failed", _failure(plan, exc)
        return SlideFailed(plan), 0.0
    tiles = out if read.slot is None else ring.slot(read.slot)[:out]
    plan.seconds_read += seconds
    return TilesRead(plan, read.rows, tiles), time.perf_counter() - t0


def _failure(plan: SlidePlan, exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, SlideError):
        return msg
    return f"{plan.slide.slide_id}: {type(exc).__name__}: {msg}"
