"""compare scores the held-out tiles of an attention model batch by batch (at most ``TILE_BATCH`` tiles, keeping
the recorded genes only), so a fold of large patients holds one batch of tile outputs: the attention it records is
that of one call over every held-out bag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slide2expr import regress
from slide2expr.regress import _batches, _streaming
from tests._fakestore import fake_cohort
from tests.regress.test_streaming_spill import MIL


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return fake_cohort(tmp_path_factory.mktemp("batches") / "store", n_patients=9)


def test_held_out_tiles_are_scored_in_bounded_batches(cohort, monkeypatch, tmp_path):
    settings = dict(models=("mil",), n_folds=3, seed=0, model_params={"mil": MIL}, progress=False)
    whole = regress.compare(cohort, out=tmp_path / "whole", **settings)
    sizes = np.array([cohort.bag_slice(i).stop - cohort.bag_slice(i).start for i in range(cohort.n_bags)])
    budget = int(np.sort(sizes)[-2])  # batches of one bag and of several
    monkeypatch.setattr(_batches, "TILE_BATCH", budget)
    calls, real = [], _streaming.InMemoryInputs.predict_tiles

    def spy(self, est, fold, rows):
        calls.append(sum(len(self.bags[i]) for i in rows))
        return real(self, est, fold, rows)

    monkeypatch.setattr(_streaming.InMemoryInputs, "predict_tiles", spy)
    batched = regress.compare(cohort, out=tmp_path / "batched", **settings)
    assert calls and max(calls) <= max(budget, int(sizes.max())) and len(set(calls)) > 1
    pd.testing.assert_frame_equal(whole.predictions, batched.predictions)
    a, b = (pq.read_table(tmp_path / d / "attention.parquet").to_pandas() for d in ("whole", "batched"))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-7)
