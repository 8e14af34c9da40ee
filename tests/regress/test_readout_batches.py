"""The readouts of a fitted network read tile scores batch by batch: the features are those of one call over every
bag, and above ``THRESHOLD_SAMPLE_TILES`` the thresholds come from a sample of the tiles, memory bounded either way."""

from __future__ import annotations

import numpy as np
import pytest

from slide2expr.regress import AttentionMILRegressor, _batches, _readout


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(int(n), 4)).astype("float32") for n in rng.integers(20, 60, size=14)]
    Y = np.column_stack([[b[:, 0].mean() for b in bags], rng.normal(size=14)])
    net = AttentionMILRegressor(max_epochs=3, min_epochs=0, random_state=0).fit(bags, Y)
    return net, bags, Y


def test_features_batch_by_batch_equal_one_call(fitted, monkeypatch):
    net, bags, Y = fitted
    t = _readout.learn_thresholds(net, bags, Y)
    whole = _readout.readout_features(net, bags, thresholds=t)
    monkeypatch.setattr(_batches, "TILE_BATCH", 70)
    calls = []
    real = net.predict_tiles
    monkeypatch.setattr(net, "predict_tiles", lambda b: calls.append(sum(map(len, b))) or real(b))
    batched = _readout.readout_features(net, bags, thresholds=t)
    assert len(calls) > 3 and max(calls) <= max(70, max(map(len, bags)))
    np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-6)


def test_thresholds_from_a_sample_above_the_cap(fitted, monkeypatch):
    net, bags, Y = fitted
    whole = _readout.learn_thresholds(net, bags, Y)
    monkeypatch.setattr(_batches, "TILE_BATCH", 70)
    monkeypatch.setattr(_readout, "THRESHOLD_SAMPLE_TILES", sum(map(len, bags)) // 2)
    sampled = _readout.learn_thresholds(net, bags, Y)
    assert sampled.shape == whole.shape and np.isfinite(sampled).all()
    scores = np.concatenate([s.tile_pred for s in net.predict_tiles(bags)])
    lo, hi = np.quantile(scores, [0.4, 0.99], axis=0)
    assert ((sampled[:, 0] >= lo) & (sampled[:, 0] <= hi)).all()  # a candidate quantile of the tiles' scores


def test_thresholds_read_tile_scores_only(fitted, monkeypatch):
    net, bags, Y = fitted
    want = _readout.learn_thresholds(net, bags, Y)

    def no_bag_outputs(b):
        raise AssertionError("learn_thresholds ran the network for bag outputs it does not use")

    monkeypatch.setattr(net, "predict", no_bag_outputs)
    np.testing.assert_array_equal(_readout.learn_thresholds(net, bags, Y), want)
    monkeypatch.setattr(_batches, "TILE_BATCH", 70)
    monkeypatch.setattr(_readout, "THRESHOLD_SAMPLE_TILES", sum(map(len, bags)) // 2)
    assert np.isfinite(_readout.learn_thresholds(net, bags, Y)).all()
