"""``featurize_cohort``: the public entry point the CLI wraps."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import numpy as np

from featurize._inputs import SlideInput, collect_slides, select_shard
from featurize._pipeline import (
    FeaturizeSummary,
    RunConfig,
    SlidePlan,
    SlideResult,
    TilingParams,
    _stream,
    _Writer,
    clean_stale_tmp,
    is_done,
    make_executor,
    resolve_device,
    usable_cores,
)
from featurize._store import init_store
from featurize._tuning import keep_freed_memory

#: Measured defaults (benchmarks/featurize.py): small CPU batches beat large ones on this kind of CPU.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}


def magnification_to_mpp(magnification: float) -> float:
    """Objective magnification → µm/px by the usual convention (40x = 0.25, 20x = 0.5, 10x = 1.0)."""
    if magnification <= 0:
        raise ValueError(f"--magnification must be positive, got {magnification}")
    return 10.0 / magnification


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
        Tiles per forward pass (default 8 on CPU, 64 on CUDA) and reader processes (default: spare cores; 0 reads
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

    from featurize._inputs import SlideListError

    if magnification is not None:
        mpp = magnification_to_mpp(magnification)
    if mpp is None or not (0.05 <= mpp <= 100):
        raise ValueError(f"--mpp {mpp}: give the tile resolution in µm/px (e.g. 0.5 for 20x)")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype {dtype!r}: use float32 or float16")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision {precision!r}: use auto, bf16 or fp32")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"--min-tissue {min_tissue}: a fraction in [0, 1]")
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
        from featurize.encoders import create_encoder

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
        if not force and is_done(s, cfg):
            clean_stale_tmp(s, cfg)
            summary.results.append(SlideResult(s.slide_id, "skipped"))
        else:
            todo.append(s)
    t_start = time.perf_counter()
    if todo:
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
        )
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
) -> None:
    import torch

    dev_t = torch.device(dev)
    out_dtype = np.float16 if cfg.dtype == "float16" else np.float32
    pin = dev_t.type == "cuda"
    # the executor forks before any thread of ours exists
    executor = make_executor(workers)
    writer = _Writer(cfg)
    bars = _Progress(enabled=progress, n_slides=len(todo))
    chunk_tiles = max(1, min(batch_size, 16))
    inline = workers <= 0
    # reading in the main process: eight chunks at a time on every core, then their batches on every core (4-32
    # chunks per burst measured the same, resnet50-trunc)
    stream = _stream(
        todo,
        executor=executor,
        tiling=cfg.tiling,
        out_px=cfg.out_px,
        chunk_tiles=chunk_tiles,
        max_inflight=8 if inline else max(4, 3 * workers),
        burst=inline,
    )

    def embed(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW view, no copy
        if pin:
            x = x.pin_memory().to(dev_t, non_blocking=True)
        elif dev_t.type != "cpu":
            x = x.to(dev_t)
        return enc(x).float().cpu().numpy()

    autocast = torch.autocast(dev_t.type, dtype=ac) if ac is not None else contextlib.nullcontext()
    plan: SlidePlan | None = None
    emb = None
    filled = 0
    pending: list[np.ndarray] = []
    n_pending = 0
    t_slide = 0.0

    def flush(final: bool) -> None:
        nonlocal filled, pending, n_pending
        while n_pending >= batch_size or (final and n_pending):
            joined = pending[0] if len(pending) == 1 else np.concatenate(pending)
            k = min(batch_size, len(joined))
            out = embed(joined[:k])
            emb[filled : filled + k] = out.astype(out_dtype, copy=False)
            filled += k
            rest = joined[k:]
            pending = [rest] if len(rest) else []
            n_pending = len(rest)
            summary.tiles += k
            bars.advance_tiles(k)

    try:
        with torch.inference_mode(), autocast:
            for ev in stream:
                kind = ev[0]
                if kind == "plan":
                    plan = ev[1]
                    t_slide = time.perf_counter()
                    n = len(plan.grid) if (plan.status == "ok" and plan.grid is not None) else 0
                    emb = np.empty((n, cfg.dim), out_dtype) if plan.status == "ok" else None
                    filled, pending, n_pending = 0, [], 0
                    bars.start_slide(plan.slide.slide_id, n)
                elif kind == "chunk":
                    _, p, _chunk, fut = ev
                    if p.status != "ok":
                        with contextlib.suppress(Exception):
                            fut.result()
                        continue
                    try:
                        tiles, secs = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a slide's read failure fails that slide only
                        p.status, p.error = "failed", _describe(p, exc)
                        emb = None
                        continue
                    p.seconds_read += secs
                    pending.append(tiles)
                    n_pending += len(tiles)
                    flush(final=False)
                else:  # end
                    p = ev[1]
                    if p.status == "ok":
                        flush(final=True)
                    seconds = p.seconds_plan + (time.perf_counter() - t_slide)
                    n_done = filled if p.status == "ok" else 0
                    writer.put(p, emb if p.status == "ok" else None, seconds)
                    summary.results.append(
                        SlideResult(p.slide.slide_id, p.status, n_done, round(seconds, 3), p.error)
                    )
                    bars.end_slide()
                    emb = None
    finally:
        bars.close()
        try:
            writer.close()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _describe(plan: SlidePlan, exc: BaseException) -> str:
    from featurize._reader import SlideError

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
