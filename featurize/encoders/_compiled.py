"""Encoders compiled with ``torch.compile``: one compiled form per encoder and batch size, kept on the encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from slide2expr.featurize.encoders._spec import EncoderSpec

if TYPE_CHECKING:
    from slide2expr.featurize.encoders._model import Encoder


def compiled_form(enc: Encoder, batch_size: int, *, fallback: bool = False) -> CompiledEncoder:
    """``enc`` compiled for batches of ``batch_size``: one form per batch size and ``fallback``, kept on the encoder,
    so a second run in the process does not compile again. See :class:`CompiledEncoder`."""
    cache = enc.__dict__.setdefault("_compiled_by_batch", {})
    key = (int(batch_size), bool(fallback))
    if key not in cache:
        cache[key] = CompiledEncoder(enc, batch_size, fallback=fallback)
    return cache[key]


def ready_form(enc: Encoder, batch_size: int, *, fallback: bool = False) -> CompiledEncoder | None:
    """A form of :func:`compiled_form` for ``batch_size`` that an earlier call already compiled (and that did not
    fall back to eager); else None, without compiling. Once compiled, ``fallback`` no longer matters (compiling is
    what can fail), so a form compiled with either setting serves both."""
    cache = enc.__dict__.get("_compiled_by_batch", {})
    for key in ((int(batch_size), bool(fallback)), (int(batch_size), not fallback)):
        c = cache.get(key)
        if c is not None and c.ready:
            return c
    return None


class CompileError(RuntimeError):
    """``torch.compile`` could not build the encoder here (no C++ compiler, an operator Inductor lacks, …)."""


class CompiledEncoder:
    """An :class:`Encoder` compiled with ``torch.compile`` (Inductor, weights frozen into the graph) for batches
    of one size: smaller batches are padded with blank tiles to that size and larger ones run in pieces, so one
    graph serves a whole run (a new shape would compile again, tens of seconds on a small CPU).

    The first call compiles, once per process: tens of seconds on a small CPU (Inductor also caches on disk, in
    ``$TORCHINDUCTOR_CACHE_DIR``, so later processes take less). Outputs equal the eager encoder's within float
    rounding (per-tile cosine > 0.99999). ``benchmarks/featurize.py --compile on`` measures the speed.

    ``fallback``: if compiling fails, warn once and run the eager encoder instead of raising
    :class:`CompileError`.

    Attributes
    ----------
    active
        Whether the compiled graph is in use (False after a fallback).
    seconds_compile
        Wall time of the first call, compiling included (None before it).
    error
        Why compiling failed (after a fallback), else None.
    """

    def __init__(self, enc: Encoder, batch_size: int, *, fallback: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.enc = enc
        self.batch_size = int(batch_size)
        self.fallback = fallback
        self.active = True
        self.seconds_compile: float | None = None
        self.error: str | None = None
        self._fn = torch.compile(enc, dynamic=False)

    @property
    def spec(self) -> EncoderSpec:
        return self.enc.spec

    @property
    def ready(self) -> bool:
        """Compiled and in use: the first call compiled it and did not fall back to eager."""
        return self.active and self.seconds_compile is not None

    def __call__(self, x: Tensor) -> Tensor:
        """``(k, 3, H, W)`` uint8 → ``(k, dim)`` float32, as :meth:`Encoder.forward`."""
        b, k = self.batch_size, int(x.shape[0])
        if not self.active:
            return self.enc(x)
        if k > b:
            return torch.cat([self(x[i : i + b]) for i in range(0, k, b)])
        if k < b:
            fmt = (
                torch.channels_last
                if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                else torch.contiguous_format
            )
            padded = torch.empty((b, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
            padded[:k] = x
            padded[k:] = 0
            return self._call(padded)[:k]
        return self._call(x)

    def _call(self, x: Tensor) -> Tensor:
        import logging
        import time

        from torch._inductor import config as inductor_config

        if self.seconds_compile is not None:
            with inductor_config.patch(freezing=True):
                return self._fn(x)
        t0 = time.perf_counter()
        # torch's C++ builder logs "No CUDA runtime is found" on every CPU-only machine: not news to our users
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            # freezing: weights become constants Inductor folds and prepacks (conv + batch norm, oneDNN layouts);
            # patched per call, so other compiles in the process keep their settings
            with inductor_config.patch(freezing=True):
                out = self._fn(x)
        except Exception as exc:  # noqa: BLE001 - any compiler failure; the eager encoder still works
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.error = f"{type(exc).__name__}: {first}"[:300]
            if not self.fallback:
                raise CompileError(
                    f"torch.compile could not compile encoder {self.spec.name!r} here ({self.error}); "
                    "run it eagerly with --compile off (Python: compile='off')"
                ) from exc
            import warnings

            warnings.warn(
                f"torch.compile could not compile encoder {self.spec.name!r} ({self.error}); running it eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            self.active = False
            return self.enc(x)
        finally:
            quiet.setLevel(level)
        self.seconds_compile = time.perf_counter() - t0
        return out
