"""AttentionMILRegressor(n_members=m): m seeds fitted and averaged."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from slide2expr.regress import AttentionMILRegressor, BagInputError
from tests.regress._data import planted_bags

FAST = {"max_epochs": 3, "hidden_dim": 16, "attention_dim": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    bags, y, _ = planted_bags(30, rng, d=8)
    return bags, np.column_stack([y, -y])


def test_members_are_distinct_seeds_and_predictions_are_their_mean(data):
    bags, Y = data
    ens = AttentionMILRegressor(n_members=3, random_state=0, **FAST).fit(bags, Y)
    assert len(ens.members_) == 3 and len({m.random_state for m in ens.members_}) == 3
    assert all(m.n_members == 1 and m.members_ is None for m in ens.members_)
    pred = ens.predict(bags[:5])
    assert pred.shape == (5, 2)
    np.testing.assert_allclose(pred, np.mean([m.predict(bags[:5]) for m in ens.members_], axis=0))
    att, tile, _ = ens.predict_tiles(bags[:1])[0]
    assert att.shape == tile.shape == (len(bags[0]), 2) and att.dtype == np.float32
    np.testing.assert_allclose(att.sum(axis=0), 1.0, rtol=1e-5)
    again = AttentionMILRegressor(n_members=3, random_state=0, **FAST).fit(bags, Y)
    np.testing.assert_allclose(again.predict(bags[:5]), pred)  # deterministic for a random_state
    np.testing.assert_allclose(pickle.loads(pickle.dumps(ens)).predict(bags[:5]), pred, rtol=1e-6)
    one = AttentionMILRegressor(random_state=0, **FAST).fit(bags, Y[:, 0])
    assert one.members_ is None and one.predict(bags[:5]).shape == (5,)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_invalid_n_members_names_the_parameter(data, bad):
    bags, Y = data
    with pytest.raises(BagInputError, match="n_members"):
        AttentionMILRegressor(n_members=bad, **FAST).fit(bags, Y)
