"""TileProjection: the tile step fitted inside a torch regressor's fit (standardisation, PCA, the tile sample)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from slide2expr.regress import AttentionMILRegressor, BagInputError, TileProjection
from slide2expr.regress._projection import tile_sample


@pytest.fixture(scope="module")
def bags():
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 3.0, 6)
    return [
        (rng.normal(size=(int(rng.integers(5, 40)), 6)) * scale + 2).astype(np.float32) for _ in range(20)
    ]


def test_standardisation_uses_the_training_tiles(bags):
    proj = TileProjection().fit(bags)
    tiles = np.concatenate(bags)
    np.testing.assert_allclose(proj.mean_, tiles.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(1 / proj.scale_, tiles.std(axis=0), rtol=1e-5)
    z = np.concatenate(proj.transform(bags))
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-4)
    assert proj.projection_ is None and proj.n_features_out_ == 6
    lazy, mean, scale = proj.network_inputs(bags)  # the bags as given, standardised per batch
    assert lazy is bags and mean is proj.mean_ and scale is proj.scale_
    off = TileProjection(standardize=False).fit(bags)
    assert off.mean_ is None and np.array_equal(off.transform(bags[:1])[0], bags[0])


def test_pca_folds_the_standardisation_into_one_affine_map(bags):
    proj = TileProjection(pca_components=3).fit(bags)
    assert proj.projection_.shape == (6, 3) and proj.offset_.shape == (3,) and proj.n_features_out_ == 3
    z = np.concatenate(proj.transform(bags))
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.diag(proj.explained_variance_), atol=1e-3)
    projected, mean, scale = proj.network_inputs(bags[:2])
    assert mean is None and scale is None
    np.testing.assert_array_equal(projected[0], bags[0] @ proj.projection_ + proj.offset_)


def test_the_tile_sample_draws_from_the_generator_it_is_given(bags):
    a = TileProjection(max_rows=100).fit(bags, rng=np.random.default_rng(5))
    b = TileProjection(max_rows=100).fit(bags, rng=np.random.default_rng(5))
    c = TileProjection(max_rows=100, random_state=5).fit(bags)
    np.testing.assert_array_equal(a.mean_, b.mean_)
    np.testing.assert_array_equal(a.mean_, c.mean_)  # random_state seeds the same generator
    rng = np.random.default_rng(5)
    sample = tile_sample(bags, rng, 100)
    assert 90 <= len(sample) <= 120 and not np.array_equal(a.mean_, np.concatenate(bags).mean(axis=0))
    np.testing.assert_allclose(a.mean_, sample.mean(axis=0), rtol=1e-6)
    # what the regressor fits is its tile_projection_, from the same stream as its batches
    mil = AttentionMILRegressor(pca_components=2, max_epochs=1, device="cpu", random_state=0).fit(
        bags, np.arange(20.0)
    )
    assert isinstance(mil.tile_projection_, TileProjection) and mil.tile_projection_.n_features_out_ == 2


def test_errors(bags):
    with pytest.raises(NotFittedError):
        TileProjection().transform(bags)
    bad = [b.copy() for b in bags]
    bad[3][0, 0] = np.nan
    with pytest.raises(BagInputError, match="non-finite"):
        TileProjection().fit(bad)
    with pytest.raises(BagInputError, match="4 features"):
        TileProjection().fit(bags).transform([np.zeros((2, 4), np.float32)])
