"""``featurize_cohort``: the public entry point the CLI wraps."""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contract import init_store
from slide2expr.featurize._inputs import SlideInput, collect_slides, select_shard
from slide2expr.featurize._pipeline import (
    _RING,
    FeaturizeSummary,
    RunConfig,
    SlidePlan,
    SlideResult,
    TileRing,
    TilingParams,
    _stream,
    _Writer,
    fork_readers,
    make_executor,
    resolve_device,
    skip_if_done,
    usable_cores,
)
from slide2expr.featurize._tuning import keep_freed_memory

#: Measured defaults (benchmarks/featurize.py): small CPU batches beat large ones on a 2-core CPU; on an H200,
#: 256 beat 64 by 8 % (ViT-L/16, 2,912 against 2,695 tiles/s), 64 % (efficientnet-lite0) and 75 % (ResNet50).
DEFAULT_BATCH = {"cpu": 8, "cuda": 256}

#: ``compile="auto"`` times the run's first eager batches and compiles the encoder when the run's remaining eager
#: encoder work (tiles left × measured seconds per tile) is at least this long. Compiling costs 10–20 s once per
#: process on 2 AVX2 cores and then saves 16–33 % of a CNN's time, so it pays from 40–70 s of eager work with a
#: warm Inductor cache and 60–125 s with a cold one (60 s: at worst ≈ 10 s lost, on a cold cache): resnet50-trunc,
#: 2,328 tiles at 22 tiles/s eager (≈ 105 s) compiles; efficientnet-lite0, one 2,562-tile slide at 78 tiles/s
#: (≈ 33 s) does not. Measuring, not counting tiles, is what makes the choice hold for fast and slow CPUs, small and
#: large tiles.
COMPILE_MIN_EAGER_SECONDS = 60.0
#: eager batches ``auto`` times, after one untimed (allocator growth, oneDNN's first-call set-up), before deciding
COMPILE_PROBE_BATCHES = 4


class DeviceMemoryError(RuntimeError):
    """A batch did not fit in the device's memory; the message says which batch size to try."""


def wants_compile(mode: str, *, device_type: str, precision: str, family: str) -> bool:
    """Whether a run may compile its encoder (``mode``: ``auto``, ``on`` or ``off``); ``auto`` then decides on
    the speed it measures (:class:`_AutoCompile`).

    ``auto`` considers only where compiling was measured to pay: on the CPU, in fp32, CNN encoders. Not on CUDA
    (not measured there), not in bf16 (not measured: this CPU lacks it), not ViTs (not measured on a CPU) and not
    the weight-free encoder (38 s to compile for 8 %)."""
    if mode == "off" or device_type != "cpu":
        return False
    if mode == "on":
        return True
    return precision == "fp32" and family == "cnn"


class _AutoCompile:
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


#: smallest --input-px: below it the CNN encoders' strides leave nothing to pool
MIN_INPUT_PX = 32


def magnification_to_mpp(magnification: float) -> float:
    """Objective magnification → µm/px by the usual convention (40x = 0.25, 20x = 0.5, 10x = 1.0)."""
    if magnification <= 0:
        raise ValueError(f"--magnification must be positive, got {magnification}")
    return 10.0 / magnification


def tile_mpp(mpp: float | None, magnification: float | None) -> float:
    """The tiles' µm/px from ``--mpp`` or ``--magnification`` (which wins); ValueError when it is not plausible."""
    if magnification is not None:
        mpp = magnification_to_mpp(magnification)
    if mpp is None or not (0.05 <= mpp <= 100):
        raise ValueError(f"--mpp {mpp}: give the tile resolution in µm/px (e.g. 0.5 for 20x)")
    return float(mpp)


def default_workers(device: str = "cpu") -> int:
    """Reader processes for ``device`` (``"cpu"`` or ``"cuda"``).

    On CUDA the encoder needs about one core, so every spare core reads (up to 8). On the CPU the encoder's
    threads use every core: a reader process then preempts one of them and the other spins at the next barrier, so
    reading in parallel costs about twice its own CPU time. Reading in the main process instead (0) takes turns with
    the encoder: a burst of chunks on one thread per core, then their batches. Measured on 2 cores (resnet50-trunc,
    40x slide at 20x / 256 px, benchmarks/featurize.py): end-to-end ÷ encoder-only 0.926–0.936 in-process against
    0.837–0.851 with one reader process. So small CPU machines read in-process; larger ones keep one reader
    (not measured here).
    """
    n = usable_cores()
    if device == "cuda":
        return max(1, min(8, n - 1))
    return 0 if n <= 2 else 1


