"""The fold loop of ``compare``: every model fitted on the same patient-grouped folds, its held-out predictions and
(for attention models) the held-out tiles' attention collected."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from slide2expr.contract import ATTENTION_SCHEMA, Cohort
from slide2expr.regress._batches import bag_tiles, tile_batches
from slide2expr.regress._harness import CompareError, null_key, plan_targets
from slide2expr.regress._meta import TileScores
from slide2expr.regress._models import make_model, model_info
from slide2expr.regress._streaming import fold_inputs


def make_folds(groups: Sequence[str], *, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each bag (``(n_bags,)`` int32): ``GroupKFold`` over ``groups`` (patients), groups shuffled by ``seed``.

    >>> make_folds(["a", "a", "b", "c", "d"], n_folds=2, seed=0).tolist()
    [1, 1, 1, 0, 0]
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise CompareError(f"n_folds={n_folds!r}: cross-validation needs an integer of at least 2 folds")
    if n_groups < n_folds:
        raise CompareError(
            f"n_folds={n_folds} but the cohort has only {n_groups} patients: use n_folds={max(2, n_groups)} or fewer"
        )
    folds = np.empty(len(groups), dtype=np.int32)
    cv = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(cv.split(np.zeros(len(groups)), groups=groups)):
        folds[test] = k
    return folds


@dataclass
class FoldOutputs:
    """What the fold loop collected.

    Attributes
    ----------
    predictions
        Model × held-out bag × gene: ``model, fold, bag_id, patient_id, gene, y_true, y_pred, y_baseline`` (the
        training-mean prediction).
    attention
        Held-out tiles × genes of the attention models, in ``ATTENTION_SCHEMA``.
    seconds
        Fitting and predicting time per model, all folds.
    """

    predictions: pd.DataFrame
    attention: pa.Table
    seconds: dict[str, float]


def cross_fit(
    cohort: Cohort,
    plan,
    *,
    on_fitted: Callable[[str, int, object], None] | None = None,
    progress: bool = False,
    checkpoint=None,
    inputs=None,
) -> FoldOutputs:
    """Fit each model of ``plan`` (a :class:`~slide2expr.regress.ComparePlan`) on every fold's training patients
    (``random_state = seed + fold``) and predict the held-out bags.

    In fold ``k`` the models fit and predict the genes ``plan.fold_genes[k]``, chosen on that fold's training
    patients only (every compared gene unless a top-N selection is made), and record attention for
    ``plan.attention_genes[k]``. ``on_fitted(model, fold, estimator)`` sees each fitted estimator; ``checkpoint``
    (a :class:`~slide2expr.regress._runs.PartialRun`) returns the outputs of fits finished by an earlier,
    interrupted run instead of fitting them again, and saves each new one as it finishes. ``progress`` shows a bar
    over models × folds. ``inputs`` (default :func:`~slide2expr.regress._streaming.fold_inputs`) fits and
    predicts: bags in memory, or a cohort read on access with memory bounded.
    """
    inputs = fold_inputs(cohort, plan) if inputs is None else inputs
    Y = plan_targets(cohort, plan)
    pred_parts, att_parts, seconds = [], [], dict.fromkeys(plan.models, 0.0)
    with _Progress(enabled=progress, total=len(plan.models) * plan.n_folds) as bar:
        for name in plan.models:
            params = plan.model_params.get(name)
            for k in range(plan.n_folds):
                bar.describe(f"{name} fold {k + 1}/{plan.n_folds}")
                done = None if checkpoint is None else checkpoint.load(name, k)
                if done is None:
                    tr, te = np.flatnonzero(plan.folds != k), np.flatnonzero(plan.folds == k)
                    cols = np.asarray(plan.fold_genes[k])
                    y_tr = Y[tr] if len(cols) == Y.shape[1] else Y[tr][:, cols]
                    est = make_model(name, params=params, random_state=plan.seed + k)
                    t0 = time.perf_counter()
                    inputs.fit(est, k, tr, y_tr, plan.patients[tr], name=name, params=params)
                    yp = np.asarray(inputs.predict(est, k, te), dtype=np.float64).reshape(len(te), len(cols))
                    spent = time.perf_counter() - t0
                    pred = _prediction_rows(plan, name, k, te, Y, yp, base=y_tr.mean(axis=0), cols=cols)
                    att = None
                    if model_info(name).attention:
                        att_cols = np.asarray(plan.attention_genes[k])
                        within = np.searchsorted(cols, att_cols)
                        scores = []  # batch by batch, keeping the recorded genes' columns only
                        for b in tile_batches(bag_tiles(cohort, plan.keep[te])):
                            scores += [
                                TileScores(*(None if a is None else a[:, within] for a in s))
                                for s in inputs.predict_tiles(est, k, te[b.start : b.stop])
                            ]
                        genes = [plan.genes[i] for i in att_cols]
                        att = attention_rows(scores, cohort, plan.keep[te], name=name, fold=k, genes=genes)
                    est = inputs.finish(est, k)
                    if on_fitted is not None:
                        on_fitted(name, k, est)
                    if checkpoint is not None:
                        checkpoint.save(name, k, pred, att, spent)
                    done = (pred, att, spent)
                pred, att, spent = done
                pred_parts.append(pred)
                if att is not None:
                    att_parts.append(att)
                seconds[name] += spent
                bar.advance()
    attention = pa.concat_tables(att_parts) if att_parts else ATTENTION_SCHEMA.empty_table()
    return FoldOutputs(pd.concat(pred_parts, ignore_index=True), attention, seconds)


def null_fits(
    cohort: Cohort,
    plan,
    *,
    skip: Sequence[str] = (),
    progress: bool = False,
    inputs=None,
    checkpoint=None,
) -> pd.DataFrame:
    """Each model's *null*: the same model, on the same folds, seeds and genes as :func:`cross_fit`, fitted on
    training targets permuted among the training patients (one permutation per fold, the same for every gene and
    model, drawn from ``plan.seed + fold``), predicting the held-out bags.

    Returns the null's held-out predictions with the columns of :class:`FoldOutputs.predictions`; models in
    ``skip`` (the training-mean floor, whose null is itself) get none. A model that beats its null learned
    something from the pairing of slides and targets, not from the fold structure or the targets' distribution.
    ``checkpoint`` (a :class:`~slide2expr.regress._runs.PartialRun`) keeps each finished null fit, as
    :func:`cross_fit` keeps the fits, so an interrupted run resumes its nulls too.
    """
    inputs = fold_inputs(cohort, plan) if inputs is None else inputs
    Y = np.asarray(cohort.y_true, dtype=np.float64)[plan.keep]
    names = [m for m in plan.models if m not in skip]
    parts = []
    with _Progress(enabled=progress, total=len(names) * plan.n_folds) as bar:
        for k in range(plan.n_folds):
            tr, te = np.flatnonzero(plan.folds != k), np.flatnonzero(plan.folds == k)
            cols = np.asarray(plan.fold_genes[k])
            Yp = permute_by_group(Y[tr], plan.patients[tr], seed=plan.seed + k)
            Yp = Yp if len(cols) == Y.shape[1] else Yp[:, cols]  # the fold's genes, as cross_fit fits them
            for name in names:
                bar.describe(f"{name} null fold {k + 1}/{plan.n_folds}")
                done = None if checkpoint is None else checkpoint.load(null_key(name), k)
                if done is None:
                    params = plan.model_params.get(name)
                    est = make_model(name, params=params, random_state=plan.seed + k)
                    t0 = time.perf_counter()
                    inputs.fit(est, k, tr, Yp, plan.patients[tr], name=name, params=params)
                    yp = np.asarray(inputs.predict(est, k, te), dtype=np.float64).reshape(len(te), len(cols))
                    inputs.finish(est, k)
                    rows = _prediction_rows(plan, name, k, te, Y, yp, base=Yp.mean(axis=0), cols=cols)
                    if checkpoint is not None:
                        checkpoint.save(null_key(name), k, rows, None, time.perf_counter() - t0)
                    done = (rows, None, 0.0)
                parts.append(done[0])
                bar.advance()
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def permute_by_group(Y: np.ndarray, groups: np.ndarray, *, seed: int) -> np.ndarray:
    """``Y`` (``(n, n_genes)``) with its rows' targets permuted among the groups: every bag of a group takes the
    targets of another group's first bag (bags of one patient share their patient's targets).

    >>> permute_by_group(np.arange(4.0)[:, None], np.array(["a", "a", "b", "c"]), seed=0).ravel().tolist()
    [3.0, 3.0, 0.0, 2.0]
    """
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    return Y[first[order]][inverse]


def _prediction_rows(plan, name: str, fold: int, te: np.ndarray, Y, yp, *, base, cols=None) -> pd.DataFrame:
    """The held-out rows of one model × fold, for the fold's genes ``cols`` (default ``plan.fold_genes[fold]``).

    ``Y`` (``(n_kept_bags, n_genes)``) holds every compared gene; ``yp`` (``(len(te), ·)``) and ``base`` hold the
    fold's genes, or every compared gene (a fit on all of them), of which the fold's are taken.
    """
    cols = np.asarray(plan.fold_genes[fold] if cols is None else cols)
    yp, base = np.asarray(yp), np.asarray(base)
    if yp.shape[1] != len(cols):
        yp, base = yp[:, cols], base[cols]
    n_genes = len(cols)
    return pd.DataFrame(
        {
            "model": name,
            "fold": np.int32(fold),
            "bag_id": np.repeat(plan.bag_ids[te], n_genes),
            "patient_id": np.repeat(plan.patients[te], n_genes),
            "gene": np.tile(np.asarray(plan.genes, dtype=object)[cols], len(te)),
            "y_true": Y[te][:, cols].ravel(),
            "y_pred": yp.ravel(),
            "y_baseline": np.tile(base, len(te)),
        }
    )


def attention_rows(
    scores: Sequence[TileScores], cohort: Cohort, bag_index, *, name: str, fold: int, genes: list[str]
) -> pa.Table:
    """Held-out attention as an Arrow table in ``ATTENTION_SCHEMA`` (gene-major within a bag; tiles in cohort
    order, which is tile_id order); ``bag_index`` gives each scored bag's row in the cohort."""
    G = len(genes)
    cols = {
        k: [] for k in ("bag_id", "slide_id", "tile_id", "x", "y", "gene", "attention", "logit", "tile_pred")
    }
    for b, s in zip(bag_index, scores, strict=True):
        sl = cohort.bag_slice(int(b))
        n = sl.stop - sl.start
        cols["bag_id"].append(np.full(n * G, str(cohort.bag_ids[b]), dtype=object))
        cols["slide_id"].append(np.tile(np.asarray(cohort.slide_ids[sl], dtype=object), G))
        cols["tile_id"].append(np.tile(np.asarray(cohort.tile_ids[sl], dtype=np.int32), G))
        cols["x"].append(np.tile(np.asarray(cohort.x[sl], dtype=np.int64), G))
        cols["y"].append(np.tile(np.asarray(cohort.y[sl], dtype=np.int64), G))
        cols["gene"].append(np.repeat(np.asarray(genes, dtype=object), n))
        cols["attention"].append(s.attention.T.ravel().astype(np.float32))
        logit = s.attention_logit
        cols["logit"].append(
            np.full(n * G, np.nan, np.float32) if logit is None else logit.T.ravel().astype(np.float32)
        )
        cols["tile_pred"].append(None if s.tile_pred is None else s.tile_pred.T.ravel().astype(np.float32))
    n_rows = sum(len(a) for a in cols["attention"])

    def strings(parts):
        return pa.array(np.concatenate(parts), type=pa.string())

    tile_pred = (
        pa.nulls(n_rows, type=pa.float32())
        if any(t is None for t in cols["tile_pred"])
        else pa.array(np.concatenate(cols["tile_pred"]), type=pa.float32())
    )
    return pa.table(
        {
            "model": pa.array(np.full(n_rows, name, dtype=object), type=pa.string()),
            "fold": pa.array(np.full(n_rows, fold, dtype=np.int32)),
            "bag_id": strings(cols["bag_id"]),
            "slide_id": strings(cols["slide_id"]),
            "tile_id": pa.array(np.concatenate(cols["tile_id"]), type=pa.int32()),
            "x": pa.array(np.concatenate(cols["x"]), type=pa.int64()),
            "y": pa.array(np.concatenate(cols["y"]), type=pa.int64()),
            "gene": strings(cols["gene"]),
            "attention": pa.array(np.concatenate(cols["attention"]), type=pa.float32()),
            "attention_logit": pa.array(np.concatenate(cols["logit"]), type=pa.float32(), from_pandas=True),
            "tile_pred": tile_pred,
        },
        schema=ATTENTION_SCHEMA,
    )


class _Progress:
    """A rich progress bar over models × folds, or nothing."""

    def __init__(self, *, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self._p = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._p.__enter__()
            self._task = self._p.add_task("compare", total=self.total)
        return self

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False
