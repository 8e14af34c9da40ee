"""Meta-estimators that compose bag regressors: a seed ensemble and one model per gene.

Both keep the fixed doors of what they wrap: ``predict`` and, when the wrapped estimator has it,
``predict_tiles`` (one :class:`TileScores` per bag).

>>> import numpy as np
>>> from sklearn.tree import DecisionTreeRegressor
>>> X, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
>>> ens = SeedEnsemble(DecisionTreeRegressor(max_depth=2), n_members=3, random_state=0).fit(X, y)
>>> len(ens.estimators_), ens.predict(X[:2]).shape
(3, (2,))
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from joblib import Parallel, delayed, parallel_config
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, clone
from sklearn.multioutput import MultiOutputRegressor
from sklearn.utils import _safe_indexing, check_random_state, get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from slide2expr.regress._checks import BagInputError

#: Ensemble members' seeds are drawn from ``[0, MAX_SEED)``.
MAX_SEED = 2**31 - 1


class TileScores(NamedTuple):
    """What an attention model says about each tile of one bag, each ``(n_tiles, n_genes)`` float32."""

    attention: np.ndarray
    tile_pred: np.ndarray | None
    attention_logit: np.ndarray | None


def merge_tile_scores(per_model: list[list[TileScores]], combine: Callable) -> list[TileScores]:
    """Merge several models' per-bag scores field by field with ``combine(list of arrays)`` (None stays None)."""
    return [
        TileScores(*(None if parts[0] is None else combine(parts) for parts in zip(*scores, strict=True)))
        for scores in zip(*per_model, strict=True)
    ]


def _estimator_has(attr: str):
    return lambda self: hasattr(self.estimator, attr)


def _with_seed(estimator: BaseEstimator, seed: int) -> BaseEstimator:
    """``estimator`` with every ``random_state`` parameter (nested ones too) set to ``seed``."""
    names = [k for k in estimator.get_params(deep=True) if k.split("__")[-1] == "random_state"]
    return estimator.set_params(**dict.fromkeys(names, seed))


def _fit_kwargs(estimator, groups, fit_params: dict) -> dict:
    """``fit_params`` plus ``groups`` when given (an estimator whose ``fit`` takes no groups gets none)."""
    takes = "groups" in inspect.signature(estimator.fit).parameters
    return {**fit_params, "groups": groups} if groups is not None and takes else dict(fit_params)