def featurize_cohort(
    slides: Any,
    *,
    store: str | os.PathLike,
    encoder: Any = "stain-texture",
    mpp: float | None = 0.5,
    tile_px: int = 224,
    overlap_px: int = 0,
    min_tissue: float = 0.5,
    magnification: float | None = None,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    dtype: str = "float32",
    precision: str = "auto",
    input_px: int | None = None,
    mpp_override: float | None = None,
    patients: str | os.PathLike | dict | None = None,
    shard: str | tuple[int, int] | None = None,
    force: bool = False,
    progress: bool = False,
    tissue_mpp: float = 8.0,
    compile: str = "auto",
) -> FeaturizeSummary:
    """Featurize slides into ``store``: tissue → tiles at ``mpp`` → encoder → Parquet, resumably.

    Parameters
    ----------
    slides
        Slide files, a directory (searched recursively), a CSV/TSV list (``path`` [, ``slide_id``, ``patient_id``,
        ``mpp``]), a list of those, or a list of :class:`SlideInput`.
    store
        The store directory (created if missing).
    encoder
        A registered encoder name (see ``list_encoders()``) or an :class:`~featurize.encoders.Encoder`.
    mpp, magnification
        Tile resolution in µm/px; ``magnification`` (20 → 0.5 µm/px) is a synonym that wins when given.
    tile_px, overlap_px
        Tile size and overlap between neighbours, in pixels at ``mpp``.
    min_tissue
        Keep tiles whose tissue fraction is at least this.
    weights
        Weights file for ``encoder`` (default: the registry's search: ``$SLIDE2EXPR_WEIGHTS``, packages, hub cache).
    device
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    batch_size, workers
        Tiles per forward pass (default 8 on CPU, 256 on CUDA) and reader processes (default: spare cores; 0 reads
        in the main process, on one thread per core, in bursts between encoder batches).
    dtype
        Stored embedding type, ``float32`` or ``float16``.
    precision
        ``auto`` (bf16 autocast where the device has it and the encoder allows), ``bf16`` or ``fp32``.
    input_px
        Size tiles are resized to for the encoder (default: the encoder's data-config input size).
    mpp_override
        Level-0 µm/px for slides whose metadata lacks it (a CSV ``mpp`` column wins per slide).
    patients
        Slide→patient table (CSV/TSV with ``patient_id`` and ``slide_id`` or ``path``) or a dict.
    shard
        ``"i/n"``: only every n-th slide by sorted slide id, starting at i.
    force
        Redo slides whose outputs already match.
    progress
        Show rich progress bars (cohort and slide, tiles/s).
    compile
        ``auto`` (compile CNN encoders with ``torch.compile`` on the CPU in fp32 when the run's remaining eager
        work, timed on its first batches, is at least :data:`COMPILE_MIN_EAGER_SECONDS`: 16–33 % faster, 10–40 s
        once per process; falls back to eager with a warning where compiling fails), ``on`` (CPU only; a failure to
        compile is an error) or ``off``.

    Returns
    -------
    FeaturizeSummary
        Per-slide status (``ok``, ``no_tissue``, ``failed`` with the reason, ``skipped``), tiles and tiles/s.

    Writes, per slide: ``slides/<id>.parquet`` (one row), ``tiles/<tiling>/<id>.parquet``,
    ``qc/<tiling>/<id>.png`` and ``embeddings/<tiling>/<encoder>/<id>.parquet`` (``(n_tiles,)`` rows in tile_id
    order, embedding ``dim`` × ``dtype``).

    On the CPU this makes glibc keep freed memory for reuse, process-wide (see ``featurize/_tuning.py``; set
    ``SLIDE2EXPR_MALLOPT=0`` to keep glibc's defaults), and ``import featurize`` before ``import torch`` lets the
    in-process readers use every core (``GOMP_SPINCOUNT``).
    """
    import torch

    from slide2expr.featurize._inputs import SlideListError

    mpp = tile_mpp(mpp, magnification)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype {dtype!r}: use float32 or float16")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision {precision!r}: use auto, bf16 or fp32")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"--min-tissue {min_tissue}: a fraction in [0, 1]")
    if compile not in ("auto", "on", "off"):
        raise ValueError(f"--compile {compile!r}: use auto, on or off")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: give at least 1 tile per forward pass")
    if input_px is not None and input_px < MIN_INPUT_PX:
        raise ValueError(
            f"--input-px {input_px}: the encoder's input is at least {MIN_INPUT_PX} px (leave it out for the "
            "encoder's own size)"
        )
    if workers is not None and workers < 0:
        raise ValueError(f"--workers {workers}: 0 (read in this process) or more reader processes")
    if Path(store).exists() and not Path(store).is_dir():
        raise ValueError(f"--store {store} is a file, not a folder: give a new folder or an existing store")
    tiling = TilingParams(
        mpp=float(mpp),
        tile_px=int(tile_px),
        overlap_px=int(overlap_px),
        min_tissue=float(min_tissue),
        tissue_mpp=tissue_mpp,
    )
    if tile_px <= 0 or not 0 <= overlap_px < tile_px:
        raise ValueError(f"--tile {tile_px} / --overlap {overlap_px}: need tile > 0 and 0 <= overlap < tile")
    if isinstance(slides, list) and slides and all(isinstance(s, SlideInput) for s in slides):
        items = sorted(slides, key=lambda s: s.slide_id)
    else:
        items = collect_slides(slides, patients=patients, mpp_override=mpp_override)
    items = select_shard(items, shard)
    dev = resolve_device(device)
    if isinstance(encoder, str):
        from slide2expr.featurize.encoders import create_encoder

        enc = create_encoder(encoder, weights=weights, device=dev)
    else:
        enc = encoder
        dev = str(next(iter(enc.buffers()), torch.empty(0)).device) if device == "auto" else dev
        enc.to(dev)
    name = enc.spec.name
    dim = int(enc.spec.dim)
    if input_px is None:
        h, w = enc.input_size if hasattr(enc, "input_size") else enc.data_config["input_size"][1:]
        if h != w:
            raise SlideListError(f"encoder {name!r} expects non-square {h}x{w} inputs; pass input_px")
        input_px = int(h)
    dev_type = torch.device(dev).type
    if compile == "on" and dev_type != "cpu":
        raise ValueError(
            f"--compile on: compiling is measured and supported on the CPU only, not on {dev}; use --compile off"
        )
    if dev_type == "cpu":
        keep_freed_memory()  # a quarter to three quarters more encoder speed on the CPU: see featurize/_tuning.py
    if precision == "auto":
        ac = enc.autocast_dtype(torch.device(dev)) if hasattr(enc, "autocast_dtype") else None
    else:
        ac = torch.bfloat16 if precision == "bf16" else None
    prec = "bf16" if ac is not None else "fp32"
    if batch_size is None:
        batch_size = DEFAULT_BATCH.get(dev_type, 8)
    if workers is None:
        workers = default_workers(dev_type)
    root = init_store(store)
    cfg = RunConfig(
        store=root,
        tiling=tiling,
        encoder_name=name,
        encoder_meta=enc.metadata(),
        weights_sha256=getattr(enc, "weights_sha256", None),
        dim=dim,
        dtype=dtype,
        out_px=int(input_px),
        precision=prec,
    )
    summary = FeaturizeSummary(store=root, tiling=tiling.name, encoder=name, device=dev, precision=prec)
    todo: list[SlideInput] = []
    for s in items:
        if not force and skip_if_done(s, cfg):
            summary.results.append(SlideResult(s.slide_id, "skipped"))
        else:
            todo.append(s)
    t_start = time.perf_counter()
    if todo:
        try:
            _run(
                todo,
                cfg=cfg,
                enc=enc,
                dev=dev,
                ac=ac,
                batch_size=batch_size,
                workers=workers,
                summary=summary,
                progress=progress,
                compile=compile,
            )
        except torch.OutOfMemoryError as exc:
            done = sum(r.status != "skipped" for r in summary.results)
            raise DeviceMemoryError(
                f"encoder {name!r} ran out of {dev} memory at batch size {batch_size} ({prec}): rerun with "
                f"--batch-size {max(1, batch_size // 2)}; the {done} slide(s) recorded before are kept and resume "
                f"skips them"
            ) from exc
    summary.seconds = time.perf_counter() - t_start
    order = {s.slide_id: i for i, s in enumerate(items)}
    summary.results.sort(key=lambda r: order[r.slide_id])
    return summary


