"""Bag estimators seen through a 2-D lens, so scikit-learn's generic estimator checks can run on them.

A bag estimator declares ``two_d_array = False``, and scikit-learn then runs none of its generic checks. These
subclasses turn a 2-D ``X`` of shape ``(n, d)`` into ``n`` bags of one tile each (anything else is passed on as
is), so the checks exercise the real ``fit``/``predict`` code. Checks that feed other input kinds (sparse, pandas,
NaN, complex) or expect scikit-learn's own 2-D error messages fail by design; tests/regress/test_sklearn.py names
and explains each.
"""

from __future__ import annotations

import numpy as np

from slide2expr.regress import AttentionMILRegressor, HE2RNARegressor, MeanRegressor


def as_bags(X):
    if isinstance(X, np.ndarray) and X.ndim == 2:
        return [X[i : i + 1] for i in range(len(X))]
    return X


class _OneTile:
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = False
        return tags

    def fit(self, X, y, **kwargs):
        return super().fit(as_bags(X), y, **kwargs)

    def predict(self, X):
        return super().predict(as_bags(X))


class OneTileMIL(_OneTile, AttentionMILRegressor):
    pass


class OneTileHE2RNA(_OneTile, HE2RNARegressor):
    pass


class OneTileMean(_OneTile, MeanRegressor):
    pass
