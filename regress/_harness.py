"""What ``compare``, ``train`` and ``predict`` share: cohort checks, fitting with the user's parameters named in
errors, the targets' transform, and JSON-safe config values."""

from __future__ import annotations

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


class CompareError(ValueError):
    """A cohort or argument that ``compare`` (or ``train``) cannot run on."""


class LeftOutBagsWarning(UserWarning):
    """Bags with missing target values were left out of a comparison or a fit (their ids are in the message)."""


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


def complete_bags(cohort: Cohort, *, what: str) -> tuple[np.ndarray, list[str]]:
    """``(rows, left_out)``: the cohort rows with every target value, and the ids of the others, which a
    :class:`LeftOutBagsWarning` lists (``what`` says what they are left out of)."""
    complete = ~np.isnan(np.asarray(cohort.y_true, dtype=np.float64)).any(axis=1)
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
