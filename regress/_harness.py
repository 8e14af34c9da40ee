"""What ``compare``, ``train`` and ``predict`` share: cohort checks, fitting with the user's parameters named in
errors, the targets' transform, and JSON-safe config values."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from slide2expr.contract import Cohort, read_metadata, targets_path
from slide2expr.regress._models import UnknownModelError

#: Bags whose ids a left-out warning lists before "…".
LISTED_BAGS = 10
#: The fewest patients a held-out fold may have: fewer make per-fold correlations meaningless (or undefined).
MIN_PATIENTS_PER_FOLD = 3


#: The floor every comparison includes (its null is itself: no null is fitted for it).
FLOOR_MODEL = "mean"


def null_key(model: str) -> str:
    """The name under which a model's null fits (the model on permuted training targets) are kept in
    ``RUN/partial/``."""
    return f"{model}.null"


def fit_keys(models: Sequence[str]) -> list[str]:
    """What a compare run fits on every fold, in order: each model, then the null of each but the floor."""
    return [*models, *(null_key(m) for m in models if m != FLOOR_MODEL)]


class CompareError(ValueError):
    """A cohort or argument that ``compare`` (or ``train``) cannot run on."""


class LeftOutBagsWarning(UserWarning):
    """Bags with missing target values were left out of a comparison or a fit (their ids are in the message)."""


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`~slide2expr.regress.compare`. Its message says how many model × fold fits finished and
    how to resume them: each was written to ``RUN/partial/`` as it finished, and a rerun with the same settings and
    ``out`` picks them up (``overwrite=True`` restarts). Attributes ``done``, ``total`` and ``out``."""

    def __init__(self, done: int, total: int | None, out: Path | None) -> None:
        self.done, self.total, self.out = int(done), total, out
        if out is None:
            super().__init__("compare interrupted; nothing was written (out=None)")
            return
        if total is None:
            super().__init__("compare interrupted before fitting began: run the same command again")
            return
        super().__init__(
            f"compare interrupted after {done} of {total} model × fold fits (nulls included); the finished ones are "
            "kept in "
            f"{out}/partial/: run the same compare with the same settings and out to resume them (overwrite, "
            "--overwrite, restarts)"
        )


def check_cohort_targets(cohort: Cohort) -> list[str]:
    """The cohort's genes, each once; :class:`CompareError` when it has no targets or lists a gene twice."""
    if cohort.y_true is None:
        raise CompareError(
            "the cohort has no targets: load it with sql.load_cohort(store, encoder=…, targets=NAME) "
            "(or `slide2expr compare --targets NAME`)"
        )
    genes = list(cohort.genes)
    dup = sorted({g for g in genes if genes.count(g) > 1})
    if dup:
        raise CompareError(
            f"the cohort lists gene(s) {', '.join(dup)} more than once: load it with each gene once "
            "(sql.load_cohort(…, genes=[…]) / --genes)"
        )
    return genes


def complete_bags(cohort: Cohort, *, what: str, columns=None) -> tuple[np.ndarray, list[str]]:
    """``(rows, left_out)``: the cohort rows with every target value (of ``columns`` of ``y_true`` when given), and
    the ids of the others, which a :class:`LeftOutBagsWarning` lists (``what`` says what they are left out of)."""
    y = np.asarray(cohort.y_true, dtype=np.float64)
    complete = ~np.isnan(y if columns is None else y[:, columns]).any(axis=1)
    dropped = [str(b) for b, c in zip(cohort.bag_ids, complete, strict=True) if not c]
    if dropped:
        warnings.warn(
            f"{len(dropped)} bag(s) have no (or incomplete) targets and are left out of {what}: "
            + ", ".join(dropped[:LISTED_BAGS])
            + (" …" if len(dropped) > LISTED_BAGS else ""),
            LeftOutBagsWarning,
            stacklevel=3,
        )
    return np.flatnonzero(complete), dropped


