"""Process-wide tuning for CPU inference with PyTorch.

Imported first by :mod:`slide2expr.featurize` (and so by the command line), because the OpenMP setting only takes
effect before torch loads.

**OpenMP spinning.** PyTorch's CPU wheels use libgomp, whose idle threads spin for 300,000 rounds after every
parallel region before they sleep. Between encoder batches featurize reads tiles on every core of the main process;
a spinning OpenMP thread holds one of the cores, so reading would run at one core's speed. :data:`SPINCOUNT` rounds
still bridge the gaps between one forward pass's kernels, so the encoder keeps its speed. libgomp reads
``GOMP_SPINCOUNT`` once, when torch loads it, so it is set only if torch is not loaded yet, and a value already in
the environment is kept.

**Heap trimming.** A forward pass allocates and frees every activation. glibc gives blocks above its mmap threshold
(dynamic, 128 KB to 32 MB) straight back to the kernel and trims the top of the heap once 128 KB+ is free there, so
the next batch page-faults the same memory in again and much of the CPU time goes to the kernel.
:func:`keep_freed_memory` raises both thresholds so freed activations are reused, at the same peak memory. PyTorch's
CPU performance guide suggests preloading jemalloc or tcmalloc for the same reason; this needs no other library.

``benchmarks/featurize.py`` measures both; its docstring gives the figures.
"""

from __future__ import annotations

import contextlib
import os
import sys

#: libgomp spin rounds before an idle OpenMP thread sleeps
SPINCOUNT = "10000"
#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap and are reused (the largest value glibc accepts on 64-bit systems)
MMAP_THRESHOLD = 32 << 20
#: free memory kept at the top of the heap before glibc returns it to the kernel
TRIM_THRESHOLD = 256 << 20

if "torch" not in sys.modules:
    os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)

_KEPT = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); process-wide and permanent, since glibc
    cannot return to its dynamic thresholds. Does nothing where the C library is not glibc, or when the environment
    sets ``SLIDE2EXPR_MALLOPT=0``.

    Returns
    -------
    bool
        Whether the thresholds are set (now or by an earlier call).
    """
    global _KEPT
    if _KEPT:
        return True
    if os.environ.get("SLIDE2EXPR_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _KEPT = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return _KEPT
