"""Decoded JPEG tiles of one slide, shared by the threads that read it."""

from __future__ import annotations

import contextlib
import threading

import numpy as np

#: bytes of OpenSlide's own tile cache per slide (decoded ARGB tiles; see TileCache.share_with): a band of wide
#: tissue's tiles, which OpenSlide's default cache of each handle is too small to hold
OPENSLIDE_CACHE_BYTES = 128 << 20
#: bytes of decoded JPEG tiles a slide's cache keeps at most: a band of JPEG rows across the widest slides
TILE_CACHE_BYTES = 256 << 20


class TileCache:
    """Decoded JPEG tiles of one slide, kept for the reads that share them.

    Tiles are read row by row, so a tile is wanted again by the next box along its row and, where a box's edge
    falls inside a JPEG tile, by the row of boxes below: the cache holds a band of JPEG rows as wide as the tissue,
    however wide that is (a cache limited to a count of tiles decodes each tile twice on wide tissue). So each
    reading thread says where its read starts (:meth:`passed`), and the rows above the lowest such mark go; beyond
    ``max_bytes`` the oldest tiles go first.

    Thread-safe, so that the readers of one slide on several threads (featurize's in-process reading) share one
    cache: chunks alternate between the threads, and with a cache each, every thread would decode most edge tiles
    again."""

    def __init__(self, max_bytes: int = TILE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._tiles: dict[tuple[int, int, int], np.ndarray] = {}
        #: per (level, scale): each reading thread's mark (see :meth:`passed`)
        self._marks: dict[tuple[int, int], dict[int, int]] = {}
        self._openslide = None  # see share_with
        self._held: set[int] = set()  # threads inside hold_mark
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            return self._tiles.get(key)

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        """Keep ``tile`` under ``key = (level, index, scale)`` (two threads may both have decoded it: the second
        copy replaces the first)."""
        with self._lock:
            old = self._tiles.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            while self._tiles and self.nbytes + tile.nbytes > self.max_bytes:
                self.nbytes -= self._tiles.pop(next(iter(self._tiles))).nbytes
            self._tiles[key] = tile
            self.nbytes += tile.nbytes

    def passed(self, level: int, scale: int, index: int) -> None:
        """The calling thread reads in raster order and will not want the tiles of ``level`` at ``1/scale`` size
        numbered below ``index`` (the JPEG rows above its read) again: once every thread reading that level has said
        so, they go. A mark may also go back (the next slide of the same file starts at the top again); reads out of
        raster order only cost decoding again."""
        me = threading.get_ident()
        with self._lock:
            if me in self._held:
                return
            marks = self._marks.setdefault((level, scale), {})
            before = min(marks.values(), default=0)
            marks[me] = index
            low = min(marks.values())
            if low <= before:  # what is below the lowest mark went when it was reached
                return
            for k in [k for k in self._tiles if k[1] < low and k[0] == level and k[2] == scale]:
                self.nbytes -= self._tiles.pop(k).nbytes

    def clear(self) -> None:
        """Drop every tile (the slide has been read); the cache stays shared by the slide's readers."""
        with self._lock:
            self._tiles.clear()
            self.nbytes = 0
            self._marks.clear()
            self._openslide = None  # OpenSlide frees it with the last handle that uses it

    @contextlib.contextmanager
    def hold_mark(self):
        """Within this block the calling thread's reads leave its mark (:meth:`passed`) where it is: it reads a
        block of rows, whose top row it has marked, one row at a time, and goes back up for the next block."""
        me = threading.get_ident()
        with self._lock:
            self._held.add(me)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(me)

    def share_with(self, osr) -> None:
        """Give OpenSlide handle ``osr`` this slide's OpenSlide tile cache, for the tiles OpenSlide decodes itself
        (formats and levels the direct JPEG path does not read): one cache of :data:`OPENSLIDE_CACHE_BYTES` for all
        the slide's handles."""
        import openslide

        if not hasattr(openslide, "OpenSlideCache"):  # pragma: no cover - openslide-python < 1.3
            return
        with self._lock:
            if self._openslide is None:
                self._openslide = openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES)
            osr.set_cache(self._openslide)

    def __len__(self) -> int:
        return len(self._tiles)
