"""Baselines behind the bag interface: pooled features → LightGBM / ridge, and the training-mean floor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, TransformerMixin, clone
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.validation import check_is_fitted

from slide2expr.regress._checks import BagInputError, check_bags, check_groups, check_targets
from slide2expr.regress._meta import MAX_SEED, PerGeneRegressor

_STATS = ("mean", "max", "min", "std", "median", "q25", "q75")


def _pool(bag: np.ndarray, stat: str) -> np.ndarray:
    b = np.asarray(bag, dtype=np.float32)
    if stat == "mean":
        return b.mean(axis=0, dtype=np.float64)
    if stat == "max":
        return b.max(axis=0)
    if stat == "min":
        return b.min(axis=0)
    if stat == "std":
        return b.std(axis=0, dtype=np.float64)
    if stat == "median":
        return np.median(b, axis=0)
    if stat == "q25":
        return np.quantile(b, 0.25, axis=0)
    if stat == "q75":
        return np.quantile(b, 0.75, axis=0)
    raise BagInputError(f"BagPooler: unknown statistic {stat!r}; choose from {', '.join(_STATS)}")


class BagPooler(TransformerMixin, BaseEstimator):
    """Pool each bag's tiles into one row of statistics per feature dimension.

    ``transform(bags)`` → ``(n_bags, len(stats) × d)`` float64, columns grouped by statistic (``mean_0 … mean_{d-1},
    max_0 …``), named by :meth:`get_feature_names_out`.

    Parameters
    ----------
    stats : tuple of str
        Any of ``"mean", "max", "min", "std", "median", "q25", "q75"``.

    Examples
    --------
    >>> import numpy as np
    >>> pooler = BagPooler(stats=("mean", "max")).fit([np.ones((3, 2)), np.zeros((5, 2))])
    >>> pooler.transform([np.array([[1.0, 2.0], [3.0, 0.0]])])
    array([[2., 1., 3., 2.]])
    >>> pooler.get_feature_names_out().tolist()
    ['mean_0', 'mean_1', 'max_0', 'max_1']
    """

    def __init__(self, stats: tuple[str, ...] = ("mean",)):
        self.stats = stats

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        return tags

    def fit(self, bags, y=None):
        bags = check_bags(bags, who=type(self).__name__)
        if isinstance(self.stats, str) or not self.stats:
            raise BagInputError(f"BagPooler: stats must be a non-empty tuple of names; got {self.stats!r}")
        for s in self.stats:
            if s not in _STATS:
                raise BagInputError(f"BagPooler: unknown statistic {s!r}; choose from {', '.join(_STATS)}")
        self.n_features_in_ = bags[0].shape[1]
        return self

    def transform(self, bags) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        bags = check_bags(bags, n_features=self.n_features_in_, who=type(self).__name__)
        return np.stack([np.concatenate([_pool(b, s) for s in self.stats]) for b in bags]).astype(np.float64)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        return np.array([f"{s}_{j}" for s in self.stats for j in range(self.n_features_in_)], dtype=object)


class MeanRegressor(RegressorMixin, BaseEstimator):
    """The floor: predicts each gene's training mean for every bag (NaN targets ignored).

    Examples
    --------
    >>> import numpy as np
    >>> MeanRegressor().fit([np.ones((2, 3))] * 2, [1.0, 3.0]).predict([np.zeros((4, 3))])
    array([2.])
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.multi_output = True
        return tags

    def fit(self, bags, y, groups=None):
        bags = check_bags(bags, who=type(self).__name__)
        Y, was_1d = check_targets(y, len(bags), who=type(self).__name__)
        self.n_features_in_ = bags[0].shape[1]
        self.mean_ = np.nanmean(Y, axis=0)
        self._y_was_1d = was_1d
        return self

    def predict(self, bags) -> np.ndarray:
        check_is_fitted(self, "mean_")
        bags = check_bags(bags, n_features=self.n_features_in_, who=type(self).__name__)
        pred = np.tile(self.mean_, (len(bags), 1))
        return pred[:, 0] if self._y_was_1d else pred


#: Small, regularised LightGBM settings for cohorts of ~40–200 bags with hundreds of pooled features; the leaf
#: size and the row subsampling follow the number of training bags (:func:`lgbm_size_params`); ``min_data_in_bin``
#: 1 lets a feature's bins split a handful of bags.
LGBM_PARAMS = dict(
    n_estimators=150,
    learning_rate=0.05,
    num_leaves=7,
    max_depth=3,
    colsample_bytree=0.3,
    reg_lambda=1.0,
    max_bin=63,
    min_data_in_bin=1,
    n_jobs=1,
    verbose=-1,
)
#: Training bags per leaf: one leaf per this many bags, within [2, 20] (LightGBM's own default is 20).
BAGS_PER_LEAF = 8
#: Row subsampling (0.8 per tree) only from this many training bags: below it a tree would see too few.
SUBSAMPLE_FROM = 50


