"""The fold loop's inputs: bags in memory, or a cohort read on access (:class:`sql.LazyCohort`) with memory bounded.

:func:`fold_inputs` gives :func:`~slide2expr.regress.cross_fit` one object that fits a model on a fold's training
bags and predicts its held-out bags. On a :class:`~slide2expr.contract.Cohort` that is the bags themselves. On a
:class:`~slide2expr.sql.LazyCohort` nothing holds the cohort's features:

- the pooled baselines (``lgbm``, ``ridge``) are fitted on :func:`sql.pooled_features` (every bag's mean, max, min
  and std from one streaming pass over the store, cached beside it; fold-independent), through the same pipeline
  with its ``BagPooler`` step reading those columns (:class:`PooledColumns`); the fitted model gets its
  ``BagPooler`` back, so it takes bags like one fitted in memory. The floor (``mean``) needs no features;
- an attention network with a principal-axes projection (``pca_components``, the ``mil`` default) has its
  :class:`~slide2expr.regress.TileProjection` fitted on a bounded random sample of the fold's training tiles only
  (:data:`~slide2expr.regress._projection.TILE_SAMPLE_ROWS` rows, in proportion to bag size, read row by row), and
  every bag is read once per fold and kept projected (``n_tiles × pca_components`` float32); the network is fitted
  on the projected bags and the fitted model gets the projection, so it also takes raw bags. The projection is
  fitted once per outer fold (in memory, each inner fit of ``NestedMIL`` fits its own), so the two paths agree in
  distribution, not bit for bit. A network without ``pca_components`` sees every tile's full features at each step
  and is refused (:class:`StreamingError`).

A fold's projection depends on its training bags, the plan's seed and the projection's parameters, never on the
targets, so a fold's fit and its null (the same fold on permuted targets) use the same projected bags. Reading and
projecting every bag is a full read of the store, so ``compare`` keeps each fold's projection and projected bags on
disk as they are made (a *spill*: one float32 ``.npy`` of the concatenated bags, and the fitted projection with the
bags' offsets in a ``.joblib``, each written atomically) and maps them back for the next use of the same fold
instead of reading the store again. Memory still holds one fold's projected bags. A spill's name is a hash of
everything the projected bags depend on (fold, projection parameters, seed, the kept and training bags and their
tile counts, the cohort's identity and the run's settings' fingerprint), so it is used only where it is the same.
With a run directory the spills live in ``RUN/partial/projected/`` (``RunLayout.partial_projected``): an
interrupted run resumes with them, and they go with ``partial/`` when the run is written; without one, in a
temporary folder the inputs own and remove on :meth:`StreamingInputs.close`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.pipeline import Pipeline

from slide2expr.regress._baselines import BagPooler, MeanRegressor, PooledStatsSearch
from slide2expr.regress._checks import check_groups, check_targets
from slide2expr.regress._harness import CompareError, fit_model
from slide2expr.regress._mil import _TorchBagRegressor
from slide2expr.regress._models import make_model, model_info
from slide2expr.regress._projection import TILE_SAMPLE_ROWS

#: Bags read and projected at once.
READ_THREADS = 2
#: The statistics a streaming pass gives, in :func:`sql.pooled_features`' column order.
POOLED_STATS = ("mean", "max", "min", "std")


class StreamingError(CompareError):
    """A model that cannot be fitted on a cohort read on access; the message says what to do instead."""


class SpillWarning(UserWarning):
    """A fold's projected bags could not be kept on disk; the message says where and what it costs."""


def is_lazy(cohort) -> bool:
    """Whether ``cohort`` reads its bags on access (a :class:`sql.LazyCohort`)."""
    from slide2expr.sql import LazyCohort

    return isinstance(cohort, LazyCohort)


def fold_inputs(cohort, plan, *, spill: bool | str | os.PathLike = False):
    """:class:`InMemoryInputs` or, for a :class:`sql.LazyCohort`, :class:`StreamingInputs` of ``plan``'s bags.

    ``spill`` (read on access only): False keeps no fold's projected bags on disk, a folder keeps them there (left
    for its owner to remove), True in a temporary folder removed on ``close()``. Either object is a context manager
    that closes itself.
    """
    return StreamingInputs(cohort, plan, spill=spill) if is_lazy(cohort) else InMemoryInputs(cohort, plan)