def _run(
    todo: list[SlideInput],
    *,
    cfg: RunConfig,
    enc,
    dev: str,
    ac,
    batch_size: int,
    workers: int,
    summary: FeaturizeSummary,
    progress: bool,
    compile: str = "off",
) -> None:
    import torch

    dev_t = torch.device(dev)
    out_dtype = np.float16 if cfg.dtype == "float16" else np.float32
    # tiles per read (a row run, or a block of 4 rows for reader processes): at most 16 on a CPU, 32 beside a GPU
    # (fewer hand-overs per tile)
    chunk_tiles = max(1, min(batch_size, 32 if dev_t.type == "cuda" else 16))
    inline = workers <= 0
    max_inflight = 8 if inline else max(4, 3 * workers)
    # reader processes hand tiles over in shared memory (made before they fork, so they inherit it)
    ring = None
    if not inline and fork_readers():
        ring = TileRing(max_inflight + 1, chunk_tiles, cfg.out_px)
        _RING[:] = [ring]
    # the executor forks before any thread of ours exists
    executor = make_executor(workers)
    writer = _Writer(cfg)
    bars = _Progress(enabled=progress, n_slides=len(todo))
    # reading in the main process: eight chunks at a time on every core, then their batches on every core (4-32
    # chunks per burst measured the same, resnet50-trunc)
    stream = _stream(
        todo,
        executor=executor,
        tiling=cfg.tiling,
        out_px=cfg.out_px,
        chunk_tiles=chunk_tiles,
        max_inflight=max_inflight,
        plan_ahead=1 if inline else 2,
        burst=inline,
        ring=ring,
        # reader processes do not share decoded JPEG tiles: blocks of rows keep those rows' tiles in one process
        blocks=not inline,
    )
    if dev_t.type == "cuda":
        batches: _Batches = _CudaBatches(enc, dev_t, batch_size, cfg.out_px, cfg.dim)
    else:
        batches = _Batches(enc, dev_t, batch_size, cfg.out_px)

    # set at the first slide with tiles, where the run may compile
    compiler: _AutoCompile | None = None
    decided = False

    def maybe_compile(n_tiles: int) -> None:
        nonlocal compiler
        family = getattr(getattr(enc, "spec", None), "family", "")
        if not wants_compile(compile, device_type=dev_t.type, precision=cfg.precision, family=family):
            return
        if not hasattr(enc, "compiled"):
            if compile == "on":
                raise ValueError(
                    f"--compile on: encoder {type(enc).__name__} has no compiled form; use --compile off"
                )
            return
        # the first slide's tiles × slides estimates the run
        compiler = _AutoCompile(enc, batch_size, n_tiles * len(todo), always=compile == "on")
        batches.fn = compiler

    def advance(k: int) -> None:
        summary.tiles += k
        bars.advance_tiles(k)

    autocast = torch.autocast(dev_t.type, dtype=ac) if ac is not None else contextlib.nullcontext()

    def finished(p: SlidePlan, t_slide: float) -> Callable[[np.ndarray | None], None]:
        def done(emb: np.ndarray | None) -> None:
            seconds = p.seconds_plan + (time.perf_counter() - t_slide)
            # a slide whose batches were compiled from some point on counts as compiled
            cfg.compiled = compiler is not None and compiler.in_use is not None
            emb = emb if p.status == "ok" else None
            writer.put(p, emb, seconds)
            n = len(emb) if emb is not None else 0
            summary.results.append(
                SlideResult(p.slide.slide_id, p.status, n, round(seconds, 3), p.error, note=p.note)
            )
            bars.end_slide()

        return done

    t_slide = 0.0
    try:
        with torch.inference_mode(), autocast:
            for ev in stream:
                kind = ev[0]
                if kind == "plan":
                    plan = ev[1]
                    t_slide = time.perf_counter()
                    n = len(plan.grid) if (plan.status == "ok" and plan.grid is not None) else 0
                    if plan.status == "ok":
                        if not decided:
                            decided = True
                            maybe_compile(n)
                        batches.start(np.empty((n, cfg.dim), out_dtype))
                    bars.start_slide(plan.slide.slide_id, n)
                elif kind == "chunk":
                    _, p, chunk, fut = ev
                    if p.status != "ok":
                        with contextlib.suppress(Exception):
                            fut.result()
                        continue
                    t_wait = time.perf_counter()
                    try:
                        tiles, secs = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a slide's read failure fails that slide only
                        p.status, p.error = "failed", _describe(p, exc)
                        batches.drop()
                        continue
                    p.seconds_read += secs
                    summary.seconds_waiting_tiles += time.perf_counter() - t_wait
                    advance(batches.add(tiles, chunk.rows))
                else:  # end
                    p = ev[1]
                    if p.status == "ok":
                        advance(batches.end(finished(p, t_slide)))
                    else:
                        finished(p, t_slide)(None)
            advance(batches.close())
    finally:
        summary.seconds_waiting_device = batches.seconds_waiting
        summary.seconds_encoding = batches.seconds_encoding
        if compiler is not None and compiler.in_use is not None:
            summary.compiled = True
            # 0: an earlier run in the process compiled it
            summary.seconds_compile = compiler.in_use.seconds_compile if compiler.compiles_here else 0.0
        bars.close()
        try:
            writer.close()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            if ring is not None:
                _RING.clear()
                ring.close()


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


