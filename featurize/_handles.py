"""What a reading process holds and does: its open slide handles and decoded-tile caches, planning slides and reading
their chunks. In-process reading uses the pool's own :class:`ReadWork`; each reader process makes one of its own when
it starts (:func:`start_reader_process`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import numpy as np

from slide2expr.featurize._inputs import SlideInput
from slide2expr.featurize._plan import SlidePlan, TilingParams, plan_slide
from slide2expr.featurize._reader import open_slide
from slide2expr.featurize._slide import SlideReader
from slide2expr.featurize._tilecache import TileCache

#: slides whose decoded tiles a process keeps: the slide being read and the ones just before it, whose last chunks
#: other threads may still be reading
CACHED_SLIDES = 3
#: Linux ``prctl`` option that sends a signal to a process when its parent dies
_PR_SET_PDEATHSIG = 1


def _slide_key(slide: SlideInput) -> tuple:
    return (str(slide.path), slide.mpp, slide.mpp_fallback)


class SlideHandles:
    """The open slide handles of one process: one slide open per reading thread (a reader process has one thread;
    in-process reading one per core), reopened when the thread moves on to another slide; the threads reading a
    slide share its decoded JPEG tiles (:class:`TileCache`), kept for the last :data:`CACHED_SLIDES` slides."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's ``(slide key, reader)``
        self._open: set[SlideReader] = set()
        self._caches: dict[tuple, TileCache] = {}  # by slide key, most recent last

    def reader(self, slide: SlideInput) -> SlideReader:
        """The calling thread's open handle for ``slide``."""
        key = _slide_key(slide)
        mine = getattr(self._local, "handle", None)
        if mine is not None and mine[0] == key:
            return mine[1]
        with self._lock:
            cache = self._caches.pop(key, None)
            if cache is None:  # not `or`: an empty cache is falsy, and the threads of a slide must share one
                cache = TileCache()
            self._caches[key] = cache
            while len(self._caches) > CACHED_SLIDES:
                self._caches.pop(next(iter(self._caches)))
            if mine is not None:
                self._open.discard(mine[1])
        self._local.handle = None
        if mine is not None:
            with contextlib.suppress(Exception):
                mine[1].close()
        r = open_slide(
            slide.path,
            mpp_override=slide.mpp,
            mpp_fallback=slide.mpp_fallback,
            slide_id=slide.slide_id,
            tile_cache=cache,
        )
        with self._lock:
            self._open.add(r)
        self._local.handle = (key, r)
        return r

    def drop(self, slide: SlideInput) -> None:
        """Close the calling thread's handle for ``slide`` (after a failure: the next use reopens it)."""
        mine = getattr(self._local, "handle", None)
        if mine is None or mine[0] != _slide_key(slide):
            return
        self._local.handle = None
        with self._lock:
            self._open.discard(mine[1])
        with contextlib.suppress(Exception):
            mine[1].close()

    def clear_cache(self, slide: SlideInput) -> None:
        """Free the decoded tiles of ``slide``, whose reads are all done."""
        with self._lock:
            cache = self._caches.get(_slide_key(slide))
        if cache is not None:
            cache.clear()

    def __len__(self) -> int:
        """Open handles."""
        return len(self._open)

    def close(self) -> None:
        """Close every handle and forget the caches."""
        with self._lock:
            readers = list(self._open)
            self._open.clear()
            self._caches.clear()
            self._local = threading.local()
        for r in readers:
            with contextlib.suppress(Exception):
                r.close()


class ReadWork:
    """Plans slides and reads their chunks with this process's :class:`SlideHandles`; a reader process puts the
    tiles it reads in a slot of the shared ring (``ring``) instead of returning them."""

    def __init__(self, ring=None) -> None:
        self.handles = SlideHandles()
        self.ring = ring

    def plan(self, slide: SlideInput, tiling: TilingParams) -> SlidePlan:
        plan = plan_slide(slide, tiling, open_reader=self.handles.reader)
        if plan.status == "failed":
            self.handles.drop(slide)
        return plan

    def read(
        self,
        slide: SlideInput,
        level: int,
        x: np.ndarray,
        y: np.ndarray,
        w0: int,
        h0: int,
        out_px: int,
        slot: int | None = None,
    ) -> tuple[np.ndarray | int, float]:
        """Read one chunk: ``(tiles, seconds)``, or ``(n_tiles, seconds)`` with the tiles put in ring slot ``slot``."""
        t0 = time.perf_counter()
        tiles = self.handles.reader(slide).read_tiles(x, y, w0, h0, level=level, out_px=out_px)
        if slot is None:
            return tiles, time.perf_counter() - t0
        self.ring.put(slot, tiles)
        return len(tiles), time.perf_counter() - t0


#: the work of this reader process (None outside reader processes)
_PROCESS_WORK: ReadWork | None = None


def start_reader_process(ring=None) -> None:
    """A reader process's initializer: die with the parent, leave Ctrl-C to it, one thread for numpy, PIL and torch (the other cores are
    the encoder's), and this process's own :class:`ReadWork` (a forked process never uses the handles its parent
    had open: forked handles share one file offset, and concurrent reads would garble each other)."""
    global _PROCESS_WORK
    # Ctrl-C reaches every process of the terminal's group: the main process stops the run and then its readers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # a killed run must not leave readers behind
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    os.environ["OMP_NUM_THREADS"] = "1"
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(1)
    _PROCESS_WORK = ReadWork(ring)


def plan_in_process(slide: SlideInput, tiling: TilingParams) -> SlidePlan:
    """:meth:`ReadWork.plan` in a reader process."""
    return _PROCESS_WORK.plan(slide, tiling)


def read_in_process(*args) -> tuple[np.ndarray | int, float]:
    """:meth:`ReadWork.read` in a reader process."""
    return _PROCESS_WORK.read(*args)
