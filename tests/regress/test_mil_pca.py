"""AttentionMILRegressor(pca_components=k): a PCA of the training tiles feeds the network (TileProjection)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.stats import pearsonr

from slide2expr.regress import AttentionMILRegressor, BagInputError
from tests.regress._data import planted_bags


def _embedded(n_bags, rng, mixing):
    """Planted bags (6 features) seen through a random linear map into 32-d, plus a little isotropic noise:
    like encoder embeddings, the signal lies in a low-dimensional subspace that the leading PCs capture."""
    bags, y, marks = planted_bags(n_bags, rng, d=6)
    bags = [(b @ mixing + 0.05 * rng.normal(size=(len(b), 32))).astype(np.float32) for b in bags]
    return bags, y, marks


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(6, 32)) / np.sqrt(6)
    return _embedded(120, rng, mixing), _embedded(60, rng, mixing)


def test_pca_projection_is_fitted_on_training_tiles_and_learns(planted):
    (bags, y, _), (test_bags, y_test, _) = planted
    mil = AttentionMILRegressor(pca_components=8, random_state=0, device="cpu").fit(bags, y)
    assert mil.n_features_in_ == 32
    proj = mil.tile_projection_
    assert proj.projection_.shape == (32, 8) and proj.offset_.shape == (8,) and proj.n_features_out_ == 8
    assert mil.module_.embed[0].in_features == 8
    ev = proj.explained_variance_
    assert ev.shape == (8,) and np.all(np.diff(ev) <= 1e-6)
    # the projected training tiles are centred and uncorrelated, with the explained variances
    z = np.concatenate(bags) @ proj.projection_ + proj.offset_
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.diag(ev), atol=1e-3)
    r = pearsonr(mil.predict(test_bags), y_test).statistic
    assert r >= 0.9, r
    # predicting other bags leaves the fitted projection alone; a pickled model predicts the same
    before = proj.projection_.copy()
    att = mil.predict_tiles(test_bags[:1])[0].attention
    assert att.shape == (len(test_bags[0]), 1)
    np.testing.assert_array_equal(mil.tile_projection_.projection_, before)
    again = pickle.loads(pickle.dumps(mil))
    np.testing.assert_allclose(again.predict(test_bags[:5]), mil.predict(test_bags[:5]), rtol=1e-6)


def test_sixteen_axes_by_default_and_none_keeps_the_features(planted):
    (bags, y, _), _ = planted
    mil = AttentionMILRegressor(max_epochs=2, random_state=0, device="cpu").fit(bags[:20], y[:20])
    assert mil.tile_projection_.projection_.shape == (32, 16) and mil.module_.embed[0].in_features == 16
    raw = AttentionMILRegressor(max_epochs=2, pca_components=None, random_state=0, device="cpu")
    raw.fit(bags[:20], y[:20])
    assert raw.tile_projection_.projection_ is None and raw.module_.embed[0].in_features == 32


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_invalid_pca_components_names_the_parameter(planted, bad):
    (bags, y, _), _ = planted
    with pytest.raises(BagInputError, match="pca_components"):
        AttentionMILRegressor(pca_components=bad, max_epochs=1).fit(bags[:10], y[:10])


def test_pca_components_above_the_feature_dimension_keep_every_axis(planted):
    (bags, y, _), _ = planted
    mil = AttentionMILRegressor(pca_components=33, max_epochs=1, device="cpu").fit(bags[:10], y[:10])
    assert mil.tile_projection_.n_features_out_ == 32
