"""The Ray engine: featurize a cohort on a Ray cluster, one actor per GPU (or per CPU node), into one store.

Each actor builds the encoder once and featurizes whole slides through the local engine's own per-slide pipeline
(:class:`~featurize._run._CohortRun`: reader pool, batches, writer), writing each slide's files straight into the
store with the store's contract (atomic files, embeddings last). The driver::

    plan_cohort (every check)  →  resume filter  →  slides by size, largest first
        │                                                  │ two slides in flight per actor, the next one to
        ▼                                                  ▼ whichever actor frees first
    summary, one progress bar  ◄──  SlideResult per slide  ◄──  actor: claim → done? → pipeline → write → release

Claims (:func:`slide2expr.contract.acquire_claim`) make the slide exclusive against every other writer of the store
(other Ray runs, local runs, SLURM shards). An actor lost with its node (or killed) loses its slides in flight: the
driver gives each to another actor, which takes the dead actor's claim over, checks whether the slide was finished
(then it is not written again) and otherwise writes it whole; a slide is retried at most ``max_attempts`` times.
Files a lost actor left half-way are hidden temporaries or an incomplete set without the embeddings file, which
resume never takes for done.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slide2expr.contract import acquire_claim, claim_path, read_claim, s3_settings, store_path
from slide2expr.featurize._cohort import plan_cohort
from slide2expr.featurize._embed import DEFAULT_BATCH, load_embedder
from slide2expr.featurize._executors import default_workers
from slide2expr.featurize._inputs import SlideInput
from slide2expr.featurize._options import FeaturizeOptions, FeaturizeOptionsError
from slide2expr.featurize._run import _CohortRun, _run_config
from slide2expr.featurize._summary import FeaturizeSummary, SlideResult
from slide2expr.featurize._write import skip_if_done

#: slides handed to one actor at a time: one running, one waiting, so an actor never idles between slides
IN_FLIGHT_PER_ACTOR = 2
#: attempts per slide when actors are lost (a slide that fails to read is not retried: it is recorded failed)
MAX_ATTEMPTS = 3
#: seconds to wait for the first worker (or a replacement when every worker is lost): a worker imports torch and
#: builds its encoder, which takes minutes on a busy node or one that installs a runtime environment first
ACTOR_START_TIMEOUT_S = 300.0


class RayEngineError(RuntimeError):
    """The Ray engine cannot run (Ray missing, no cluster at the address, no resources for an actor)."""


@dataclass
class SlideOutcome:
    """What an actor did with one slide: the summary row, tiles embedded, and where it ran."""

    result: SlideResult
    tiles: int = 0
    node: str = ""
    precision: str = ""
    device: str = ""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayEngineError(
            "engine 'ray' needs Ray: pip install 'slide2expr[ray]' (on every node of the cluster)"
        ) from None
    return ray


# ---- the actor -----------------------------------------------------------------------------------------------


class _OneSlideRun(_CohortRun):
    """The local engine's run over one slide, deciding whether to compile for the whole cohort's tiles."""

    cohort_slides = 1

    def _maybe_compile(self, n_tiles: int) -> None:
        todo, self.todo = self.todo, [None] * self.cohort_slides
        try:
            super()._maybe_compile(n_tiles)
        finally:
            self.todo = todo


class SlideWorker:
    """Holds the encoder and featurizes whole slides (a Ray actor; a plain object in tests).

    Parameters
    ----------
    store, options
        As for :func:`featurize_cohort`; ``options.device`` is resolved here, on the worker's node.
    cpus
        CPUs the actor holds (readers beside a GPU: the spare ones).
    n_slides
        Slides of the run, for ``compile='auto'``'s estimate of the run's work.
    env
        Variables to set first (the driver's S3 settings).
    """

    def __init__(
        self,
        store: Any,
        options: FeaturizeOptions,
        *,
        cpus: int,
        n_slides: int,
        claim_ttl_s: float,
        env: dict[str, str] | None = None,
    ) -> None:
        import torch

        from slide2expr.featurize._cohort import CohortPlan
        from slide2expr.featurize._embed import resolve_device

        os.environ.update(env or {})
        device = resolve_device(options.device)
        device_type = device.split(":", 1)[0]
        if device_type == "cpu":
            torch.set_num_threads(max(1, cpus))
            workers = options.workers if options.workers is not None else (0 if cpus <= 2 else 1)
        else:
            workers = (
                options.workers
                if options.workers is not None
                else max(1, min(default_workers("cuda"), cpus - 1))
            )
        batch = options.batch_size or DEFAULT_BATCH.get(device_type, DEFAULT_BATCH["cpu"])
        self.embedder = load_embedder(
            options.encoder,
            weights=options.weights,
            device=device,
            precision=options.precision,
            batch_size=batch,
            input_px=options.input_px,
        )
        plan = CohortPlan(
            store=store_path(store),
            tiling=options.tiling_params,
            encoder=self.embedder.encoder.spec.name,
            device=device,
            batch_size=batch,
            workers=workers,
            force=options.force,
            slides=(),
        )
        self.cfg = _run_config(plan, self.embedder, options.dtype)
        self.options, self.workers, self.device, self.n_slides = options, workers, device, n_slides
        self.claim_ttl_s = claim_ttl_s
        self.node = socket.gethostname()
        self.owner = f"{self.node}:{os.getpid()}"
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ctx = ray.get_runtime_context()
            self.node = f"{self.node}/{ctx.get_node_id()[:8]}"
            if ctx.get_actor_id():
                self.owner = f"ray:{ctx.get_actor_id()}"
        self.current: _OneSlideRun | None = None

    def ready(self) -> dict:
        """Who this worker is: its claim owner, node and device (the driver's handle on it)."""
        return {"owner": self.owner, "node": self.node, "device": self.device, "pid": os.getpid()}

    def config(self):
        """The run's configuration (:class:`~featurize._write.RunConfig`), for the driver's resume filter."""
        return self.cfg

    def status(self) -> tuple[str | None, int]:
        """The slide being embedded and its tiles embedded so far (for the cluster's progress bar)."""
        run = self.current
        return (run.todo[0].slide_id, run.summary.tiles) if run is not None else (None, 0)

    def featurize(self, slide: SlideInput, steal_from: str | None = None) -> SlideOutcome:
        """Claim ``slide``, featurize it unless done (or claimed by a live writer), write it, release the claim."""
        cfg = self.cfg
        sid = slide.slide_id
        path = claim_path(cfg.store, cfg.tiling.name, cfg.encoder_name, sid)
        claim = acquire_claim(path, owner=self.owner, ttl_s=self.claim_ttl_s, steal_from=steal_from)
        if claim is None:
            holder = read_claim(path)
            who = holder.describe() if holder is not None else "another writer"
            return self._outcome(SlideResult(sid, "skipped", note=f"taken by {who}"))
        with claim.kept():
            row = None if self.options.force else skip_if_done(slide, cfg)
            if row is not None and row is not False:
                source = row.column("mpp_source")[0].as_py() if hasattr(row, "column") else None
                return self._outcome(SlideResult(sid, "skipped", mpp_source=source))
            summary = FeaturizeSummary(store=cfg.store, tiling=cfg.tiling.name, encoder=cfg.encoder_name)
            run = _OneSlideRun(
                [slide], cfg=cfg, embedder=self.embedder, summary=summary, compile=self.options.compile
            )
            run.cohort_slides = self.n_slides
            self.current = run
            try:
                run.run(workers=self.workers, progress=False)
            finally:
                self.current = None
        (result,) = summary.results
        return self._outcome(result, tiles=summary.tiles)

    def _outcome(self, result: SlideResult, tiles: int = 0) -> SlideOutcome:
        return SlideOutcome(result, tiles, self.node, self.embedder.precision, self.device)


_REMOTE: dict[int, Any] = {}


def _remote_worker(ray):
    """:class:`SlideWorker` as a Ray actor class: slides one at a time, ``status`` answered beside them."""
    if id(ray) not in _REMOTE:

        class _Worker(SlideWorker):
            @ray.method(concurrency_group="status")
            def status(self) -> tuple[str | None, int]:
                return super().status()

        _Worker.__name__ = _Worker.__qualname__ = "SlideWorker"
        _REMOTE[id(ray)] = ray.remote(concurrency_groups={"status": 1})(_Worker)
    return _REMOTE[id(ray)]


# ---- the driver ----------------------------------------------------------------------------------------------


def slide_cost(slide: SlideInput) -> int:
    """Bytes of a slide's file (and of a same-named folder beside it, as MIRAX keeps its data): the scheduling
    order's estimate of its work."""
    p = Path(slide.path)
    try:
        size = p.stat().st_size
    except OSError:
        return 0
    companion = p.with_suffix("")
    if companion.is_dir():
        size += sum(f.stat().st_size for f in companion.rglob("*") if f.is_file())
    return size


def featurize_cohort_ray(
    slides: Any,
    *,
    store: str | os.PathLike,
    options: FeaturizeOptions | None = None,
    address: str | None = None,
    progress: bool = False,
    max_attempts: int = MAX_ATTEMPTS,
    cpus_per_actor: int | None = None,
    max_actors: int | None = None,
    claim_ttl_s: float | None = None,
) -> FeaturizeSummary:
    """Featurize slides into ``store`` on a Ray cluster; the store equals the local engine's.

    Parameters
    ----------
    slides, store, options, progress
        As for :func:`featurize_cohort` (the slide files and the store must be reachable from every node: a shared
        filesystem or an ``s3://`` store).
    address
        The cluster (``auto``: the one this machine belongs to; ``ray://host:10001``; None: ``options.address``,
        else start Ray here).
    max_attempts
        Tries per slide when the actor running it is lost with its node.
    cpus_per_actor
        CPU-only clusters: CPUs per actor (default: one actor per node, holding all its CPUs). With GPUs: one actor
        per GPU, holding its share of the node's CPUs for readers.
    max_actors
        At most this many actors (default: as many as the cluster holds).
    claim_ttl_s
        Seconds a claim lives without renewal (default ``DEFAULT_TTL_S``).

    Returns
    -------
    FeaturizeSummary
        As the local engine's; ``device`` reads ``ray:<n> actors (<devices>)``; skipped slides include those
        another writer held (the note names it).
    """
    from slide2expr.contract import DEFAULT_TTL_S

    options = FeaturizeOptions() if options is None else options
    address = address if address is not None else options.address
    if options.encoder is not None and not isinstance(options.encoder, str):
        raise FeaturizeOptionsError(
            "engine 'ray' builds the encoder on every worker: give encoder as a registered name, not an object"
        )
    if max_attempts < 1:
        raise FeaturizeOptionsError(f"max_attempts={max_attempts}: at least 1")
    if max_actors is not None and max_actors < 1:
        raise FeaturizeOptionsError(f"max_actors={max_actors}: at least 1")
    # every check the local run makes, except the device, which is the workers' (the driver may have no GPU)
    plan = plan_cohort(slides, store=store, options=dataclasses.replace(options, device="cpu", compile="off"))
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a new instance here, never another Ray found on this machine
        ray.init(
            address=address or "local", include_dashboard=False, logging_level="ERROR", log_to_driver=False
        )
    try:
        return _Scheduler(
            ray,
            plan,
            options,
            max_attempts=max_attempts,
            cpus_per_actor=cpus_per_actor,
            max_actors=max_actors,
            claim_ttl_s=claim_ttl_s or DEFAULT_TTL_S,
        ).run(progress=progress)
    finally:
        if started_here:
            ray.shutdown()


@dataclass
class _ActorState:
    handle: Any
    owner: str = ""
    node: str = ""
    device: str = ""
    in_flight: int = 0
    alive: bool = True


@dataclass
class _Task:
    slide: SlideInput
    attempts: int = 0
    steal_from: str | None = None
    lost_on: list[str] = field(default_factory=list)


class _Scheduler:
    """Creates the actors, hands slides out largest first, retries the slides of lost actors, fills the summary."""

    def __init__(
        self, ray, plan, options: FeaturizeOptions, *, max_attempts, cpus_per_actor, max_actors, claim_ttl_s
    ) -> None:
        self.ray, self.plan, self.options, self.max_actors = ray, plan, options, max_actors
        self.max_attempts, self.cpus_per_actor, self.claim_ttl_s = max_attempts, cpus_per_actor, claim_ttl_s
        self.actors: list[_ActorState] = []
        #: ``featurize`` calls in flight, and ``ready`` calls of actors still starting
        self.pending: dict[Any, tuple[_ActorState, _Task]] = {}
        self.starting: dict[Any, _ActorState] = {}
        self.t_started = time.monotonic()
        self.start_error = ""
        self.replacements = 0
        self.summary = FeaturizeSummary(store=plan.store, tiling=plan.tiling.name, encoder=plan.encoder)

    # actors
    def _actor_specs(self) -> list[dict]:
        """The resources of each actor: one GPU each (with the node's CPUs shared out), or on CPU-only nodes
        ``cpus_per_actor`` CPUs (default: a whole node's); largest first, so each finds a node it fits."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        want_gpu = self.options.device != "cpu"
        specs = []
        for n in nodes:
            res = n.get("Resources", {})
            cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
            if want_gpu and gpus:
                specs += [{"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}] * gpus
            elif cpus:
                per = self.cpus_per_actor or cpus
                specs += [{"num_gpus": 0, "num_cpus": per}] * max(1, cpus // per)
        if not specs:
            raise RayEngineError(
                "the Ray cluster has no CPU or GPU to run a worker on: add nodes with resources"
            )
        if self.options.device.startswith("cuda") and not any(s["num_gpus"] for s in specs):
            raise FeaturizeOptionsError(f"device={self.options.device!r}: the Ray cluster has no GPU")
        specs.sort(key=lambda s: (s["num_gpus"], s["num_cpus"]), reverse=True)
        return specs[: self.max_actors]

    def _start_actors(self, specs: list[dict]) -> None:
        """Start actors; each joins the run once its encoder is built (its ``ready`` answers)."""
        cls = _remote_worker(self.ray)
        for spec in specs:
            handle = cls.options(num_cpus=spec["num_cpus"], num_gpus=spec["num_gpus"], max_restarts=0).remote(
                str(self.plan.store),
                self.options,
                cpus=spec["num_cpus"],
                n_slides=len(self.plan.inputs),
                claim_ttl_s=self.claim_ttl_s,
                env=s3_settings().as_env(),
            )
            st = _ActorState(handle, alive=False)
            self.actors.append(st)
            self.starting[handle.ready.remote()] = st
        self.t_started = time.monotonic()

    def _joined(self, ref) -> None:
        """An actor's ``ready`` answered: it takes slides from now on (or it died starting)."""
        st = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.start_error = _task_error(exc)
            return
        st.owner, st.node, st.device, st.alive = info["owner"], info["node"], info["device"], True

    # the run
    def run(self, *, progress: bool) -> FeaturizeSummary:
        ray = self.ray
        t0 = time.perf_counter()
        self._start_actors(self._actor_specs())
        while not any(st.alive for st in self.actors) and self.starting:
            done, _ = ray.wait(list(self.starting), num_returns=1, timeout=ACTOR_START_TIMEOUT_S)
            if not done:
                break
            self._joined(done[0])
        first = next((st for st in self.actors if st.alive), None)
        if first is None:
            self._stop_actors()
            why = f": {self.start_error}" if self.start_error else ": check the cluster's resources"
            raise RayEngineError(f"no Ray worker started within {ACTOR_START_TIMEOUT_S:.0f} s{why}")
        cfg = ray.get(first.handle.config.remote())
        s = self.summary
        s.store, s.encoder = cfg.store, cfg.encoder_name
        todo = self._resume_filter(cfg)
        queue = deque(_Task(sl) for sl in sorted(todo, key=slide_cost, reverse=True))
        bars = _ClusterProgress(enabled=progress, n_slides=len(todo))
        try:
            self._loop(queue, bars)
        finally:
            bars.close()
            self._stop_actors()
        used = [st for st in self.actors if st.owner]
        s.device = f"ray:{len(used)} actors ({', '.join(sorted({st.device for st in used}))})"
        s.seconds = time.perf_counter() - t0
        order = {sl.slide_id: i for i, sl in enumerate(self.plan.inputs)}
        s.results.sort(key=lambda r: order[r.slide_id])
        return s

    def _stop_actors(self) -> None:
        for st in self.actors:
            self.ray.kill(st.handle, no_restart=True)

    def _resume_filter(self, cfg) -> list[SlideInput]:
        """Slides to hand out: those whose outputs do not match already (all with ``force``)."""
        todo = []
        for sl in self.plan.inputs:
            row = None if self.options.force else skip_if_done(sl, cfg)
            if row is None or row is False:
                todo.append(sl)
            else:
                source = row.column("mpp_source")[0].as_py() if hasattr(row, "column") else None
                self.summary.results.append(SlideResult(sl.slide_id, "skipped", mpp_source=source))
        return todo

    def _loop(self, queue: deque, bars: _ClusterProgress) -> None:
        ray = self.ray
        while queue or self.pending:
            self._dispatch(queue)
            if not self.pending and not self.starting:
                if not self._replace_lost_actors():
                    self._give_up(queue, "every Ray worker was lost and none could be started again")
                    return
                continue
            if self.starting and time.monotonic() - self.t_started > ACTOR_START_TIMEOUT_S:
                for ref, st in list(self.starting.items()):  # never placed: the cluster is full
                    self.ray.kill(st.handle, no_restart=True)
                    del self.starting[ref]
            done, _ = ray.wait([*self.pending, *self.starting], num_returns=1, timeout=1.0)
            if not done:
                bars.poll(self.actors, ray)
                continue
            ref = done[0]
            if ref in self.starting:
                self._joined(ref)
                continue
            self._finished(ref, queue, bars)

    def _finished(self, ref, queue: deque, bars: _ClusterProgress) -> None:
        ray = self.ray
        st, task = self.pending.pop(ref)
        st.in_flight -= 1
        try:
            out: SlideOutcome = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            self._lost(st, task, queue)
            return
        except ray.exceptions.RayTaskError as exc:
            out = SlideOutcome(
                SlideResult(task.slide.slide_id, "failed", error=_task_error(exc)), node=st.node
            )
        if task.lost_on:
            lost = f"retried after its worker was lost on {', '.join(task.lost_on)}"
            out.result.note = f"{out.result.note}; {lost}" if out.result.note else lost
        self.summary.results.append(out.result)
        self.summary.tiles += out.tiles
        if out.precision:
            self.summary.precision = out.precision
        bars.finished(out, st)

    def _dispatch(self, queue: deque) -> None:
        live = [st for st in self.actors if st.alive]
        while queue and live:
            st = min(live, key=lambda a: a.in_flight)
            if st.in_flight >= IN_FLIGHT_PER_ACTOR:
                return
            task = queue.popleft()
            task.attempts += 1
            ref = st.handle.featurize.remote(task.slide, task.steal_from)
            self.pending[ref] = (st, task)
            st.in_flight += 1

    def _lost(self, st: _ActorState, task: _Task, queue: deque) -> None:
        """``st`` died with ``task`` in flight: mark it, and retry the slide on another actor (bounded)."""
        st.alive = False
        task.lost_on.append(st.node)
        if task.attempts >= self.max_attempts:
            self.summary.results.append(
                SlideResult(
                    task.slide.slide_id,
                    "failed",
                    error=f"the Ray worker running it was lost {task.attempts} times (nodes {', '.join(task.lost_on)})",
                )
            )
            return
        task.steal_from = st.owner
        queue.appendleft(task)

    def _replace_lost_actors(self) -> bool:
        """Every actor is lost: start new ones on the nodes alive now (at most ``max_attempts`` times a run);
        True once one has joined."""
        self.replacements += 1
        if self.replacements > self.max_attempts:
            return False
        try:
            specs = self._actor_specs()
        except RayEngineError:
            return False
        self._start_actors(specs)
        while self.starting:
            done, _ = self.ray.wait(list(self.starting), num_returns=1, timeout=ACTOR_START_TIMEOUT_S)
            if not done:
                break
            self._joined(done[0])
            if any(st.alive for st in self.actors):
                return True
        for st in self.starting.values():
            self.ray.kill(st.handle, no_restart=True)
        self.starting.clear()
        return False

    def _give_up(self, queue: deque, why: str) -> None:
        for task in queue:
            self.summary.results.append(SlideResult(task.slide.slide_id, "failed", error=why))
        queue.clear()


def _task_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]


class _ClusterProgress:
    """One rich bar for the cluster: slides done, tiles/s overall, and each node's tiles/s (the slowest flagged)."""

    def __init__(self, *, enabled: bool, n_slides: int) -> None:
        self.p = None
        self.t0 = time.perf_counter()
        self.tiles = 0
        self.node_tiles: dict[str, int] = {}
        self.node_busy: dict[str, float] = {}
        self.live: dict[str, int] = {}
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(
            TextColumn("cluster"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[nodes]}"),
        )
        self.p.start()
        self.task = self.p.add_task("cluster", total=max(n_slides, 1), rate="", nodes="")

    def finished(self, out: SlideOutcome, st: _ActorState) -> None:
        self.tiles += out.tiles
        node = out.node or st.node
        self.node_tiles[node] = self.node_tiles.get(node, 0) + out.tiles
        self.node_busy[node] = self.node_busy.get(node, 0.0) + out.result.seconds
        self.live.pop(st.owner, None)
        if self.p is not None:
            self.p.advance(self.task)
            self._refresh()

    def poll(self, actors: list[_ActorState], ray) -> None:
        """Tiles embedded so far in the slides being run (asked of the actors, never waited on for long)."""
        if self.p is None:
            return
        refs = {a.handle.status.remote(): a for a in actors if a.alive}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.5)
        for ref in ready:
            try:
                _, tiles = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            self.live[refs[ref].owner] = tiles
        self._refresh()

    def _refresh(self) -> None:
        el = max(time.perf_counter() - self.t0, 1e-9)
        rate = (self.tiles + sum(self.live.values())) / el
        per = {
            n: t / max(self.node_busy[n], 1e-9) for n, t in self.node_tiles.items() if self.node_busy.get(n)
        }
        slow = min(per, key=per.get) if len(per) > 1 else None
        nodes = "  ".join(
            f"{n}: {r:.0f}/s{' (slowest)' if n == slow else ''}" for n, r in sorted(per.items())
        )
        self.p.update(self.task, rate=f"{rate:7.1f} tiles/s", nodes=nodes)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
