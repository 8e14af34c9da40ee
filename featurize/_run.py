"""``featurize_cohort``: plan the cohort, load the encoder, resume, then read, embed and write slide by slide.

Data flow of a run::

    ReaderPool (reader processes or threads)     main thread                       SlideWriter (a thread)
    plan slide i+1, read chunks of slide i  ─►  uint8 batches → encoder  ─► queue ─► slides/, tiles/, qc/,
                                                (bf16 autocast, channels_last)        embeddings/ (last)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np

from slide2expr.contract import init_store
from slide2expr.featurize._cohort import CohortPlan, plan_cohort
from slide2expr.featurize._compile import compiler_for_run
from slide2expr.featurize._embed import Batches, DeviceMemoryError, Embedder, load_embedder
from slide2expr.featurize._inputs import SlideInput
from slide2expr.featurize._options import FeaturizeOptions
from slide2expr.featurize._plan import SlidePlan
from slide2expr.featurize._pool import ReaderPool, SlideEnded, SlideFailed, SlidePlanned, TilesRead
from slide2expr.featurize._progress import Progress
from slide2expr.featurize._summary import FeaturizeSummary, SlideResult
from slide2expr.featurize._write import RunConfig, SlideWriter, skip_if_done

#: tiles per read at most (a row run, or a block of rows in a reader process): a batch's worth on a CPU, more beside
#: a GPU (fewer hand-overs per tile)
CHUNK_TILES = {"cpu": 16, "cuda": 32}


def featurize_cohort(
    slides: Any,
    *,
    store: str | os.PathLike,
    options: FeaturizeOptions | None = None,
    progress: bool = False,
) -> FeaturizeSummary:
    """Featurize slides into ``store``: tissue → tiles → encoder → Parquet, resumably.

    Parameters
    ----------
    slides
        Slide files, a directory (searched recursively), a CSV/TSV list (``path`` [, ``slide_id``, ``patient_id``,
        ``mpp``]), a list of those, or a list of :class:`SlideInput`.
    store
        The store directory (created if missing).
    options
        How to featurize (:class:`FeaturizeOptions`; default: its defaults). :func:`plan_cohort` checks them, with
        the slides and the store, before anything is written.
    progress
        Show rich progress bars (cohort and slide, tiles/s).

    Returns
    -------
    FeaturizeSummary
        Per-slide status (``ok``, ``no_tissue``, ``failed`` with the reason, ``skipped``), tiles and tiles/s.

    Writes, per slide: ``slides/<id>.parquet`` (one row), ``tiles/<tiling>/<id>.parquet``,
    ``qc/<tiling>/<id>.png`` and ``embeddings/<tiling>/<encoder>/<id>.parquet`` (``(n_tiles,)`` rows in tile_id
    order, embedding ``dim`` × ``dtype``). A slide whose files match the run is skipped (``options.force`` redoes
    it); a slide that fails is recorded as failed in its ``slides/`` row and the run goes on.

    On the CPU this makes glibc keep freed memory for reuse, process-wide (see ``featurize/_tuning.py``; set
    ``SLIDE2EXPR_MALLOPT=0`` to keep glibc's defaults), and importing ``slide2expr.featurize`` before ``torch`` lets
    the in-process readers use every core (``GOMP_SPINCOUNT``).
    """
    import torch

    options = FeaturizeOptions() if options is None else options
    plan = plan_cohort(slides, store=store, options=options)
    embedder = load_embedder(
        options.encoder,
        weights=options.weights,
        device=plan.device,
        precision=options.precision,
        batch_size=plan.batch_size,
        input_px=options.input_px,
    )
    cfg = _run_config(plan, embedder, options.dtype)
    summary = FeaturizeSummary(
        store=cfg.store,
        tiling=plan.tiling.name,
        encoder=cfg.encoder_name,
        device=plan.device,
        precision=embedder.precision,
    )
    todo: list[SlideInput] = []
    for s in plan.inputs:
        if not options.force and skip_if_done(s, cfg):
            summary.results.append(SlideResult(s.slide_id, "skipped"))
        else:
            todo.append(s)
    t_start = time.perf_counter()
    if todo:
        try:
            _CohortRun(todo, cfg=cfg, embedder=embedder, summary=summary, compile=options.compile).run(
                workers=plan.workers, progress=progress
            )
        except torch.OutOfMemoryError as exc:
            done = sum(r.status != "skipped" for r in summary.results)
            raise DeviceMemoryError(
                f"encoder {cfg.encoder_name!r} ran out of {plan.device} memory at batch size {plan.batch_size} "
                f"({embedder.precision}): rerun with --batch-size {max(1, plan.batch_size // 2)}; the {done} "
                "slide(s) recorded before are kept and resume skips them"
            ) from exc
    summary.seconds = time.perf_counter() - t_start
    order = {s.slide_id: i for i, s in enumerate(plan.inputs)}
    summary.results.sort(key=lambda r: order[r.slide_id])
    return summary


def _run_config(plan: CohortPlan, embedder: Embedder, dtype: str) -> RunConfig:
    """The run's configuration, once its store exists (the store is created here)."""
    enc = embedder.encoder
    return RunConfig(
        store=init_store(plan.store),
        tiling=plan.tiling,
        encoder_name=enc.spec.name,
        encoder_meta=enc.metadata(),
        weights_sha256=getattr(enc, "weights_sha256", None),
        dim=int(enc.spec.dim),
        dtype=dtype,
        out_px=embedder.input_px,
        precision=embedder.precision,
    )


class _CohortRun:
    """The slides of a run that are not skipped: read by a :class:`ReaderPool`, embedded in batches, written by a
    :class:`SlideWriter`; the summary filled in as slides finish."""

    def __init__(
        self,
        todo: list[SlideInput],
        *,
        cfg: RunConfig,
        embedder: Embedder,
        summary: FeaturizeSummary,
        compile: str,
    ) -> None:
        self.todo, self.cfg, self.embedder, self.summary, self.compile = todo, cfg, embedder, summary, compile
        self.out_dtype = np.float16 if cfg.dtype == "float16" else np.float32
        #: set at the first slide with tiles, where the run may compile its encoder
        self.compiler = None
        self.decided = False
        self.t_slide = 0.0

    def run(self, *, workers: int, progress: bool) -> None:
        import torch

        emb = self.embedder
        chunk_tiles = max(1, min(emb.batch_size, CHUNK_TILES.get(emb.device_type, CHUNK_TILES["cpu"])))
        with ExitStack() as stack:
            # the pool starts its reader processes first, before the writer's and the progress bars' threads exist
            pool = stack.enter_context(
                ReaderPool(
                    tiling=self.cfg.tiling, out_px=self.cfg.out_px, workers=workers, chunk_tiles=chunk_tiles
                )
            )
            self.writer = SlideWriter(self.cfg)
            stack.callback(self.writer.close)
            self.bars = Progress(enabled=progress, n_slides=len(self.todo))
            stack.callback(self.bars.close)
            self.batches = emb.batches()
            try:
                with torch.inference_mode(), emb.autocast_context():
                    for event in pool.events(self.todo):
                        self._on(event)
                    self._advance(self.batches.close())
            finally:
                self._record_timings(pool, self.batches)

    def _on(self, event) -> None:
        if isinstance(event, TilesRead):
            self._advance(self.batches.add(event.tiles, event.rows))
        elif isinstance(event, SlidePlanned):
            self._start(event.plan)
        elif isinstance(event, SlideFailed):
            self.batches.drop()
        elif isinstance(event, SlideEnded):
            p = event.plan
            if p.status == "ok":
                self._advance(self.batches.end(self._finished(p)))
            else:
                self._finished(p)(None)

    def _start(self, plan: SlidePlan) -> None:
        self.t_slide = time.perf_counter()
        n = len(plan.grid) if (plan.status == "ok" and plan.grid is not None) else 0
        if plan.status == "ok":
            if not self.decided:
                self.decided = True
                self._maybe_compile(n)
            self.batches.start(np.empty((n, self.cfg.dim), self.out_dtype))
        self.bars.start_slide(plan.slide.slide_id, n)

    def _maybe_compile(self, n_tiles: int) -> None:
        # the first slide's tiles × slides estimates the run
        emb = self.embedder
        self.compiler = compiler_for_run(
            emb.encoder,
            self.compile,
            device_type=emb.device_type,
            precision=self.cfg.precision,
            batch_size=emb.batch_size,
            est_tiles=n_tiles * len(self.todo),
        )
        if self.compiler is not None:
            self.batches.fn = self.compiler

    def _advance(self, k: int) -> None:
        self.summary.tiles += k
        self.bars.advance_tiles(k)

    def _finished(self, p: SlidePlan) -> Callable[[np.ndarray | None], None]:
        t_slide = self.t_slide

        def done(emb: np.ndarray | None) -> None:
            seconds = p.seconds_plan + (time.perf_counter() - t_slide)
            # a slide whose batches were compiled from some point on counts as compiled
            self.cfg.compiled = self.compiler is not None and self.compiler.in_use is not None
            emb = emb if p.status == "ok" else None
            self.writer.put(p, emb, seconds)
            n = len(emb) if emb is not None else 0
            self.summary.results.append(
                SlideResult(p.slide.slide_id, p.status, n, round(seconds, 3), p.error, note=p.note)
            )
            self.bars.end_slide()

        return done

    def _record_timings(self, pool: ReaderPool, batches: Batches) -> None:
        s = self.summary
        s.seconds_waiting_tiles = pool.seconds_waiting
        s.seconds_waiting_device = batches.seconds_waiting
        s.seconds_encoding = batches.seconds_encoding
        c = self.compiler
        if c is not None and c.in_use is not None:
            s.compiled = True
            # 0: an earlier run in the process compiled it
            s.seconds_compile = c.in_use.seconds_compile if c.compiles_here else 0.0