def check_fold_sizes(patients: np.ndarray, folds: np.ndarray, *, n_folds: int) -> None:
    """:class:`CompareError` when a held-out fold has fewer than :data:`MIN_PATIENTS_PER_FOLD` patients, saying how
    many folds the cohort supports.

    >>> check_fold_sizes(np.array(list("abcdef")), np.array([0, 0, 0, 1, 1, 1]), n_folds=2)
    >>> try:
    ...     check_fold_sizes(np.array(list("abcde")), np.array([0, 0, 0, 1, 1]), n_folds=2)
    ... except CompareError as exc:
    ...     print(exc)
    n_folds=2 leaves 2 patients in the smallest held-out fold (5 patients in all); compare needs at least 3 per
    fold, so at least 6 patients for 2 folds: cross-validation cannot say anything at this size
    """
    per_fold = [len(set(patients[folds == k])) for k in range(n_folds)]
    if min(per_fold) >= MIN_PATIENTS_PER_FOLD:
        return
    n = len(set(patients))
    fits = n // MIN_PATIENTS_PER_FOLD
    how = (
        f"use n_folds={fits} or fewer (--n-folds)"
        if fits >= 2
        else "cross-validation cannot say anything at this size"
    )
    raise CompareError(
        f"n_folds={n_folds} leaves {min(per_fold)} patients in the smallest held-out fold ({n} patients in all); "
        f"compare needs at least {MIN_PATIENTS_PER_FOLD} per fold, so at least {MIN_PATIENTS_PER_FOLD * n_folds} "
        f"patients for {n_folds} folds: {how}"
    )


def check_targets_vary(y: np.ndarray, genes, *, what: str) -> None:
    """:class:`CompareError` naming the genes of ``y`` (``(n_bags, n_genes)``) with one value for every bag, which no
    model can predict (``what`` says what to do instead)."""
    constant = np.flatnonzero(np.ptp(y, axis=0) == 0) if len(y) else np.arange(y.shape[1])
    if len(constant):
        names = [str(genes[i]) for i in constant]
        shown = ", ".join(names[:LISTED_BAGS]) + (
            f" … (+{len(names) - LISTED_BAGS} more)" if len(names) > LISTED_BAGS else ""
        )
        raise CompareError(
            f"{len(names)} gene(s) have the same value for every bag, so there is nothing to predict: {shown}; {what}"
        )


def plan_targets(cohort: Cohort, plan) -> np.ndarray:
    """``(n_kept_bags, n_genes)`` float64: the targets of ``plan``'s kept bags and genes, from ``cohort``."""
    y = np.asarray(cohort.y_true, dtype=np.float64)[plan.keep]
    if tuple(cohort.genes) == tuple(plan.genes):
        return y
    position = {g: i for i, g in enumerate(cohort.genes)}
    return y[:, [position[g] for g in plan.genes]]


def plan_cohort(cohort: Cohort, plan) -> Cohort:
    """``cohort`` (a :class:`Cohort` or a :class:`sql.LazyCohort`) with ``y_true`` and ``genes`` cut to
    ``plan.genes`` (the same features, bags and order)."""
    if tuple(cohort.genes) == tuple(plan.genes):
        return cohort
    position = {g: i for i, g in enumerate(cohort.genes)}
    y = np.asarray(cohort.y_true)[:, [position[g] for g in plan.genes]]
    if not dataclasses.is_dataclass(cohort):  # a cohort read on access (sql.LazyCohort)
        out = copy.copy(cohort)
        out.y_true, out.genes = y, tuple(plan.genes)
        return out
    return dataclasses.replace(cohort, y_true=y, genes=tuple(plan.genes))


def fit_model(est, bags: Sequence[np.ndarray], y, groups, *, name: str, params: Mapping | None):
    """``est.fit`` (with ``groups`` when it takes them). A ``TypeError`` while fitting with user ``params`` (a
    parameter of the wrong type that the estimator's library does not check up front) becomes an
    :class:`UnknownModelError` naming the model and the parameters given."""
    kwargs = {"groups": groups} if "groups" in inspect.signature(est.fit).parameters else {}
    try:
        return est.fit(bags, y, **kwargs)
    except TypeError as exc:
        if not params:
            raise
        raise UnknownModelError(
            f"model {name!r}: fitting failed on a value of the wrong type ({exc}); check the types of the "
            f"parameters given: {', '.join(f'{k}={v!r}' for k, v in sorted(params.items()))}"
        ) from exc


def target_transform(store: str | os.PathLike | None, targets: str | None) -> str | None:
    """The transform (``log1p``, ``log10p``, ``none``) recorded in a targets set's footer; None when unknown."""
    if store is None or targets is None:
        return None
    try:
        path = Path(targets) if str(targets).endswith(".parquet") else targets_path(store, targets)
        meta = read_metadata(path)
    except (OSError, ValueError):
        return None
    return meta.get("transform")


def jsonable(obj):
    """``obj`` with numpy values, tuples and other objects turned into what ``json.dumps`` writes.

    >>> jsonable({"alphas": np.array([1.0, 10.0]), "stats": ("mean",), "k": np.int64(3)})
    {'alphas': [1.0, 10.0], 'stats': ['mean'], 'k': 3}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
