"""Embedding: the run's encoder on its device, and the batches that feed it (synchronous on a CPU, overlapped with
the host on CUDA)."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from slide2expr.featurize._options import FeaturizeOptionsError, square_input_px
from slide2expr.featurize._tuning import keep_freed_memory

#: tiles per forward pass by default: small batches on a CPU (the encoder's threads already use every core), large
#: ones on CUDA (``benchmarks/featurize.py --encoder-batches`` measures the choice)
DEFAULT_BATCH = {"cpu": 8, "cuda": 256}
#: CUDA batches in flight while the host gathers the next one (each owns pinned and device buffers)
CUDA_BATCHES_IN_FLIGHT = 2


class DeviceMemoryError(RuntimeError):
    """A batch did not fit in the device's memory; the message says which batch size to try."""


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` where a GPU is available, else ``cpu``; ``cuda``/``cuda:N`` checked against the GPUs
    here (:class:`FeaturizeOptionsError` naming ``device``)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FeaturizeOptionsError(
            "device='cuda': no CUDA device is available here; use device 'cpu' or 'auto'"
        )
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise FeaturizeOptionsError(
                f"device={device!r}: no such CUDA device here; use device 'cpu' or 'auto'"
            )
    return device


@dataclass
class Embedder:
    """The run's encoder on its device: what embeds the tiles, in which precision, in batches of which size."""

    encoder: Any
    device: str
    #: bf16 autocast, or None (fp32)
    autocast: Any
    batch_size: int
    #: tiles are resized to ``input_px`` squares for the encoder
    input_px: int

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast is not None else "fp32"

    @property
    def device_type(self) -> str:
        import torch

        return torch.device(self.device).type

    def autocast_context(self):
        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast)

    def batches(self) -> Batches:
        """The batches of a run (see :class:`Batches`)."""
        import torch

        dev = torch.device(self.device)
        if dev.type == "cuda":
            return CudaBatches(self.encoder, dev, self.batch_size, self.input_px, int(self.encoder.spec.dim))
        return Batches(self.encoder, dev, self.batch_size, self.input_px)


def load_embedder(
    encoder: Any, *, weights, device: str, precision: str, batch_size: int, input_px: int | None
) -> Embedder:
    """The encoder (a registered name, built with ``weights``, or an :class:`~featurize.encoders.Encoder`) on
    ``device`` (resolved), with bf16 autocast where ``precision`` asks for it (``auto``: where the device has it and
    the encoder allows). On the CPU this makes glibc keep freed memory for reuse, process-wide (see
    :func:`featurize._tuning.keep_freed_memory`)."""
    import torch

    if isinstance(encoder, str):
        from slide2expr.featurize.encoders import create_encoder

        enc = create_encoder(encoder, weights=weights, device=device)
    else:
        enc = encoder
        enc.to(device)
    if input_px is None:
        h, w = enc.input_size if hasattr(enc, "input_size") else enc.data_config["input_size"][1:]
        input_px = square_input_px(enc.spec.name, int(h), int(w))
    dev = torch.device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    if precision == "auto":
        ac = enc.autocast_dtype(dev) if hasattr(enc, "autocast_dtype") else None
    else:
        ac = torch.bfloat16 if precision == "bf16" else None
    return Embedder(enc, device, ac, batch_size, int(input_px))


class _SlideOut:
    """A slide's embeddings as they are collected: ``done(emb)`` runs once the slide has ended and every tile is
    in (never for a dropped slide)."""

    __slots__ = ("emb", "left", "done", "ended")

    def __init__(self, emb: np.ndarray) -> None:
        self.emb = emb
        self.left = 0  # tiles added, not yet collected
        self.done: Callable[[np.ndarray | None], None] | None = None
        self.ended = False

    def maybe_done(self) -> None:
        if self.ended and self.left == 0 and self.done is not None:
            done, self.done = self.done, None
            done(self.emb)


class Batches:
    """Gathers tiles into batches of ``batch_size`` and embeds each when full, synchronously, a slide at a time
    (the CPU encoder uses every core, so nothing would overlap it).

    The protocol, shared with :class:`CudaBatches`: :meth:`start` a slide with its embedding array, :meth:`add`
    its tiles, then :meth:`end` it with a callback that receives the filled array once every tile is embedded
    (:meth:`drop` instead, for a slide that failed); :meth:`close` after the last slide. ``add``, ``end`` and
    ``close`` return the number of tiles embedded during the call."""

    def __init__(self, enc, dev, batch_size: int, out_px: int) -> None:
        self.enc, self.dev, self.batch_size = enc, dev, batch_size
        #: what embeds a batch: the encoder, or its compiled form (see ``FeaturizeOptions.compile``)
        self.fn = enc
        self.cur: _SlideOut | None = None
        #: tiles of a batch not yet full, copied out of their chunks (a chunk read by a reader process is a view
        #: of a ring slot that is read into again once the next event is asked for), and their rows in the slide
        self.staged = np.empty((batch_size, out_px, out_px, 3), np.uint8)
        self.staged_rows = np.empty(batch_size, np.int64)
        self.fill = 0
        #: seconds the host waited for the device's results (CUDA; the CPU's forward passes are not counted)
        self.seconds_waiting = 0.0
        #: seconds in the CPU encoder's forward passes (CUDA runs them asynchronously: not counted there)
        self.seconds_encoding = 0.0

    def start(self, emb: np.ndarray) -> None:
        """Begin a slide whose embeddings go to ``emb`` (``(n_tiles, dim)``)."""
        self.cur, self.fill = _SlideOut(emb), 0

    def drop(self) -> None:
        """The current slide failed: the rest of its tiles are not embedded and its callback never runs."""
        self.cur, self.fill = None, 0

    def add(self, tiles: np.ndarray, rows: np.ndarray) -> int:
        """Embed or stage ``(k, H, W, 3)`` uint8 tiles of the current slide, whose embeddings go to ``emb[rows]``;
        none is referenced after returning."""
        if self.cur is None:
            return 0
        bs, done, i = self.batch_size, 0, 0
        # whole batches straight from the chunk while nothing is staged (no copy)
        while self.fill == 0 and len(tiles) - i >= bs:
            done += self._embed(tiles[i : i + bs], rows[i : i + bs])
            i += bs
        while i < len(tiles):
            k = min(len(tiles) - i, bs - self.fill)
            self.staged[self.fill : self.fill + k] = tiles[i : i + k]
            self.staged_rows[self.fill : self.fill + k] = rows[i : i + k]
            self.fill += k
            i += k
            if self.fill == bs:
                done += self._embed(self.staged, self.staged_rows)
                self.fill = 0
        return done

    def end(self, done: Callable[[np.ndarray | None], None]) -> int:
        """The current slide has no more tiles: ``done(emb)`` once they are all embedded."""
        cur = self.cur
        if cur is None:
            return 0
        k = self._end_tiles()
        cur.done, cur.ended = done, True
        self.cur = None
        cur.maybe_done()
        return k

    def _end_tiles(self) -> int:
        """Embed the slide's last, partial batch (a slide's batches never hold another slide's tiles here)."""
        k, self.fill = self.fill, 0
        return self._embed(self.staged[:k], self.staged_rows[:k]) if k else 0

    def close(self) -> int:
        """After the last slide: embed what is still pending."""
        return 0

    def _embed(self, tiles: np.ndarray, rows: np.ndarray) -> int:
        import torch

        t0 = time.perf_counter()
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW, no copy
        if self.dev.type != "cpu":
            x = x.to(self.dev)
        self.cur.emb[rows] = self.fn(x).float().cpu().numpy()
        self.seconds_encoding += time.perf_counter() - t0
        return len(tiles)


class CudaBatches(Batches):
    """Batches on a CUDA device, overlapped with the host and across slides.

    Tiles are copied once into a pinned staging buffer, moved to the device on a copy stream while the previous
    batch runs, embedded, and copied back without waiting; the host gathers batch k+1 while the device embeds
    batch k and collects batch k's result only when its buffers are needed again. A batch may hold the end of one
    slide and the start of the next (no half-empty batch, no idle device at slide boundaries); a slide's callback
    runs when its last batch is collected.

    ``depth`` batches may be in flight; each owns a pinned input buffer, a device input buffer and a pinned output
    buffer."""

    def __init__(
        self, enc, dev, batch_size: int, out_px: int, dim: int, depth: int = CUDA_BATCHES_IN_FLIGHT
    ) -> None:
        import torch

        super().__init__(enc, dev, batch_size, out_px)
        n = depth + 1
        shape = (batch_size, out_px, out_px, 3)
        self.host_in = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(n)]
        self.host_in_np = [t.numpy() for t in self.host_in]
        self.dev_in = [torch.empty(shape, dtype=torch.uint8, device=dev) for _ in range(n)]
        self.host_out = [torch.empty((batch_size, dim), dtype=torch.float32).pin_memory() for _ in range(n)]
        # each staged tile's row in its slide
        self.rows_of = [np.empty(batch_size, np.int64) for _ in range(n)]
        self.copied = [torch.cuda.Event() for _ in range(n)]
        self.ready = [torch.cuda.Event() for _ in range(n)]
        self.copy_stream = torch.cuda.Stream(dev)
        self.stream = torch.cuda.current_stream(dev)
        self.slot = 0  # the staging buffer being filled (``fill`` tiles in it)
        # its tiles: (slide, first, n) positions in the batch
        self.segments: list[tuple[_SlideOut, int, int]] = []
        self.inflight: deque[tuple[int, int, list]] = deque()  # (slot, n, segments)

    def start(self, emb: np.ndarray) -> None:
        self.cur = _SlideOut(emb)

    def drop(self) -> None:
        # rows of the failed slide already staged or in flight are embedded and ignored
        self.cur = None

    def add(self, tiles: np.ndarray, rows: np.ndarray) -> int:
        cur = self.cur
        if cur is None:
            return 0
        done, i = 0, 0
        while i < len(tiles):
            k = min(len(tiles) - i, self.batch_size - self.fill)
            self.host_in_np[self.slot][self.fill : self.fill + k] = tiles[i : i + k]
            self.rows_of[self.slot][self.fill : self.fill + k] = rows[i : i + k]
            if self.segments and self.segments[-1][0] is cur:
                o, first, m = self.segments[-1]
                self.segments[-1] = (o, first, m + k)
            else:
                self.segments.append((cur, self.fill, k))
            cur.left += k
            self.fill += k
            i += k
            if self.fill == self.batch_size:
                done += self._launch()
        return done

    def _end_tiles(self) -> int:
        return 0  # the partial batch waits for the next slide's tiles (or close)

    def close(self) -> int:
        k = self._launch() if self.fill else 0
        while self.inflight:
            k += self._collect()
        return k

    def _launch(self) -> int:
        """Send the staging buffer to the device and embed it; collect batches until the next buffer is free."""
        import torch

        s, n = self.slot, self.fill
        with torch.cuda.stream(self.copy_stream):
            self.dev_in[s][:n].copy_(self.host_in[s][:n], non_blocking=True)
            self.copied[s].record(self.copy_stream)
        self.stream.wait_event(self.copied[s])
        x = self.dev_in[s][:n].permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW view
        self.host_out[s][:n].copy_(self.fn(x), non_blocking=True)
        self.ready[s].record(self.stream)
        self.inflight.append((s, n, self.segments))
        self.segments = []
        self.slot = (s + 1) % len(self.host_in)
        self.fill = 0
        done = 0
        while any(b[0] == self.slot for b in self.inflight):
            done += self._collect()
        return done

    def _collect(self) -> int:
        s, n, segments = self.inflight.popleft()
        t0 = time.perf_counter()
        self.ready[s].synchronize()
        self.seconds_waiting += time.perf_counter() - t0
        out, rows = self.host_out[s].numpy(), self.rows_of[s]
        for slide, first, m in segments:
            slide.emb[rows[first : first + m]] = out[first : first + m]
            slide.left -= m
            slide.maybe_done()
        return n
