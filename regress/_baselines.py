"""Baselines behind the bag interface: pooled features → LightGBM / ridge, and the training-mean floor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.linear_model import RidgeCV
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from slide2expr.regress._checks import BagInputError, check_bags, check_targets
from slide2expr.regress._meta import PerGeneRegressor

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


#: Small, regularised LightGBM settings for cohorts of ~40–200 bags with hundreds of pooled features.
LGBM_PARAMS = dict(
    n_estimators=150,
    learning_rate=0.05,
    num_leaves=7,
    max_depth=3,
    min_child_samples=5,
    subsample=0.8,
    subsample_freq=1,
    colsample_bytree=0.3,
    reg_lambda=1.0,
    max_bin=63,
    n_jobs=1,
    verbose=-1,
)


def lgbm_regressor(
    *, stats: tuple[str, ...] = ("mean", "max"), n_jobs: int | None = 2, random_state=None, **lgbm_params
) -> Pipeline:
    """``Pipeline(BagPooler → PerGeneRegressor(LGBMRegressor))``: one LightGBM model per gene.

    The last step's ``estimators_`` holds one fitted ``LGBMRegressor`` per gene (column order of ``y``), so
    ``shap.TreeExplainer`` explains each gene; genes fit in parallel over ``n_jobs`` threads.
    ``lgbm_params`` override :data:`LGBM_PARAMS`.
    """
    from lightgbm import LGBMRegressor

    params = dict(LGBM_PARAMS)
    params.update(lgbm_params)
    params["random_state"] = random_state
    return Pipeline(
        [
            ("pool", BagPooler(stats=tuple(stats))),
            ("lgbm", PerGeneRegressor(LGBMRegressor(**params), n_jobs=n_jobs)),
        ]
    )


def ridge_regressor(*, stats: tuple[str, ...] = ("mean",), alphas=None) -> Pipeline:
    """``Pipeline(BagPooler → StandardScaler → RidgeCV)``: alpha chosen per gene by efficient leave-one-out."""
    alphas = np.logspace(-1, 6, 22) if alphas is None else alphas
    return Pipeline(
        [
            ("pool", BagPooler(stats=tuple(stats))),
            ("scale", StandardScaler()),
            ("ridge", RidgeCV(alphas=alphas, alpha_per_target=True)),
        ]
    )


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
    >>> parts = pooled_parts(ridge_regressor().fit(bags, np.arange(6.0)))
    >>> parts.feature_names, len(parts.regressors), parts.features(bags[:2]).shape
    (('mean_0', 'mean_1'), 1, (2, 2))
    """
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