class _Batches:
    """Gathers tiles into batches of ``batch_size`` and embeds each when full, synchronously, a slide at a time
    (the CPU encoder uses every core, so nothing would overlap it).

    The protocol, shared with :class:`_CudaBatches`: :meth:`start` a slide with its embedding array, :meth:`add`
    its tiles, then :meth:`end` it with a callback that receives the filled array once every tile is embedded
    (:meth:`drop` instead, for a slide that failed); :meth:`close` after the last slide. ``add``, ``end`` and
    ``close`` return the number of tiles embedded during the call."""

    def __init__(self, enc, dev, batch_size: int, out_px: int) -> None:
        self.enc, self.dev, self.batch_size = enc, dev, batch_size
        #: what embeds a batch: the encoder, or its compiled form (see ``featurize_cohort(compile=)``)
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


class _CudaBatches(_Batches):
    """Batches on a CUDA device, overlapped with the host and across slides.

    Tiles are copied once into a pinned staging buffer, moved to the device on a copy stream while the previous
    batch runs, embedded, and copied back without waiting; the host gathers batch k+1 while the device embeds
    batch k and collects batch k's result only when its buffers are needed again. A batch may hold the end of one
    slide and the start of the next (no half-empty batch, no idle device at slide boundaries); a slide's callback
    runs when its last batch is collected.

    ``depth`` batches may be in flight; each owns a pinned input buffer, a device input buffer and a pinned output
    buffer."""

    def __init__(self, enc, dev, batch_size: int, out_px: int, dim: int, depth: int = 2) -> None:
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


