"""Bags read on access equal the bags load_cohort holds in memory; a sample reads uniform rows of one bag."""

from __future__ import annotations

import numpy as np
import pytest

from slide2expr import sql
from slide2expr.sql._lazy import lazy_cohort
from tests._fakestore import ENCODER, make_fake_store


@pytest.fixture(scope="module", params=["float32", "float16"])
def store(request, tmp_path_factory):
    return make_fake_store(tmp_path_factory.mktemp(f"lazy-{request.param}"), n_patients=7, dim=12,
                           dtype=request.param, seed=6)  # fmt: skip


@pytest.mark.parametrize("by", ["patient", "slide"])
def test_lazy_bags_equal_loaded_bags(store, by):
    loaded = sql.load_cohort(store.root, encoder=ENCODER, targets="expr", by=by)
    lazy = lazy_cohort(store.root, encoder=ENCODER, targets="expr", by=by)
    assert len(lazy) == loaded.n_bags and list(lazy.bag_ids) == list(loaded.bag_ids)
    assert list(lazy.groups) == list(loaded.groups) and lazy.genes == loaded.genes
    np.testing.assert_array_equal(lazy.y_true, loaded.y_true)
    assert lazy.n_tiles.tolist() == [len(b) for b in loaded.bags]
    assert lazy.nbytes == loaded.features.nbytes
    for i, bag in enumerate(loaded.bags):
        np.testing.assert_array_equal(lazy[i], bag)
    assert [len(b) for b in lazy[1:3]] == [len(b) for b in loaded.bags[1:3]]


def test_sample_reads_uniform_rows_of_one_bag(store):
    loaded = sql.load_cohort(store.root, encoder=ENCODER)
    lazy = lazy_cohort(store.root, encoder=ENCODER)
    i = int(np.argmax(lazy.n_tiles))  # a patient with two slides
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(int(lazy.n_tiles[i]), size=9, replace=False))
    np.testing.assert_array_equal(lazy.sample(i, 9, np.random.default_rng(0)), loaded.bags[i][pick])
    np.testing.assert_array_equal(lazy.sample(i, 10_000, 1), loaded.bags[i])
