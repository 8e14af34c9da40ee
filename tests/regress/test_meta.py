"""The meta-estimators: SeedEnsemble (n_members seeds averaged) and PerGeneRegressor (one model per gene)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.utils import check_random_state

from slide2expr.regress import (
    AttentionMILRegressor,
    BagInputError,
    PerGeneRegressor,
    SeedEnsemble,
    TileScores,
    make_model,
)
from tests.regress._data import planted_bags

FAST = {"max_epochs": 3, "hidden_dim": 16, "attention_dim": 8, "device": "cpu"}
#: make_model's composition without the nested selection (tested in test_readouts.py)
PLAIN = {**FAST, "nested": False}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    bags, y, _ = planted_bags(30, rng, d=8)
    return bags, np.column_stack([y, -y])


def test_members_are_distinct_seeds_and_predictions_are_their_mean(data):
    bags, Y = data
    ens = make_model("mil", params={"n_members": 3, **PLAIN}, random_state=0).fit(bags, Y)
    assert isinstance(ens, SeedEnsemble)
    assert len(ens.estimators_) == 3 and len({m.random_state for m in ens.estimators_}) == 3
    assert all(isinstance(m, AttentionMILRegressor) for m in ens.estimators_)
    pred = ens.predict(bags[:5])
    assert pred.shape == (5, 2)
    np.testing.assert_allclose(pred, np.mean([m.predict(bags[:5]) for m in ens.estimators_], axis=0))
    att, tile, _ = ens.predict_tiles(bags[:1])[0]
    assert att.shape == tile.shape == (len(bags[0]), 2) and att.dtype == np.float32
    np.testing.assert_allclose(att.sum(axis=0), 1.0, rtol=1e-5)
    again = make_model("mil", params={"n_members": 3, **PLAIN}, random_state=0).fit(bags, Y)
    np.testing.assert_allclose(again.predict(bags[:5]), pred)  # deterministic for a random_state
    np.testing.assert_allclose(pickle.loads(pickle.dumps(ens)).predict(bags[:5]), pred, rtol=1e-6)
    one = make_model("mil", params={"n_members": 1, **PLAIN}, random_state=0).fit(bags, Y[:, 0])
    assert isinstance(one, AttentionMILRegressor) and one.predict(bags[:5]).shape == (5,)


def test_seed_ensemble_is_the_average_of_networks_fitted_with_the_drawn_seeds(data):
    """Member i is the network fitted with the i-th of randint(0, 2**31 - 1, size=n_members) under random_state:
    bitwise the same as fitting those networks one by one."""
    bags, Y = data
    groups = np.arange(len(bags)) // 2
    ens = SeedEnsemble(AttentionMILRegressor(**FAST), n_members=2, random_state=7).fit(bags, Y, groups=groups)
    seeds = check_random_state(7).randint(0, 2**31 - 1, size=2)
    alone = [AttentionMILRegressor(**FAST, random_state=int(s)).fit(bags, Y, groups=groups) for s in seeds]
    assert [m.random_state for m in ens.estimators_] == [int(s) for s in seeds]
    for member, single in zip(ens.estimators_, alone, strict=True):
        np.testing.assert_array_equal(member.predict(bags), single.predict(bags))
    np.testing.assert_array_equal(ens.predict(bags), np.mean([m.predict(bags) for m in alone], axis=0))
    ens_scores, scores = ens.predict_tiles(bags[:2]), [m.predict_tiles(bags[:2]) for m in alone]
    for b, s in enumerate(ens_scores):
        expect = np.mean([scores[0][b].attention, scores[1][b].attention], axis=0).astype(np.float32)
        np.testing.assert_array_equal(s.attention, expect)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_invalid_n_members_names_the_parameter(data, bad):
    bags, Y = data
    with pytest.raises(BagInputError, match="n_members"):
        make_model("mil", params={"n_members": bad, **PLAIN}).fit(bags, Y)


def test_seed_ensemble_of_a_pipeline_has_no_tile_scores(data):
    bags, Y = data
    ens = SeedEnsemble(make_model("lgbm", params={"n_estimators": 5}), n_members=2, random_state=0).fit(
        bags, Y
    )
    assert [m[-1].estimator.random_state for m in ens.estimators_] == [
        int(s) for s in check_random_state(0).randint(0, 2**31 - 1, size=2)
    ]
    assert ens.predict(bags[:3]).shape == (3, 2) and not hasattr(ens, "predict_tiles")


def test_per_gene_predict_tiles_puts_the_genes_side_by_side(data):
    bags, Y = data
    Y = Y.copy()
    Y[:4, 1] = np.nan  # gene 1 is fitted on the other bags only
    groups = np.arange(len(bags)) // 2
    est = PerGeneRegressor(AttentionMILRegressor(**FAST, random_state=0)).fit(bags, Y, groups=groups)
    assert len(est.estimators_) == 2 and all(e.n_outputs_ == 1 for e in est.estimators_)
    assert np.isclose(est.estimators_[1].y_mean_[0], np.nanmean(Y[:, 1]))
    alone = AttentionMILRegressor(**FAST, random_state=0).fit(bags[4:], Y[4:, 1], groups=groups[4:])
    np.testing.assert_array_equal(est.estimators_[1].predict(bags), alone.predict(bags))
    scores = est.predict_tiles(bags[:3])
    assert len(scores) == 3 and all(isinstance(s, TileScores) for s in scores)
    per_gene = [e.predict_tiles(bags[:3]) for e in est.estimators_]
    for b, s in enumerate(scores):
        for field in ("attention", "tile_pred", "attention_logit"):
            want = np.concatenate([getattr(p[b], field) for p in per_gene], axis=1)
            np.testing.assert_array_equal(getattr(s, field), want)
    np.testing.assert_array_equal(
        est.predict(bags[:3]), np.column_stack([e.predict(bags[:3]) for e in est.estimators_])
    )
    one = PerGeneRegressor(AttentionMILRegressor(**FAST, random_state=0)).fit(bags, Y[:, 0])
    assert one.predict(bags[:3]).shape == (3,) and one.predict_tiles(bags[:1])[0].attention.shape[1] == 1


def test_per_gene_and_members_compose(data):
    bags, Y = data
    est = make_model("mil", params={"per_gene": True, "n_members": 2, **PLAIN}, random_state=0)
    assert isinstance(est, SeedEnsemble) and isinstance(est.estimator, PerGeneRegressor)
    est.fit(bags, Y)
    assert {m.estimators_[0].random_state for m in est.estimators_} == {
        m.estimators_[1].random_state for m in est.estimators_
    }
    (att, tile, logit), *_ = est.predict_tiles(bags[:1])
    assert att.shape == tile.shape == logit.shape == (len(bags[0]), 2)
