"""A minimal bag pooler with the contract's interface (mean and max per dimension), for fabricated runs."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class MeanMaxPooler(TransformerMixin, BaseEstimator):
    """Pool a list of ``(n_tiles, d)`` bags into ``(n_bags, 2 d)``: per-dimension mean, then max."""

    def fit(self, bags, y=None):
        self.n_features_in_ = int(np.asarray(bags[0]).shape[1])
        return self

    def transform(self, bags):
        return np.stack([np.concatenate([np.mean(b, axis=0), np.max(b, axis=0)]) for b in bags])

    def get_feature_names_out(self, input_features=None):
        d = self.n_features_in_
        return np.array([f"mean_{i}" for i in range(d)] + [f"max_{i}" for i in range(d)], dtype=object)
