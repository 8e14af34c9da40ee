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
from slide2expr.featurize._claimed import RunClaims
from slide2expr.featurize._cohort import CohortPlan, plan_cohort
from slide2expr.featurize._compile import compiler_for_run
from slide2expr.featurize._embed import Batches, DeviceMemoryError, Embedder, load_embedder
from slide2expr.featurize._inputs import SlideInput
from slide2expr.featurize._options import FeaturizeOptions
from slide2expr.featurize._plan import SlidePlan
from slide2expr.featurize._pool import ReaderPool, SlideEnded, SlideFailed, SlidePlanned, TilesRead
from slide2expr.featurize._progress import Progress
from slide2expr.featurize._summary import FeaturizeInterrupted, FeaturizeSummary, SlideResult
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
        How to featurize (:class:`FeaturizeOptions`; its ``encoder`` has no default and must be given).
        :func:`plan_cohort` checks them, with the slides and the store, before anything is written.
    progress
        Show rich progress bars (cohort and slide, tiles/s).

    Returns
    -------
    FeaturizeSummary
        Per-slide status (``ok``, ``no_tissue``, ``too_small``, ``failed`` with the reason, ``skipped``), tiles and
        tiles/s, and the slides whose own resolution made ``options.mpp_override`` unused.

    Raises
    ------
    FeaturizeInterrupted
        On Ctrl-C (a ``KeyboardInterrupt``, which it is): the slides finished before it are written and complete,
        the one being embedded is not written at all, and its ``summary`` says which is which; the same call again
        skips the finished slides.

    Writes, per slide: ``slides/<id>.parquet`` (one row), ``tiles/<tiling>/<id>.parquet``,
    ``qc/<tiling>/<id>.png`` and ``embeddings/<tiling>/<encoder>/<id>.parquet`` (``(n_tiles,)`` rows in tile_id
    order, embedding ``dim`` × ``dtype``). A slide whose files match the run is skipped (``options.force`` redoes
    it); a slide that fails is recorded as failed in its ``slides/`` row and the run goes on.
    Each slide is claimed first (``STORE/.claims/<tiling>/<encoder>/<id>.claim``, released at the end): a slide
    another run sharing the store holds is skipped, the note naming that run. ``options.engine='ray'`` runs the
    slides on a Ray cluster instead (:func:`featurize._ray.featurize_cohort_ray`), writing the same store.

    On the CPU this makes glibc keep freed memory for reuse, process-wide (see ``featurize/_tuning.py``; set
    ``SLIDE2EXPR_MALLOPT=0`` to keep glibc's defaults), and importing ``slide2expr.featurize`` before ``torch`` lets
    the in-process readers use every core (``GOMP_SPINCOUNT``).
    """
    import torch

    options = FeaturizeOptions() if options is None else options
    if options.engine == "ray":
        from slide2expr.featurize._ray import featurize_cohort_ray

        return featurize_cohort_ray(slides, store=store, options=options, progress=progress)
    plan = plan_cohort(slides, store=store, options=options)
    summary = FeaturizeSummary(
        store=plan.store,
        tiling=plan.tiling.name,
        encoder=plan.encoder,
        device=plan.device,
        mpp_override=options.mpp_override,
    )
    run: _CohortRun | None = None
    claims: RunClaims | None = None
    t_start = time.perf_counter()
    try:
        embedder = load_embedder(
            options.encoder,
            weights=options.weights,
            device=plan.device,
            precision=options.precision,
            batch_size=plan.batch_size,
            input_px=options.input_px,
        )
        cfg = _run_config(plan, embedder, options.dtype)
        summary.store, summary.encoder, summary.precision = cfg.store, cfg.encoder_name, embedder.precision
        todo: list[SlideInput] = []
        done: list[SlideInput] = []
        for s in plan.inputs:
            row = None if options.force else skip_if_done(s, cfg)
            if row is None:
                todo.append(s)
            else:
                done.append(s)
                source = row.column("mpp_source")[0].as_py()
                summary.results.append(SlideResult(s.slide_id, "skipped", mpp_source=source))
        claims = RunClaims(cfg, force=options.force)
        claims.tidy(done)
        todo = claims.take(todo, summary)
        t_start = time.perf_counter()
        if todo:
            run = _CohortRun(todo, cfg=cfg, embedder=embedder, summary=summary, compile=options.compile)
            try:
                run.run(workers=plan.workers, progress=progress)
            except torch.OutOfMemoryError as exc:
                done = sum(r.status != "skipped" for r in summary.results)
                raise DeviceMemoryError(
                    f"encoder {cfg.encoder_name!r} ran out of {plan.device} memory at batch size "
                    f"{plan.batch_size} ({embedder.precision}): rerun with --batch-size "
                    f"{max(1, plan.batch_size // 2)}; the {done} slide(s) recorded before are kept and resume "
                    "skips them"
                ) from exc
    except KeyboardInterrupt as exc:
        summary.seconds = time.perf_counter() - t_start
        raise _interrupted(summary, plan, run) from exc
    finally:
        if claims is not None:
            claims.release()
    summary.seconds = time.perf_counter() - t_start
    _in_plan_order(summary, plan)
    return summary


def _in_plan_order(summary: FeaturizeSummary, plan: CohortPlan) -> None:
    order = {s.slide_id: i for i, s in enumerate(plan.inputs)}
    summary.results.sort(key=lambda r: order[r.slide_id])


def _interrupted(summary: FeaturizeSummary, plan: CohortPlan, run: _CohortRun | None) -> FeaturizeInterrupted:
    """What a run stopped by Ctrl-C did: the slides written (and those skipped), the ones begun and not written,
    and the rest."""
    written = set(run.writer.finish()) if run is not None and run.writer is not None else set()
    summary.results = [r for r in summary.results if r.status == "skipped" or r.slide_id in written]
    summary.tiles = sum(r.n_tiles for r in summary.results)  # kept: the interrupted slide's tiles are not
    finished = {r.slide_id for r in summary.results}
    begun = run.started if run is not None else []
    summary.interrupted = tuple(s for s in begun if s not in finished)
    summary.not_started = tuple(
        s.slide_id for s in plan.inputs if s.slide_id not in finished and s.slide_id not in begun
    )
    _in_plan_order(summary, plan)
    return FeaturizeInterrupted(summary)


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
        #: slide ids in the order their reading began
        self.started: list[str] = []
        self.writer: SlideWriter | None = None

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
        self.started.append(plan.slide.slide_id)
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
                SlideResult(p.slide.slide_id, p.status, n, round(seconds, 3), p.error, p.note, p.mpp_source)
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
