"""Process-wide tuning for CPU inference with PyTorch, measured on the 2-core benchmark machine.

Imported first by :mod:`featurize` and by the CLI, because the OpenMP setting only takes effect before torch loads.

**OpenMP spinning.** PyTorch's CPU wheels use libgomp, whose idle threads spin for 300,000 rounds (5–10 ms here)
after every parallel region before they sleep. Between encoder batches featurize reads tiles on every core of the main
process; a spinning OpenMP thread held one of the cores, so reading ran at one core's speed (952 against 1,389
tiles/s right after a forward pass). 10,000 rounds (≈ 0.2 ms) still bridge the gaps between one forward pass's
kernels: resnet50-trunc encoder-only speed did not change beyond the machine's noise (median 75.8 against 73.8
tiles/s over six alternating runs; 1,000 rounds cost ≈ 5 %). libgomp reads ``GOMP_SPINCOUNT`` once, when torch loads
it, so it is set only if torch is not loaded yet, and a value already in the environment is kept.

**Heap trimming.** A forward pass allocates and frees every activation. glibc gives blocks above its mmap threshold
(dynamic, 128 KB to 32 MB) straight back to the kernel and trims the top of the heap once 128 KB+ is free there, so
the next batch page-faults the same memory in again: 0.8–1.3 million page faults per 4 s of encoder time, with
8–29 % of the CPU time spent in the kernel. :func:`keep_freed_memory` raises both thresholds so freed activations are reused:
resnet50-trunc encoder-only 76–79 → 101–104 tiles/s, efficientnet-lite0 178–186 → 312–318 tiles/s (bf16, batch 8),
with the same peak RSS (849–883 MB against 859–876 MB). PyTorch's CPU performance guide suggests preloading jemalloc
or tcmalloc for the same reason; this needs no other library.
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