class InMemoryInputs:
    """The kept bags of an in-memory cohort; fits and predicts on them as given."""

    def __init__(self, cohort, plan):
        all_bags = cohort.bags
        self.bags = [all_bags[i] for i in plan.keep]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release."""

    def fit(self, est, fold: int, rows, y, groups, *, name: str, params) -> None:
        fit_model(est, [self.bags[i] for i in rows], y, groups, name=name, params=params)

    def predict(self, est, fold: int, rows) -> np.ndarray:
        return est.predict([self.bags[i] for i in rows])

    def predict_tiles(self, est, fold: int, rows) -> list:
        return est.predict_tiles([self.bags[i] for i in rows])

    def finish(self, est, fold: int):
        """The fitted estimator as saved (unchanged here)."""
        return est


class PooledColumns(TransformerMixin, BaseEstimator):
    """Rows of pooled features of every statistic in :data:`POOLED_STATS` (``(n_bags, 4 × dim)``) → the columns of
    ``stats``, grouped by statistic as ``BagPooler`` gives them (``(n_bags, len(stats) × dim)`` float64).

    >>> rows = np.arange(8.0)[None]  # mean 0 1, max 2 3, min 4 5, std 6 7 of a 2-d bag
    >>> PooledColumns(stats=("mean", "std"), dim=2).fit(rows).transform(rows).tolist()
    [[0.0, 1.0, 6.0, 7.0]]
    """

    def __init__(self, stats: tuple[str, ...] = ("mean",), dim: int = 1):
        self.stats = stats
        self.dim = dim

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        d = int(self.dim)
        return np.hstack(
            [X[:, POOLED_STATS.index(s) * d : (POOLED_STATS.index(s) + 1) * d] for s in self.stats]
        )


def _pooled_pipeline(est, name: str):
    """The pooled pipeline inside ``est`` (itself, or a :class:`PooledStatsSearch`'s), or None."""
    pipe = est.estimator if isinstance(est, PooledStatsSearch) else est
    if isinstance(pipe, Pipeline) and isinstance(pipe.steps[0][1], BagPooler):
        options = est.options if isinstance(est, PooledStatsSearch) else [pipe.steps[0][1].stats]
        bad = sorted({s for o in options for s in o if s not in POOLED_STATS})
        if bad:
            raise StreamingError(
                f"model {name!r} pools {', '.join(bad)}, which a streaming pass does not give: on a cohort read "
                f"on access use the statistics {', '.join(POOLED_STATS)} (--params), or load it in memory "
                "(a larger max_memory_gb, --max-memory-gb)"
            )
        return pipe
    return None


def _on_columns(pipe: Pipeline, dim: int) -> Pipeline:
    out = clone(pipe)
    out.steps[0] = ("pool", PooledColumns(stats=tuple(pipe.steps[0][1].stats), dim=dim))
    return out


def _with_bag_pooler(pipe: Pipeline, dim: int) -> None:
    """Put back a fitted ``BagPooler`` of the same statistics in place of :class:`PooledColumns`."""
    pooler = BagPooler(stats=tuple(pipe.steps[0][1].stats))
    pooler.n_features_in_ = dim
    pipe.steps[0] = ("pool", pooler)


def fit_stats_search(search: PooledStatsSearch, X: np.ndarray, y, groups, *, dim: int) -> PooledStatsSearch:
    """:meth:`PooledStatsSearch.fit` on pooled rows ``X`` (``(n_bags, 4 × dim)``): the same inner folds, criterion
    and refit, the pipeline reading ``X``'s columns."""
    Y, was_1d = check_targets(y, len(X), who="PooledStatsSearch")
    search.search(_on_columns(search.estimator, dim), X, Y, check_groups(groups, len(X)), was_1d=was_1d)
    search.n_features_in_ = dim
    return search


def _network(est):
    """The torch network template inside ``est`` (through ``estimator``), or None."""
    path = ""
    while not isinstance(est, _TorchBagRegressor):
        if not hasattr(est, "estimator"):
            return None, ""
        est, path = est.estimator, path + "estimator__"
    return est, path


def _fitted(est):
    """Every fitted estimator inside ``est``, ``est`` first."""
    yield est
    for attr in ("estimators_", "best_estimator_"):
        inner = getattr(est, attr, None)
        for e in inner if isinstance(inner, list | tuple) else ([] if inner is None else [inner]):
            yield from _fitted(e)
    for members in getattr(est, "members_", {}).values():
        for e, _ in members:
            yield from _fitted(e)


class StreamingInputs:
    """The kept bags of a :class:`sql.LazyCohort`, fitted and predicted as the module doc says; memory holds the
    pooled rows, one fold's projected bags and one bag being read.

    ``spill``: False, a folder, or True (a temporary folder removed on :meth:`close`), as :func:`fold_inputs` says.
    :attr:`store_passes` counts the full reads of the store that projected every kept bag; :attr:`spill_loads` the
    folds' projected bags mapped back from the spill instead.
    """

    def __init__(self, cohort, plan, *, spill: bool | str | os.PathLike = False):
        self.cohort, self.keep, self.seed = cohort, np.asarray(plan.keep), int(plan.seed)
        self.dim = int(cohort.dim)
        self._pooled: np.ndarray | None = None
        self._fold: tuple | None = None  # (key, projection, projected kept bags)
        self._restore: dict[int, dict] = {}
        settings = getattr(plan, "settings", None)
        self._fingerprint = None if settings is None else settings.get("fingerprint")
        self.store_passes = 0
        self.spill_loads = 0
        self._temporary = spill is True  # a folder of its own, made at the first spill
        self._cleanup = None
        self.spill_dir: Path | None = Path(spill) if spill and spill is not True else None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the fold held in memory and remove a temporary spill folder (a given folder stays)."""
        self._fold = None
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = self.spill_dir = None

    @property
    def pooled(self) -> np.ndarray:
        """``(n_kept, 4 × dim)`` float64 pooled rows of the kept bags (:func:`sql.pooled_features`)."""
        if self._pooled is None:
            from slide2expr.sql import pooled_features

            c = self.cohort
            pf = pooled_features(c.store, encoder=c.encoder, tiling=c.tiling, stats=POOLED_STATS, by=c.by)
            where = {b: i for i, b in enumerate(pf.bag_ids)}
            missing = [str(b) for b in c.bag_ids[self.keep] if str(b) not in where]
            if missing:
                raise StreamingError(
                    f"pooled features lack bag(s) {', '.join(missing[:10])}: the store changed"
                )
            self._pooled = pf.features[[where[str(b)] for b in c.bag_ids[self.keep]]]
        return self._pooled

    def _kind(self, est, name: str) -> str:
        if isinstance(est, MeanRegressor):
            return "mean"
        if _pooled_pipeline(est, name) is not None:
            return "pooled"
        net, _ = _network(est)
        if net is not None and net._tile_projection().pca_components:
            return "network"
        raise StreamingError(
            f"model {name!r} reads every tile's {self.dim} features at each step, which a cohort read on access "
            "cannot hold: give it pca_components (e.g. --params '{\""
            + name
            + '": {"pca_components": 16}}\'), '
            "or load the cohort in memory (a larger max_memory_gb, --max-memory-gb)"
        )

    def projection(self, est, fold: int, rows: np.ndarray):
        """``(projection, projected kept bags)`` of ``fold``: the network's :class:`TileProjection` fitted on a
        bounded random sample of the training bags ``rows`` (its ``sample_bags_`` names them), and every kept bag
        projected (read once, :data:`READ_THREADS` bags at a time), or both mapped back from the spill of an
        earlier call with the same fold, parameters and rows (:meth:`spill_key`)."""
        net, _ = _network(est)
        proj = net._tile_projection()
        key = (fold, tuple(sorted(proj.get_params().items())), np.asarray(rows).tobytes())
        if self._fold is not None and self._fold[0] == key:
            return self._fold[1], self._fold[2]
        self._fold = None  # one fold's projected bags at a time
        spilling = self.spill_dir is not None or self._temporary
        digest = self.spill_key(fold, key[1], rows) if spilling else None
        loaded = None if digest is None else self._load_spill(fold, digest)
        if loaded is not None:
            self.spill_loads += 1
            self._fold = (key, *loaded)
            return loaded
        rng = np.random.default_rng([self.seed, fold + 1])  # fold -1: a model trained on every bag
        index = self.keep[rows]
        lengths = self.cohort.n_tiles[index]
        total, cap = int(lengths.sum()), int(proj.max_rows)
        per = lengths if total <= cap else np.maximum(1, np.round(lengths / total * cap).astype(int))
        sample = [self.cohort.sample(int(i), int(n), rng) for i, n in zip(index, per, strict=True)]
        proj.fit(sample, rng=rng)
        proj.sample_bags_ = np.asarray(self.cohort.bag_ids[index], dtype=object)
        del sample
        with ThreadPoolExecutor(READ_THREADS) as pool:  # reads release the GIL; one bag per thread in memory
            projected = list(pool.map(lambda i: proj.transform([self.cohort[int(i)]])[0], self.keep))
        self.store_passes += 1
        if digest is not None:
            # a full disk costs the next use of this fold a read of the store, not the run
            try:
                self._write_spill(fold, digest, proj, projected)
            except OSError as e:
                warnings.warn(
                    f"fold {fold}'s projected bags could not be kept on disk in {self.spill_dir} ({e}): the next "
                    "fit of this fold reads the store again; free space there (or set TMPDIR without a run "
                    "directory) to avoid it",
                    SpillWarning,
                    stacklevel=2,
                )
        self._fold = (key, proj, projected)
        return proj, projected

    def spill_key(self, fold: int, params, rows) -> str:
        """sha256 of what ``fold``'s projected bags depend on: the fold, the projection's parameters ``params``,
        the seed, the training ``rows``, the kept bags and their tile counts, the cohort's identity and the run's
        settings' fingerprint."""
        c = self.cohort
        head = {
            "fold": int(fold),
            "params": repr(params),
            "seed": self.seed,
            "dim": self.dim,
            "cohort": [str(c.store), c.encoder, c.tiling, c.by],
            "settings": self._fingerprint,
        }
        h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
        h.update(np.asarray(rows, dtype=np.int64).tobytes())
        h.update(np.asarray(c.n_tiles[self.keep], dtype=np.int64).tobytes())
        h.update("\0".join(map(str, c.bag_ids[self.keep])).encode())
        return h.hexdigest()

    def _spill_paths(self, fold: int, digest: str) -> tuple[Path, Path]:
        stem = self.spill_dir / f"fold{int(fold)}.{digest[:24]}"
        return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".joblib")

    def _write_spill(self, fold: int, digest: str, proj, projected: list) -> None:
        """Write the projected bags (``(n_tiles, k)`` float32, concatenated, bag by bag) and then the projection
        with the bags' offsets, each to a hidden temporary name renamed into place; the ``.joblib`` marks it done."""
        import joblib

        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix="slide2expr-projected-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.spill_dir, ignore_errors=True)
        data, meta = self._spill_paths(fold, digest)
        data.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in projected])]).astype(np.int64)
        width = projected[0].shape[1] if projected else 0
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
        for path, write in (
            (data, lambda fh: _write_npy(fh, projected, {**header, "shape": (int(offsets[-1]), width)})),
            (meta, lambda fh: joblib.dump({"key": digest, "projection": proj, "offsets": offsets}, fh)),
        ):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    write(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    def _load_spill(self, fold: int, digest: str) -> tuple | None:
        """``(projection, projected kept bags as views of a read-only memory map)`` of a complete spill named
        ``digest``, or None (none, unreadable, or not of these bags: the caller projects again)."""
        import joblib

        if self.spill_dir is None:
            return None
        data, meta = self._spill_paths(fold, digest)
        if not (data.is_file() and meta.is_file()):
            return None
        try:
            payload = joblib.load(meta)
            arr = np.load(data, mmap_mode="r")
        except Exception:  # noqa: BLE001 (a damaged spill is projected again and rewritten)
            return None
        offsets = np.asarray(payload.get("offsets")) if isinstance(payload, dict) else None
        if (
            offsets is None
            or payload.get("key") != digest
            or len(offsets) != len(self.keep) + 1
            or arr.ndim != 2
            or arr.dtype != np.float32
            or int(offsets[-1]) != arr.shape[0]
        ):
            return None
        return payload["projection"], [arr[offsets[i] : offsets[i + 1]] for i in range(len(self.keep))]

    def fit(self, est, fold: int, rows, y, groups, *, name: str, params) -> None:
        kind = self._kind(est, name)
        rows = np.asarray(rows)
        if kind == "mean":
            fit_model(
                est, [np.zeros((1, self.dim), np.float32)] * len(rows), y, groups, name=name, params=params
            )
        elif kind == "pooled":
            X = self.pooled[rows]
            if isinstance(est, PooledStatsSearch):
                fit_stats_search(est, X, y, groups, dim=self.dim)
            else:
                est.steps[0] = _on_columns(est, self.dim).steps[0]
                est.fit(X, y)
        else:
            _, projected = self.projection(est, fold, rows)
            net, path = _network(est)
            self._restore[id(est)] = {"standardize": net.standardize, "pca_components": net.pca_components}
            est.set_params(**{f"{path}standardize": False, f"{path}pca_components": None})
            fit_model(est, [projected[i] for i in rows], y, groups, name=name, params=params)

    def _inputs(self, est, fold: int, rows):
        if isinstance(est, MeanRegressor):
            return [np.zeros((1, self.dim), np.float32)] * len(rows)
        if id(est) in self._restore:
            return [self._fold[2][i] for i in rows]
        return self.pooled[np.asarray(rows)]

    def predict(self, est, fold: int, rows) -> np.ndarray:
        return est.predict(self._inputs(est, fold, rows))

    def predict_tiles(self, est, fold: int, rows) -> list:
        return est.predict_tiles(self._inputs(est, fold, rows))

    def finish(self, est, fold: int):
        """The fitted estimator made to take raw bags, as one fitted in memory: ``BagPooler`` back in the pooled
        pipelines; the fold's projection and the network's own settings in every fitted network."""
        if isinstance(est, PooledStatsSearch):
            _with_bag_pooler(est.best_estimator_, self.dim)
        elif isinstance(est, Pipeline) and isinstance(est.steps[0][1], PooledColumns):
            _with_bag_pooler(est, self.dim)
        settings = self._restore.pop(id(est), None)
        if settings is not None:
            proj = self._fold[1]
            _, path = _network(est)
            est.set_params(**{f"{path}{k}": v for k, v in settings.items()})
            for e in _fitted(est):
                if isinstance(e, _TorchBagRegressor):
                    e.set_params(**settings)
                    e.tile_projection_ = proj
                if hasattr(e, "n_features_in_"):
                    e.n_features_in_ = self.dim
        return est


def _write_npy(fh, bags: list, header: dict) -> None:
    """``bags`` concatenated as one ``.npy`` array of ``header``'s shape, written bag by bag (no concatenated copy)."""
    np.lib.format.write_array_header_2_0(fh, header)
    for b in bags:
        fh.write(np.ascontiguousarray(b, dtype="<f4").data)


class MemoryBoundWarning(UserWarning):
    """A run read on access records less than it would in memory (fewer attention genes) to stay within
    ``max_memory_gb``; the message says how many and how to record more."""


#: Bytes one attention row (one tile × gene) takes while a run collects it, strings and all.
ATTENTION_ROW_BYTES = 96
#: Share of ``max_memory_gb`` the collected attention may take.
ATTENTION_SHARE = 0.25


def streaming_bytes(cohort, plan) -> dict[str, int]:
    """What a run on ``cohort`` read on access holds at once, in bytes: one fold's projected bags, the projection's
    tile sample (float32 and two float64 copies), the largest bag read, and the pooled rows."""
    kept = cohort.n_tiles[np.asarray(plan.keep)]
    d = int(cohort.dim)
    k = 0
    for name in plan.models:
        net, _ = _network(make_model(name, params=plan.model_params.get(name)))
        if net is not None:
            k = max(k, int(net._tile_projection().pca_components or d))
    return {
        "projected": int(kept.sum()) * k * 4,
        "sample": min(TILE_SAMPLE_ROWS, int(kept.sum())) * d * 20 if k else 0,
        "bag": int(kept.max(initial=0)) * d * 10,
        "pooled": len(kept) * 4 * d * 8,
    }


def attention_cap(cohort, plan, *, max_memory_gb: float) -> int | None:
    """Genes per fold whose attention fits :data:`ATTENTION_SHARE` of ``max_memory_gb`` (None: no cap needed);
    :class:`StreamingError` when the run's fixed holdings (:func:`streaming_bytes`) exceed ``max_memory_gb``."""
    held = streaming_bytes(cohort, plan)
    budget = max_memory_gb * 1e9
    if sum(held.values()) > budget:
        parts = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in held.items() if v)
        raise StreamingError(
            f"max_memory_gb={max_memory_gb:g} is less than a run on this cohort read on access holds ({parts}): "
            "give more (--max-memory-gb) or fewer pca_components"
        )
    n_att = sum(model_info(m).attention for m in plan.models)
    if not n_att:
        return None
    tiles = int(cohort.n_tiles[np.asarray(plan.keep)].sum())
    cap = int(ATTENTION_SHARE * budget // max(1, tiles * ATTENTION_ROW_BYTES * n_att))
    most = max((len(a) for a in plan.attention_genes), default=0)
    return None if cap >= most else max(cap, 1)


class Stages:
    """Wall time and peak RSS per stage of a command: ``with stages("fit"): …``; :attr:`table` maps each stage to
    ``{"seconds", "peak_rss_gb"}`` (the process's peak so far when the stage ended)."""

    def __init__(self):
        self.table: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        @contextlib.contextmanager
        def stage():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.table[name] = {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}

        return stage()

    def describe(self) -> str:
        """``plan 0.1 s, fit 3.2 s, …; peak RSS 1.23 GB``."""
        parts = ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in self.table.items())
        return f"{parts}; peak RSS {peak_rss_gb():.2f} GB"


def peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GB (NaN where the platform does not say)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9