class SeedEnsemble(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Fit ``n_members`` clones of ``estimator``, each with its own seed, and average their predictions.

    Training a network on a few dozen bags varies from seed to seed; the average of the members varies less.
    Member ``i`` is fitted with every ``random_state`` of ``estimator`` (nested ones too) set to
    ``check_random_state(random_state).randint(0, 2**31 - 1, size=n_members)[i]``.

    Parameters
    ----------
    estimator : estimator
        The model to clone, e.g. an :class:`~slide2expr.regress.AttentionMILRegressor`.
    n_members : int
    random_state : int, RandomState or None
        Seed of the members' seeds.

    Attributes
    ----------
    estimators_ : list of estimators
        The fitted members.
    """

    def __init__(self, estimator, *, n_members: int = 4, random_state=None):
        self.estimator = estimator
        self.n_members = n_members
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags = copy.deepcopy(inner.input_tags)
        tags.target_tags.single_output = inner.target_tags.single_output
        tags.target_tags.multi_output = inner.target_tags.multi_output
        tags.non_deterministic = inner.non_deterministic
        return tags

    def fit(self, X, y, groups=None, **fit_params):
        """Fit every member on ``X`` (bags) and ``y``; ``groups`` go to members whose ``fit`` takes them."""
        m = self.n_members
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise BagInputError(f"SeedEnsemble: n_members must be an integer ≥ 1; got {m!r}")
        seeds = check_random_state(self.random_state).randint(0, MAX_SEED, size=int(m))
        kwargs = _fit_kwargs(self.estimator, groups, fit_params)
        self.estimators_ = [_with_seed(clone(self.estimator), int(s)).fit(X, y, **kwargs) for s in seeds]
        if hasattr(self.estimators_[0], "n_features_in_"):
            self.n_features_in_ = self.estimators_[0].n_features_in_
        return self

    def predict(self, X) -> np.ndarray:
        """The mean of the members' predictions."""
        check_is_fitted(self, "estimators_")
        return np.mean([e.predict(X) for e in self.estimators_], axis=0)

    @available_if(_estimator_has("predict_tiles"))
    def predict_tiles(self, bags) -> list[TileScores]:
        """Per bag, the members' :class:`TileScores` averaged field by field (float32)."""
        check_is_fitted(self, "estimators_")
        return merge_tile_scores(
            [e.predict_tiles(bags) for e in self.estimators_],
            lambda parts: np.mean(parts, axis=0).astype(np.float32),
        )


class PerGeneRegressor(MultiOutputRegressor):
    """One clone of ``estimator`` per gene (column of ``y``), fitted on the bags that have a value for that gene.

    A ``MultiOutputRegressor`` that also takes 1-D ``y`` (predicting 1-D), passes ``groups`` (the rows kept)
    to estimators whose ``fit`` takes them, runs genes on ``n_jobs`` threads (LightGBM releases the GIL), and,
    when the estimator has it, gives ``predict_tiles`` with the genes' columns side by side.

    ``estimators_`` holds one fitted regressor per gene, in the column order of ``y``. ``sized`` (a callable
    ``n_rows → dict``) gives parameters that each clone takes from the number of bags it is fitted on.
    """

    def __init__(self, estimator, *, n_jobs=None, sized: Callable[[int], dict] | None = None):
        super().__init__(estimator, n_jobs=n_jobs)
        self.sized = sized

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags = copy.deepcopy(get_tags(self.estimator).input_tags)
        tags.target_tags.single_output = True
        return tags

    def fit(self, X, y, groups=None, **fit_params):
        """Fit one clone of ``estimator`` per column of ``y`` on the rows where that column is not NaN."""
        Y = np.asarray(y, dtype=np.float64)
        self._y_was_1d = Y.ndim == 1
        Y = Y[:, None] if self._y_was_1d else Y
        if Y.ndim != 2 or len(Y) != len(X):
            raise BagInputError(
                f"y must have shape (n_bags,) or (n_bags, n_genes) for {len(X)} bags; got {Y.shape}"
            )
        jobs = []
        for g in range(Y.shape[1]):
            rows = np.flatnonzero(~np.isnan(Y[:, g]))
            if len(rows) == 0:
                raise BagInputError(f"y column {g} is all NaN: drop that gene")
            whole = len(rows) == len(Y)
            Xg = X if whole else _safe_indexing(X, rows)
            Gg = groups if groups is None or whole else np.asarray(groups)[rows]
            jobs.append((Xg, Y[rows, g], _fit_kwargs(self.estimator, Gg, fit_params)))
        with parallel_config(backend="threading"):
            self.estimators_ = Parallel(n_jobs=self.n_jobs)(
                delayed(_fit_clone)(self.estimator, Xg, yg, kw, self.sized) for Xg, yg, kw in jobs
            )
        if hasattr(self.estimators_[0], "n_features_in_"):
            self.n_features_in_ = self.estimators_[0].n_features_in_
        return self

    def predict(self, X) -> np.ndarray:
        """``(n_bags, n_genes)``, or ``(n_bags,)`` when fitted on 1-D ``y``."""
        with parallel_config(backend="threading"):
            pred = super().predict(X)
        return pred[:, 0] if getattr(self, "_y_was_1d", False) else pred

    @available_if(_estimator_has("predict_tiles"))
    def predict_tiles(self, bags) -> list[TileScores]:
        """Per bag, the genes' :class:`TileScores` with their columns side by side (gene order of ``y``)."""
        check_is_fitted(self, "estimators_")
        return merge_tile_scores(
            [e.predict_tiles(bags) for e in self.estimators_], lambda parts: np.concatenate(parts, axis=1)
        )


def _fit_clone(estimator, X, y, kwargs, sized=None):
    est = clone(estimator)
    if sized is not None:
        est.set_params(**sized(len(y)))
    return est.fit(X, y, **kwargs)
