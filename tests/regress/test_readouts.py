"""The bag readouts of NestedMIL on digits bags (a fraction target, where equal weights on good tile predictions are
optimal) and on planted bags; the nested selection sees only the bags it is fitted on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.datasets import load_digits

from slide2expr.regress import AttentionMILRegressor, BagInputError, NestedMIL, make_model
from slide2expr.regress._readout import FEATURES, learn_thresholds, readout_features
from tests.regress._data import planted_bags

#: Digits × bag sizes of the readout check; the tests of test_mil use the nines in bags of 5–20.
DIGITS = (0, 4, 9)
SIZES = ((5, 20), (30, 60))


def fraction_bags(n_bags, rng, images, is_target, size):
    """Bags of ``size`` (min, max) digit images, target = the share of the target digit (drawn from U(0, 0.6))."""
    pos, neg = np.flatnonzero(is_target), np.flatnonzero(~is_target)
    bags, ys = [], []
    for _ in range(n_bags):
        m = int(rng.integers(size[0], size[1] + 1))
        k = int(rng.binomial(m, rng.uniform(0, 0.6)))
        idx = np.r_[rng.choice(pos, k), rng.choice(neg, m - k)]
        bags.append(images[rng.permutation(idx)])
        ys.append(k / m)
    return bags, np.array(ys)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target


def _digit_r(digits, digit, size, seed=0):
    images, labels = digits
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    tr, te = order[:1000], order[1000:]  # train and test bags draw from disjoint images
    bags, y = fraction_bags(160, rng, images[tr], labels[tr] == digit, size)
    test_bags, y_test = fraction_bags(80, rng, images[te], labels[te] == digit, size)
    model = make_model("mil", params={"device": "cpu"}, random_state=0).fit(bags, y)
    return pearsonr(model.predict(test_bags), y_test).statistic, model


def test_digits_fraction_of_nines_at_defaults(digits):
    r, model = _digit_r(digits, 9, SIZES[0])
    assert isinstance(model, NestedMIL)
    assert r >= 0.93, r


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("digit", DIGITS)
def test_digits_fractions_at_defaults(digits, digit, size):
    r, _ = _digit_r(digits, digit, size, seed=digit)
    assert r >= 0.93, (digit, size, r)


@pytest.fixture(scope="module")
def planted_net():
    rng = np.random.default_rng(5)
    bags, y, marks = planted_bags(60, rng, d=8)
    net = AttentionMILRegressor(max_epochs=15, min_epochs=0, device="cpu", random_state=0).fit(bags, y)
    return net, bags, y, marks


def test_readout_features_are_what_they_say(planted_net):
    net, bags, y, _ = planted_net
    thresholds = learn_thresholds(net, bags, y[:, None])
    F = readout_features(net, bags[:5], thresholds=thresholds)
    assert F.shape == (5, 1, len(FEATURES))
    np.testing.assert_allclose(F[:, 0, 0], net.predict(bags[:5]), rtol=1e-6)
    for b, s in enumerate(net.predict_tiles(bags[:5])):
        p = s.tile_pred[:, 0]
        assert F[b, 0, 1] == pytest.approx(p.mean(), rel=1e-5)
        assert F[b, 0, 3] == pytest.approx(np.quantile(p, 0.9), rel=1e-5)
        assert F[b, 0, 4] == pytest.approx((p > thresholds[0, 0]).mean())
        assert F[b, 0, 5] == pytest.approx((s.attention_logit[:, 0] > thresholds[0, 1]).mean())


def test_nested_selection_never_sees_the_bags_it_predicts(planted_net, monkeypatch):
    _, bags, y, _ = planted_net
    seen = []
    fit = AttentionMILRegressor.fit

    def spy(self, b, yy, groups=None, *, eval_set=None):
        seen.append({id(x) for x in b} | {id(x) for x in eval_set[0]})
        return fit(self, b, yy, groups=groups, eval_set=eval_set)

    monkeypatch.setattr(AttentionMILRegressor, "fit", spy)
    net = AttentionMILRegressor(max_epochs=3, min_epochs=0, patience=2, device="cpu")
    model = NestedMIL(net, n_inner=3, random_state=0).fit(bags[:40], y[:40], groups=np.arange(40) // 2)
    assert len(seen) == 3 and all(s <= {id(x) for x in bags[:40]} for s in seen)
    assert len(model.members_[0]) == 3 and len(model.choice_) == 1
    # the inner folds are patient-grouped: a patient's two bags are both in or both out of a network's training set
    for est, _ in model.members_[0]:
        assert est.n_features_in_ == 8


def test_nested_grid_chooses_per_gene_and_predicts_tiles(planted_net):
    _, bags, y, _ = planted_net
    Y = np.column_stack([y, -y])
    net = AttentionMILRegressor(max_epochs=4, min_epochs=0, patience=2, device="cpu")
    grid = {"hidden_dim": [8, 16]}
    model = NestedMIL(net, n_inner=2, grid=grid, random_state=0).fit(bags, Y)
    assert len(model.candidates_) == 2 and len(model.choice_) == 2
    assert {(s["candidate"], s["readout"]) for s in model.selection_ if s["gene"] == 0} == {
        (c, r) for c in (0, 1) for r in ("output", "stack")
    }
    pred = model.predict(bags[:3])
    assert pred.shape == (3, 2)
    scores = model.predict_tiles(bags[:3])
    assert scores[0].attention.shape == scores[0].tile_pred.shape == (len(bags[0]), 2)
    np.testing.assert_allclose(scores[0].attention.sum(axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"n_inner": 1}, "n_inner"), ({"readouts": ("median",)}, "readouts"), ({"grid": {"lr": 3}}, "grid")],
)
def test_bad_nested_settings_are_named(planted_net, kw, match):
    _, bags, y, _ = planted_net
    net = AttentionMILRegressor(max_epochs=1, device="cpu")
    with pytest.raises(BagInputError, match=match):
        NestedMIL(net, **kw).fit(bags[:10], y[:10])
