"""Whether a run compiles its encoder (``torch.compile``), and the batch function that decides on the speed it
measures."""

from __future__ import annotations

import time

#: ``compile="auto"`` times the run's first eager batches and compiles the encoder when the run's remaining eager
#: encoder work (tiles left × measured seconds per tile) is at least this long: compiling costs tens of seconds once
#: per process on a small CPU and then saves a fraction of a CNN's time, so it pays only on long runs. Measuring,
#: not counting tiles, is what makes the choice hold for fast and slow CPUs, small and large tiles
#: (``benchmarks/featurize.py --compile`` measures both sides).
COMPILE_MIN_EAGER_SECONDS = 60.0
#: eager batches ``auto`` times, after one untimed (allocator growth, oneDNN's first-call set-up), before deciding
COMPILE_PROBE_BATCHES = 4


def wants_compile(mode: str, *, device_type: str, precision: str, family: str) -> bool:
    """Whether a run may compile its encoder (``mode``: ``auto``, ``on`` or ``off``); ``auto`` then decides on
    the speed it measures (:class:`AutoCompile`).

    ``auto`` considers only where compiling is measured to pay: on the CPU, in fp32, CNN encoders; not on CUDA, not
    in bf16, not ViTs and not the weight-free encoder (whose compiling costs more than it saves)."""
    if mode == "off" or device_type != "cpu":
        return False
    if mode == "on":
        return True
    return precision == "fp32" and family == "cnn"


class AutoCompile:
    """The batch function of a run that may compile its encoder. ``always`` (``compile="on"``): the compiled
    encoder from the first batch, a failure to compile being an error. Else (``auto``): the eager encoder for the
    run's first batches, timed, then the compiled encoder if the run's remaining eager work (``est_tiles`` left ×
    measured seconds per tile) is at least :data:`COMPILE_MIN_EAGER_SECONDS`, else the eager encoder to the end;
    compiling failures fall back to eager with a warning (``CompiledEncoder``). Either way an encoder compiled by
    an earlier run in the process is used at once."""

    def __init__(self, enc, batch_size: int, est_tiles: int, *, always: bool = False) -> None:
        self.enc = enc
        self.batch_size = batch_size
        self.left = est_tiles
        self._calls = 0
        self._tiles = 0
        self._seconds = 0.0
        #: the CompiledEncoder in use from now on (None: eager)
        self.compiled = enc.compiled_ready(batch_size, fallback=not always)
        #: whether this run compiled it (False where an earlier run in the process did)
        self.compiles_here = False
        self.decided = self.compiled is not None or always
        if always and self.compiled is None:
            self._use(enc.compiled(batch_size))

    def _use(self, compiled) -> None:
        self.compiled = compiled
        self.compiles_here = compiled.seconds_compile is None

    @property
    def in_use(self):
        """The CompiledEncoder that has embedded batches of this run (None while eager or after a fallback)."""
        c = self.compiled
        return c if c is not None and c.ready else None

    @property
    def eager_seconds_left(self) -> float | None:
        """The remaining eager work as estimated so far (None before the first timed batch)."""
        return self.left * self._seconds / self._tiles if self._tiles else None

    def __call__(self, x):
        if self.decided:
            return self.compiled(x) if self.compiled is not None else self.enc(x)
        t0 = time.perf_counter()
        out = self.enc(x)
        dt = time.perf_counter() - t0
        k = int(x.shape[0])
        self._calls += 1
        self.left -= k
        if self._calls > 1:
            self._tiles += k
            self._seconds += dt
        if self._calls > COMPILE_PROBE_BATCHES:
            self.decided = True
            if self.left > 0 and self.eager_seconds_left >= COMPILE_MIN_EAGER_SECONDS:
                self._use(self.enc.compiled(self.batch_size, fallback=True))
        return out


def compiler_for_run(enc, mode: str, *, device_type: str, precision: str, batch_size: int, est_tiles: int):
    """The :class:`AutoCompile` a run embeds with, or None where it runs the encoder eagerly throughout.

    ``est_tiles``: the run's tiles as estimated (the first slide's tiles × slides). ``compile="on"`` for an encoder
    that has no compiled form is an error."""
    family = getattr(getattr(enc, "spec", None), "family", "")
    if not wants_compile(mode, device_type=device_type, precision=precision, family=family):
        return None
    if not hasattr(enc, "compiled"):
        if mode == "on":
            raise ValueError(
                f"compile='on': encoder {type(enc).__name__} has no compiled form; use compile='off'"
            )
        return None
    return AutoCompile(enc, batch_size, est_tiles, always=mode == "on")