def _describe(plan: SlidePlan, exc: BaseException) -> str:
    from slide2expr.featurize._reader import SlideError

    msg = str(exc)
    if isinstance(exc, SlideError):
        return msg
    return f"{plan.slide.slide_id}: {type(exc).__name__}: {msg}"


class _Progress:
    """Two rich bars (cohort: slides; slide: tiles with tiles/s), or nothing when disabled."""

    def __init__(self, *, enabled: bool, n_slides: int) -> None:
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.p.start()
        self.cohort = self.p.add_task("cohort", total=n_slides, rate="")
        self.slide = self.p.add_task("slide", total=0, rate="")
        self.t0 = time.perf_counter()
        self.n = 0

    def start_slide(self, slide_id: str, n_tiles: int) -> None:
        if self.p is not None:
            self.p.reset(self.slide, total=max(n_tiles, 1), description=f"{slide_id}", rate="")
            self.ts = time.perf_counter()

    def advance_tiles(self, k: int) -> None:
        if self.p is not None:
            self.n += k
            el = time.perf_counter() - self.ts
            task = self.p.tasks[self.slide]
            rate = (task.completed + k) / el if el > 0 else 0.0
            self.p.update(self.slide, advance=k, rate=f"{rate:7.1f} tiles/s")
            total = self.n / max(time.perf_counter() - self.t0, 1e-9)
            self.p.update(self.cohort, rate=f"{total:7.1f} tiles/s")

    def end_slide(self) -> None:
        if self.p is not None:
            self.p.advance(self.cohort)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
