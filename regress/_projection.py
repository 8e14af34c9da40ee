"""``TileProjection``: the tile-feature step a bag regressor fits in ``fit`` — standardisation, then optionally the
leading principal axes — both fitted on a bounded random sample of the training tiles.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> bags = [rng.normal(size=(20, 6)).astype(np.float32) for _ in range(4)]
>>> proj = TileProjection(pca_components=3).fit(bags)
>>> [b.shape for b in proj.transform(bags[:2])]
[(20, 3), (20, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from slide2expr.regress._checks import BagInputError, check_bags

#: Tiles sampled (in proportion to bag size) to fit the standardisation and the PCA: plenty for per-dimension
#: moments and a covariance, and a bound on memory whatever the cohort's size.
TILE_SAMPLE_ROWS = 50_000
#: A feature dimension with a smaller standard deviation is constant: it is centred but not scaled.
MIN_FEATURE_STD = 1e-8


def tile_sample(
    bags: Sequence[np.ndarray], rng: np.random.Generator, max_rows: int = TILE_SAMPLE_ROWS
) -> np.ndarray:
    """All tiles as one float32 array, or a random subsample of about ``max_rows`` tiles in proportion to bag size."""
    lengths = np.array([len(b) for b in bags])
    total = int(lengths.sum())
    if total <= max_rows:
        return np.concatenate([np.asarray(b, dtype=np.float32) for b in bags])
    per = np.maximum(1, np.round(lengths / total * max_rows).astype(int))
    return np.concatenate(
        [
            np.asarray(b[np.sort(rng.choice(len(b), size=min(k, len(b)), replace=False))], np.float32)
            for b, k in zip(bags, per, strict=True)
        ]
    )


def sample_stats(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and 1/std (1 where the std is below :data:`MIN_FEATURE_STD`) of ``sample``, float32."""
    mean = sample.mean(axis=0, dtype=np.float64)
    std = sample.std(axis=0, dtype=np.float64)
    scale = np.where(std > MIN_FEATURE_STD, 1.0 / np.maximum(std, MIN_FEATURE_STD), 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def pca_basis(
    sample: np.ndarray, pca_components: int, *, x_mean: np.ndarray | None, x_scale: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading principal axes of ``sample`` (``(n, d)`` tiles), standardised with ``x_mean``/``x_scale`` if given.

    Returns ``(mean, components, explained_variance)``: ``mean`` ``(d,)`` is the (standardised) sample mean that is
    subtracted before projecting, ``components`` ``(d, k)`` the unit principal axes (sign fixed so that the largest
    loading of each is positive), ``explained_variance`` ``(k,)`` the variance along each, with
    ``k = min(pca_components, n, d)``.
    """
    x = np.asarray(sample, dtype=np.float64)
    if x_mean is not None:
        x = (x - x_mean) * x_scale
    mean = x.mean(axis=0)
    x = x - mean
    cov = x.T @ x / max(len(x) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    k = int(min(pca_components, x.shape[0], x.shape[1]))
    order = np.argsort(evals)[::-1][:k]
    comps, evals = evecs[:, order], np.clip(evals[order], 0.0, None)
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    return mean.astype(np.float32), comps.astype(np.float32), evals.astype(np.float32)


class TileProjection(TransformerMixin, BaseEstimator):
    """Standardise tile features with training statistics and optionally project them onto their leading
    principal axes; ``transform`` maps bags to bags.

    Parameters
    ----------
    standardize : bool
        Centre each feature dimension and divide it by its standard deviation.
    pca_components : int or None
        Keep this many principal axes of the (standardised) features, or as many as there are features if fewer;
        None keeps the features.
    max_rows : int
        Size of the random tile sample both are fitted on.
    random_state : int or None
        Seed of the tile sample when ``fit`` gets no ``rng``.

    Attributes
    ----------
    mean_, scale_ : ndarray of shape (n_features,) float32, or None
        The standardisation (``(x - mean_) * scale_``); None without ``standardize``.
    projection_, offset_ : ndarray of shape (n_features, k) and (k,) float32, or None
        With ``pca_components``, a tile maps to ``x @ projection_ + offset_`` (standardisation and centring
        folded in); None without.
    explained_variance_ : ndarray of shape (k,) or None
        Variance of the standardised features along each principal axis.
    """

    def __init__(
        self,
        *,
        standardize: bool = True,
        pca_components: int | None = None,
        max_rows: int = TILE_SAMPLE_ROWS,
        random_state=None,
    ):
        self.standardize = standardize
        self.pca_components = pca_components
        self.max_rows = max_rows
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    def fit(self, bags, y=None, *, rng: np.random.Generator | None = None):
        """Fit on the tiles of ``bags``; the tile sample draws from ``rng`` when given (a regressor passes the
        generator of its training loop, so one stream serves the sample and the batches)."""
        bags = check_bags(bags, who=type(self).__name__, finite=False)  # the bounded sample is checked below
        self.n_features_in_ = d = bags[0].shape[1]
        k = None if self.pca_components is None else min(int(self.pca_components), d)
        rng = np.random.default_rng(self.random_state) if rng is None else rng
        sample = tile_sample(bags, rng, self.max_rows) if (self.standardize or k) else None
        if sample is not None and not np.isfinite(sample).all():
            raise BagInputError("Input X contains NaN or infinity: the tile sample has non-finite features")
        self.mean_, self.scale_ = sample_stats(sample) if self.standardize else (None, None)
        self.projection_ = self.offset_ = self.explained_variance_ = None
        if k:
            pmean, comps, self.explained_variance_ = pca_basis(
                sample, k, x_mean=self.mean_, x_scale=self.scale_
            )
            proj = comps if self.scale_ is None else comps * self.scale_[:, None]
            shift = pmean if self.mean_ is None else self.mean_ * self.scale_ + pmean
            self.projection_ = proj.astype(np.float32)
            self.offset_ = (-(shift @ comps)).astype(np.float32)
        return self

    def network_inputs(self, bags: Sequence[np.ndarray]):
        """``(bags, mean, scale)`` for a batch builder: projected bags (float32 copies) with no further scaling, or
        the bags as given with the standardisation to apply per batch (no copy of the cohort)."""
        check_is_fitted(self, "n_features_in_")
        if self.projection_ is None:
            return bags, self.mean_, self.scale_
        return [np.asarray(b, dtype=np.float32) @ self.projection_ + self.offset_ for b in bags], None, None

    def transform(self, bags) -> list[np.ndarray]:
        """Each bag's tiles as the network sees them: ``(n_tiles, k)`` or ``(n_tiles, n_features)`` float32."""
        check_is_fitted(self, "n_features_in_")
        bags = check_bags(bags, n_features=self.n_features_in_, who=type(self).__name__)
        out, mean, scale = self.network_inputs(bags)
        if mean is None:
            return [np.asarray(b, dtype=np.float32) for b in out]
        return [(np.asarray(b, dtype=np.float32) - mean) * scale for b in out]

    @property
    def n_features_out_(self) -> int:
        """Features per tile after the projection."""
        check_is_fitted(self, "n_features_in_")
        return self.n_features_in_ if self.projection_ is None else self.projection_.shape[1]
