"""Where reads run: at submission, on one thread per core in bursts, or in reader processes that hand tiles over in a
ring of shared memory."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait

import numpy as np

from slide2expr.featurize._handles import start_reader_process

#: reader processes beside a GPU at most (the encoder there needs about one core; every spare core reads)
MAX_GPU_READERS = 8


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fork_readers() -> bool:
    """Whether reader processes are forked (Linux), and so inherit the main process's memory."""
    return sys.platform.startswith("linux")


def default_workers(device: str = "cpu") -> int:
    """Reader processes for ``device`` (``"cpu"`` or ``"cuda"``).

    On CUDA the encoder needs about one core, so every spare core reads (up to :data:`MAX_GPU_READERS`). On the CPU
    the encoder's threads use every core: a reader process then preempts one of them and the other spins at the
    next barrier, so reading in parallel costs about twice its own CPU time. Reading in the main process instead
    (0) takes turns with the encoder: a burst of chunks on one thread per core, then their batches. So small CPU
    machines (≤ 2 cores) read in-process; larger ones keep one reader. ``benchmarks/featurize.py`` measures both.
    """
    n = usable_cores()
    if device == "cuda":
        return max(1, min(MAX_GPU_READERS, n - 1))
    return 0 if n <= 2 else 1


class TileRing:
    """Slots of decoded tiles in memory shared with the reader processes, so tiles reach the encoder without
    being pickled through a pipe (at GPU rates that pipe, one per pool, is what limits the run).

    Anonymous shared memory made before the readers fork: they inherit it, and it goes with the last process,
    whatever way the run ends. The main process hands a free slot to each read it submits and takes the slot back
    once the tiles are consumed (see :meth:`featurize._pool.ReaderPool.events`)."""

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


class InlineExecutor:
    """``submit`` runs the call now (in-process reading on one core: everything in the main thread)."""

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
        pass


def _one_torch_thread() -> None:
    """A reading thread's torch calls (the resize) run on that thread alone: as a team of their own, their OpenMP
    threads would outnumber the cores, and libgomp then stops spinning for everyone (the encoder's barriers too).
    The setting is per thread; the encoder's stays."""
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(1)


class BurstThreadExecutor:
    """In-process reading on several cores: reads run on one thread per core of the main process, each with its own
    slide handle (libjpeg-turbo, numpy and torch release the GIL), in bursts: the pool submits a burst of chunks and
    waits for all of them (:meth:`barrier`) before the encoder runs. So reading uses every core and never competes
    with the encoder's threads, which on a small CPU costs more than the reading itself."""

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


def in_process_executor() -> InlineExecutor | BurstThreadExecutor:
    """Reading in the main process: on one thread per core, or at submission on one core."""
    cores = usable_cores()
    return BurstThreadExecutor(cores) if cores > 1 else InlineExecutor()


def reader_processes(workers: int, ring: TileRing | None) -> ProcessPoolExecutor:
    """``workers`` reader processes (forked on Linux, inheriting ``ring``), all started before this returns: a fork
    must happen before the run starts any thread of its own."""
    method = "fork" if fork_readers() else "spawn"
    ex = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context(method),
        initializer=start_reader_process,
        initargs=(ring,),
    )
    # with fork, the first submit launches every worker
    ex.submit(os.getpid).result()
    return ex