def lgbm_size_params(n_bags: int, *, given=frozenset()) -> dict:
    """The LightGBM settings that follow the number of training bags, less those in ``given``: ``min_child_samples``
    (one leaf per :data:`BAGS_PER_LEAF` bags, within [2, 20]) and row subsampling (0.8 from :data:`SUBSAMPLE_FROM`
    bags). On 10 bags a tree can then still split (two leaves of 2 bags), where a fixed leaf size of 5 with
    subsampled rows leaves single-leaf trees that predict the mean.

    >>> lgbm_size_params(10), lgbm_size_params(32)["min_child_samples"], lgbm_size_params(400)["subsample"]
    ({'min_child_samples': 2, 'subsample': 1.0, 'subsample_freq': 0}, 4, 0.8)
    """
    leaf = int(np.clip(round(n_bags / BAGS_PER_LEAF), 2, 20))
    big = n_bags >= SUBSAMPLE_FROM
    out = {"min_child_samples": leaf, "subsample": 0.8 if big else 1.0, "subsample_freq": 1 if big else 0}
    return {k: v for k, v in out.items() if k not in given}


def lgbm_regressor(
    *, stats: tuple[str, ...] = ("mean", "max"), n_jobs: int | None = 2, random_state=None, **lgbm_params
) -> Pipeline:
    """``Pipeline(BagPooler → PerGeneRegressor(LGBMRegressor))``: one LightGBM model per gene.

    The last step's ``estimators_`` holds one fitted ``LGBMRegressor`` per gene (column order of ``y``), so
    ``shap.TreeExplainer`` explains each gene; genes fit in parallel over ``n_jobs`` threads. ``lgbm_params``
    override :data:`LGBM_PARAMS`; the leaf size and row subsampling follow the number of bags each gene is fitted
    on (:func:`lgbm_size_params`) unless given. The pooled statistics, mean and max of each feature, are fixed
    (pre-registered on the tuning cohorts of ``benchmarks/validity.py``): the trees choose among the pooled
    features within each fit.
    """
    from lightgbm import LGBMRegressor

    params = dict(LGBM_PARAMS)
    params.update(lgbm_params)
    params["random_state"] = random_state
    sized = partial(lgbm_size_params, given=frozenset(lgbm_params))
    return Pipeline(
        [
            ("pool", BagPooler(stats=tuple(stats))),
            ("lgbm", PerGeneRegressor(LGBMRegressor(**params), n_jobs=n_jobs, sized=sized)),
        ]
    )


#: The pooled statistics ``ridge_regressor`` chooses among by inner cross-validation.
RIDGE_STATS = (("mean",), ("mean", "std"), ("mean", "max"))
#: The penalties ``ridge_regressor``'s leave-one-out search tries, per gene.
RIDGE_ALPHAS = tuple(np.logspace(-1, 6, 22))


def ridge_regressor(*, stats=RIDGE_STATS, alphas=None, n_inner: int = 5, random_state=None):
    """Pooled statistics → standardised → ridge, tuned inside the bags it is fitted on.

    ``Pipeline(BagPooler → StandardScaler → RidgeCV)`` with ``alpha`` chosen per gene by efficient leave-one-out
    on the training bags (``alphas``, default :data:`RIDGE_ALPHAS`). ``stats`` is one tuple of statistics, or
    several (default :data:`RIDGE_STATS`), among which :class:`PooledStatsSearch` chooses by ``n_inner``-fold
    patient-grouped cross-validation inside the training bags.
    """
    alphas = RIDGE_ALPHAS if alphas is None else alphas
    options = [tuple(stats)] if stats and isinstance(stats[0], str) else [tuple(s) for s in stats]
    pipe = Pipeline(
        [
            ("pool", BagPooler(stats=options[0])),
            ("scale", StandardScaler()),
            ("ridge", RidgeCV(alphas=alphas, alpha_per_target=True)),
        ]
    )
    if len(options) == 1:
        return pipe
    return PooledStatsSearch(pipe, options=tuple(options), n_inner=n_inner, random_state=random_state)


