"""AttentionMILRegressor and HE2RNARegressor: learning, attention, modes, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.datasets import load_digits

from slide2expr.regress import (
    GRAZIANI2022,
    AttentionMILRegressor,
    BagInputError,
    HE2RNARegressor,
    make_model,
    ridge_regressor,
)
from tests.regress._data import digit_bags, mean_bag_auroc, planted_bags

#: A quick network for the tests of the mechanism (gated attention, dropout, half the tiles per step, 50 epochs);
#: the pre-registered defaults inside NestedMIL are tested in test_readouts.py and measured by
#: benchmarks/validity.py.
QUICK = dict(
    attention="gated", dropout=0.1, max_epochs=50, patience=10, min_epochs=20, max_tiles=512, tile_fraction=0.5,
    pca_components=None, device="cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    return planted_bags(120, rng), planted_bags(60, rng)


@pytest.fixture(scope="module")
def planted_mil(planted):
    (bags, y, _), _ = planted
    return AttentionMILRegressor(**QUICK, random_state=0).fit(bags, y)


def test_planted_signal_mil_beats_mean_pooled_ridge(planted, planted_mil):
    (bags, y, _), (test_bags, y_test, _) = planted
    r_mil = pearsonr(planted_mil.predict(test_bags), y_test).statistic
    r_ridge = pearsonr(ridge_regressor().fit(bags, y).predict(test_bags), y_test).statistic
    assert r_mil >= 0.9, r_mil
    assert r_mil > r_ridge + 0.2, (r_mil, r_ridge)


def test_planted_attention_ranks_planted_tiles_first(planted, planted_mil):
    _, (test_bags, _, marks) = planted
    out = planted_mil.predict_tiles(test_bags)
    assert len(out) == len(test_bags)
    for (att, tile, _), bag in zip(out, test_bags, strict=True):
        assert att.shape == tile.shape == (len(bag), 1)
        assert att.dtype == np.float32
        np.testing.assert_allclose(att.sum(axis=0), 1.0, rtol=1e-5)
    assert mean_bag_auroc([t.attention[:, 0] for t in out], marks) >= 0.9


def test_instance_mode_bag_prediction_is_attention_weighted_tile_predictions(planted, planted_mil):
    _, (test_bags, _, _) = planted
    pred = planted_mil.predict(test_bags[:5])
    for (att, tile, _), p in zip(planted_mil.predict_tiles(test_bags[:5]), pred, strict=True):
        assert np.isclose((att[:, 0] * tile[:, 0]).sum(), p, rtol=1e-4, atol=1e-4)


def test_digits_bags_fraction_of_nines():
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    is_nine = digits.target == 9
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    tr, te = order[:900], order[900:]  # train and test bags draw from disjoint images
    bags, y, _ = digit_bags(200, rng, images[tr], is_nine[tr])
    test_bags, y_test, marks = digit_bags(80, rng, images[te], is_nine[te])
    mil = AttentionMILRegressor(**QUICK, random_state=0).fit(bags, y)
    assert pearsonr(mil.predict(test_bags), y_test).statistic >= 0.9
    tiles = mil.predict_tiles(test_bags)
    # the per-tile predictions find the nines: AUROC within a bag (chance = 0.5)
    assert mean_bag_auroc([t.tile_pred[:, 0] for t in tiles], marks) >= 0.95
    # the attention ranks them above the other digits too, but only modestly, and it should: for a fraction
    # target, sum_i a_i p_i equals k/m for every bag only when the attention is uniform (with p = 1 on nines and 0
    # elsewhere, weights w on nines give k w / (k w + m - k)), so the optimum puts the evidence in p, not in a.
    assert mean_bag_auroc([t.attention[:, 0] for t in tiles], marks) >= 0.7
    # Ilse et al.'s own model for MNIST-bags (attention-pooled embedding → head) has no per-tile prediction to
    # carry the evidence, so its attention does
    ilse = AttentionMILRegressor(**QUICK, mode="embedding", random_state=0).fit(bags, y)
    assert pearsonr(ilse.predict(test_bags), y_test).statistic >= 0.9
    assert mean_bag_auroc([t.attention[:, 0] for t in ilse.predict_tiles(test_bags)], marks) >= 0.88


def test_multi_gene_and_embedding_mode():
    rng = np.random.default_rng(1)
    bags, y, marks = planted_bags(80, rng)
    Y = np.column_stack([y, -2 * y + 5])
    mil = AttentionMILRegressor(
        mode="embedding", attention="tanh", max_epochs=15, random_state=0, device="cpu"
    )
    pred = mil.fit(bags, Y).predict(bags)
    assert pred.shape == (80, 2)
    att, tile, _ = mil.predict_tiles(bags[:2])[0]
    assert att.shape == (len(bags[0]), 2) and tile is None
    assert mil.y_mean_.shape == (2,) and np.isclose(mil.y_mean_[1], Y[:, 1].mean())
    assert len(mil.history_) == mil.n_epochs_ >= 1


def test_nan_targets_are_masked():
    rng = np.random.default_rng(2)
    bags, y, _ = planted_bags(30, rng)
    Y = np.column_stack([y, y])
    Y[:5, 1] = np.nan
    mil = AttentionMILRegressor(max_epochs=3, random_state=0, device="cpu").fit(bags, Y)
    assert np.isfinite(mil.predict(bags)).all()
    assert np.isclose(mil.y_mean_[1], np.nanmean(Y[:, 1]))


def test_deterministic_on_cpu_for_a_random_state(planted):
    (bags, y, _), (test_bags, _, _) = planted
    kw = dict(max_epochs=4, random_state=7, device="cpu")
    a = AttentionMILRegressor(**kw).fit(bags[:40], y[:40], groups=np.arange(40) // 2).predict(test_bags)
    b = AttentionMILRegressor(**kw).fit(bags[:40], y[:40], groups=np.arange(40) // 2).predict(test_bags)
    c = AttentionMILRegressor(**{**kw, "random_state": 8}).fit(bags[:40], y[:40]).predict(test_bags)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_early_stopping_restores_best_epoch(planted):
    (bags, y, _), _ = planted
    mil = AttentionMILRegressor(max_epochs=40, patience=3, min_epochs=6, random_state=0, device="cpu")
    mil.fit(bags, y)
    val = [h["val_loss"] for h in mil.history_]
    assert mil.best_epoch_ == int(np.argmin(val))
    assert mil.n_epochs_ >= 6  # never stops before min_epochs
    assert mil.n_epochs_ == 40 or mil.n_epochs_ == max(6, mil.best_epoch_ + 1 + 3)


def test_eval_set_is_the_early_stopping_set(planted):
    (bags, y, _), (test_bags, y_test, _) = planted
    kw = dict(max_epochs=12, patience=2, min_epochs=0, random_state=0, device="cpu")
    mil = AttentionMILRegressor(**kw).fit(bags[:60], y[:60], eval_set=(test_bags[:20], y_test[:20]))
    assert np.isclose(mil.y_mean_[0], y[:60].mean())  # scaling and projection from the training bags only
    vpred = mil.predict(test_bags[:20])
    val = mil.history_[mil.best_epoch_]["val_loss"]
    assert np.isclose(np.mean(((vpred - y_test[:20]) / mil.y_scale_[0]) ** 2), val, rtol=1e-4)
    with pytest.raises(BagInputError, match="eval_set"):
        AttentionMILRegressor(**kw).fit(bags[:10], y[:10], eval_set=test_bags[:3])
    with pytest.raises(BagInputError, match="2 target columns"):
        AttentionMILRegressor(**kw).fit(bags[:10], y[:10], eval_set=(test_bags[:3], np.zeros((3, 2))))


def test_graziani2022_preset_applies_under_the_given_parameters():
    assert make_model("mil", params={"preset": "graziani2022"}).estimator.get_params() == {
        **AttentionMILRegressor().get_params(),
        **GRAZIANI2022,
        "random_state": None,
    }
    one = make_model("mil", params={"preset": "graziani2022", "per_gene": False, "lr": 0.01})
    assert (
        isinstance(one, AttentionMILRegressor) and one.get_params()["optimizer"] == "sgd" and one.lr == 0.01
    )


def test_per_gene_fits_one_model_per_gene_and_clamps():
    rng = np.random.default_rng(3)
    bags, y, _ = planted_bags(20, rng)
    Y = np.column_stack([y, 100 * y])
    params = {"preset": "graziani2022", "max_epochs": 2, "device": "cpu", "clamp": 0.5}
    est = make_model("mil", params=params, random_state=0).fit(bags, Y)
    assert len(est.estimators_) == 2 and all(e.n_outputs_ == 1 for e in est.estimators_)
    pred = est.predict(bags)
    assert pred.shape == (20, 2)
    # bag outputs and tile predictions are clamped on the z-scored scale: within mean ± 0.5 sd of each gene
    z = (pred - Y.mean(0)) / Y.std(0)
    assert np.abs(z).max() <= 0.5 + 1e-5
    att, tile, _ = est.predict_tiles(bags[:1])[0]
    assert att.shape == tile.shape == (len(bags[0]), 2)
    assert (np.abs((tile - Y.mean(0)) / Y.std(0)) <= 0.5 + 1e-5).all()


def _positive_levels(bags, y, marks):
    """Planted bags whose marked tiles carry 2 + |L| (top-k pooling can represent a high-tile signal)."""
    out = []
    for b, level, m in zip(bags, y, marks, strict=True):
        b = b.copy()
        b[m, 1] = 2 + abs(level)
        out.append(b)
    return out, 2 + np.abs(y)


def test_he2rna_topk_weights_and_learning(planted):
    (bags, y, marks), (test_bags, y_test, test_marks) = planted
    bags, y = _positive_levels(bags, y, marks)
    test_bags, y_test = _positive_levels(test_bags, y_test, test_marks)
    est = HE2RNARegressor(random_state=0, device="cpu", ks=(1, 5, 10), patience=None).fit(bags, y)
    assert pearsonr(est.predict(test_bags), y_test).statistic > 0.7
    ((att, tile, _),) = est.predict_tiles(test_bags[:1])
    np.testing.assert_allclose(att.sum(0), 1.0, rtol=1e-5)
    # the bag value is the average over ks of the top-k mean of tile predictions
    s = np.sort(tile[:, 0])[::-1]
    expect = np.mean([s[:k].mean() for k in (1, 5, 10)])
    assert np.isclose(est.predict(test_bags[:1])[0], expect, rtol=1e-4, atol=1e-4)
    assert np.isclose((att[:, 0] * tile[:, 0]).sum(), expect, rtol=1e-4, atol=1e-4)


def test_val_max_tiles_subsamples_only_the_early_stopping_bags(planted):
    (bags, y, _), (test_bags, y_test, _) = planted
    longest = max(len(b) for b in test_bags[:20])
    kw = dict(max_epochs=8, patience=2, min_epochs=0, random_state=0, device="cpu")

    def fit(**extra):
        return AttentionMILRegressor(**kw, **extra).fit(
            bags[:60], y[:60], eval_set=(test_bags[:20], y_test[:20])
        )

    every, at_least = fit(), fit(val_max_tiles=longest)
    assert [h["val_loss"] for h in every.history_] == [h["val_loss"] for h in at_least.history_]
    np.testing.assert_array_equal(every.predict(test_bags), at_least.predict(test_bags))
    few = fit(val_max_tiles=3)
    assert [h["val_loss"] for h in few.history_] != [h["val_loss"] for h in every.history_]
    # prediction sees every tile; the inner validation split (no eval_set) is subsampled the same way
    assert len(few.predict_tiles(test_bags[:1])[0].attention) == len(test_bags[0])
    inner = AttentionMILRegressor(**kw, val_max_tiles=3).fit(bags[:60], y[:60], groups=np.arange(60) // 2)
    assert inner.n_epochs_ >= 1
    for bad in (0, -1, 2.5):
        with pytest.raises(BagInputError, match="val_max_tiles"):
            AttentionMILRegressor(val_max_tiles=bad, max_epochs=1, device="cpu").fit(bags[:4], y[:4])


def test_bad_input_is_named():
    mil = AttentionMILRegressor(max_epochs=1, device="cpu")
    with pytest.raises(BagInputError, match="list of"):
        mil.fit(np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(BagInputError, match=r"bags\[1\] has 5 features"):
        mil.fit([np.zeros((3, 4)), np.zeros((2, 5))], [0.0, 1.0])
    with pytest.raises(BagInputError, match=r"bags\[0\] has no tiles"):
        mil.fit([np.zeros((0, 4)), np.zeros((2, 4))], [0.0, 1.0])
    with pytest.raises(BagInputError, match="3 rows but there are 2 bags"):
        mil.fit([np.zeros((3, 4)), np.zeros((2, 4))], [0.0, 1.0, 2.0])
    with pytest.raises(BagInputError, match="mode must be"):
        AttentionMILRegressor(mode="nope").fit([np.zeros((3, 4))] * 2, [0.0, 1.0])
    fitted = AttentionMILRegressor(max_epochs=1, device="cpu").fit([np.ones((3, 4))] * 2, [0.0, 1.0])
    with pytest.raises(BagInputError, match="another encoder"):
        fitted.predict([np.zeros((3, 6))])