class PooledStatsSearch(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """A pooled-feature pipeline whose pooled statistics (``pool__stats``) are chosen among ``options`` by
    patient-grouped inner cross-validation on the bags it is fitted on, then refitted on all of them.

    The criterion is the mean over genes of the squared error on z-scored targets (each gene weighs the same).
    ``best_estimator_`` is the refitted pipeline (:func:`pooled_parts` and :func:`learned_nothing` look inside),
    ``stats_`` the chosen statistics, ``cv_mse_`` the criterion of every option.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> bags = [rng.normal(size=(8, 3)).astype(np.float32) * (1 + (i % 3)) for i in range(20)]
    >>> y = np.array([b.std() for b in bags])
    >>> ridge_regressor(random_state=0).fit(bags, y).stats_
    ('mean', 'std')
    """

    def __init__(self, estimator, *, options, n_inner: int = 5, random_state=None):
        self.estimator = estimator
        self.options = options
        self.n_inner = n_inner
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.multi_output = True
        return tags

    def fit(self, bags, y, groups=None):
        bags = check_bags(bags, who=type(self).__name__)
        Y, was_1d = check_targets(y, len(bags), who=type(self).__name__)
        self.search(self.estimator, bags, Y, check_groups(groups, len(bags)), was_1d=was_1d)
        self.n_features_in_ = bags[0].shape[1]
        return self

    def search(self, template, X, Y: np.ndarray, groups: np.ndarray, *, was_1d: bool) -> None:
        """Choose ``stats_`` on inner patient-grouped folds of ``X`` and refit ``template`` with it on all of ``X``.

        ``X`` is what ``template`` reads: bags, or rows of pooled statistics (the streaming path's columns);
        ``Y`` is ``(n, n_genes)``. Sets ``cv_mse_``, ``stats_`` and ``best_estimator_``.
        """
        k = min(int(self.n_inner), len(np.unique(groups)))
        sd = np.nanstd(Y, axis=0)
        scale = np.where(sd > 0, sd, 1.0)
        self.cv_mse_ = {}
        if k >= 2:
            seed = check_random_state(self.random_state).randint(MAX_SEED)
            splits = list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(Y, Y, groups))
            for option in self.options:
                err = np.full(Y.shape, np.nan)
                for tr, te in splits:
                    est = clone(template).set_params(pool__stats=tuple(option))
                    est.fit(_safe_indexing(X, tr), Y[tr])
                    pred = np.asarray(est.predict(_safe_indexing(X, te))).reshape(len(te), -1)
                    err[te] = (pred - Y[te]) / scale
                self.cv_mse_[tuple(option)] = float(np.nanmean(err**2))
            self.stats_ = min(self.cv_mse_, key=self.cv_mse_.get)
        else:
            self.stats_ = tuple(self.options[0])
        self.best_estimator_ = clone(template).set_params(pool__stats=self.stats_)
        self.best_estimator_.fit(X, Y[:, 0] if was_1d else Y)

    def predict(self, bags) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(bags)


class PooledParts(NamedTuple):
    """The parts of a fitted pooled-feature model (``BagPooler → … → one regressor per gene``).

    Attributes
    ----------
    features
        ``bags → (n_bags, n_features)``: what the regressors see (pooled statistics, then any scaling); a single
        tile as a bag (``[tile[None]]``) gives that tile's row, for tile-level explanations.
    feature_names
        The ``n_features`` column names, e.g. ``("mean_0", …, "max_0", …)``.
    regressors
        One fitted regressor per gene, in the column order of ``y``.
    """

    features: Callable[[Sequence[np.ndarray]], np.ndarray]
    feature_names: tuple[str, ...]
    regressors: tuple


def pooled_parts(model) -> PooledParts:
    """Split a fitted pooled-feature pipeline (``lgbm``, ``ridge``) into its features and per-gene regressors.

    Raises :class:`TypeError` naming the model when it is not such a pipeline (an attention model, say).

    Examples
    --------
    >>> import numpy as np
    >>> bags = [np.full((3, 2), i, dtype=np.float32) for i in range(6)]
    >>> parts = pooled_parts(ridge_regressor(stats=("mean",)).fit(bags, np.arange(6.0)))
    >>> parts.feature_names, len(parts.regressors), parts.features(bags[:2]).shape
    (('mean_0', 'mean_1'), 1, (2, 2))
    """
    model = getattr(model, "best_estimator_", model)
    steps = getattr(model, "steps", None)
    if not isinstance(model, Pipeline) or not steps or not isinstance(steps[0][1], BagPooler):
        raise TypeError(
            f"{type(model).__name__} is not a pooled-feature pipeline (BagPooler → regressor); only the "
            "pooled baselines (lgbm, ridge) have per-gene regressors on pooled features"
        )
    check_is_fitted(model[-1])
    pre, last = model[:-1], model[-1]
    regressors = tuple(last.estimators_) if isinstance(last, MultiOutputRegressor) else (last,)
    names = tuple(str(n) for n in model[0].get_feature_names_out())
    return PooledParts(lambda bags: np.asarray(pre.transform(bags), dtype=np.float64), names, regressors)


def learned_nothing(model) -> bool:
    """Whether a fitted model predicts the same value for every bag, so it learned nothing from the features.

    True for :class:`MeanRegressor` and for a pooled pipeline whose every per-gene regressor is a LightGBM model that
    made no split (its trees are single leaves: on few patients with its minimum leaf size it fits only the mean).

    >>> import numpy as np
    >>> bags = [np.full((2, 3), float(i), dtype=np.float32) for i in range(4)]
    >>> learned_nothing(lgbm_regressor(min_child_samples=5).fit(bags, np.arange(4.0)))
    True
    >>> learned_nothing(ridge_regressor().fit(bags, np.arange(4.0)))
    False
    """
    if isinstance(model, MeanRegressor):
        return True
    try:
        regressors = pooled_parts(model).regressors
    except TypeError:
        return False
    for reg in regressors:
        booster = getattr(reg, "booster_", None)
        if booster is None:
            return False
        trees = booster.dump_model().get("tree_info", [])
        if any(t.get("num_leaves", 1) > 1 for t in trees):
            return False
    return True
