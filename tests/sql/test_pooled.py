"""Streaming pooled features equal in-memory pooling of the loaded bags; the per-slide cache follows the store."""

from __future__ import annotations

import os

import numpy as np
import pytest

from slide2expr import sql
from slide2expr.regress import BagPooler
from slide2expr.sql._pooled import POOLED_DIR, POOLED_FORMAT, pooled_features
from tests._fakestore import ENCODER, TILING, make_fake_store


@pytest.fixture(scope="module", params=["float32", "float16"])
def store(request, tmp_path_factory):
    return make_fake_store(tmp_path_factory.mktemp(f"pool-{request.param}"), n_patients=7, dim=12,
                           dtype=request.param, seed=5)  # fmt: skip


@pytest.mark.parametrize("by", ["patient", "slide"])
def test_streaming_pooling_equals_in_memory(store, by):
    stats = ("mean", "max", "min", "std")
    pooled = pooled_features(store.root, stats=stats, by=by)
    cohort = sql.load_cohort(store.root, encoder=ENCODER, by=by)
    want = BagPooler(stats=stats).fit(cohort.bags).transform(cohort.bags)
    assert list(pooled.bag_ids) == list(cohort.bag_ids) and list(pooled.groups) == list(cohort.groups)
    assert pooled.n_tiles.tolist() == [len(b) for b in cohort.bags]
    np.testing.assert_allclose(pooled.features, want, rtol=1e-6, atol=1e-7)
    assert pooled.feature_names()[:2] == ["mean_0", "mean_1"]


def test_cache_is_reused_and_follows_the_store(store):
    first = pooled_features(store.root, stats=("mean",))
    cached = list((store.root / POOLED_DIR / TILING / ENCODER).glob("*.parquet"))
    assert len(cached) == 1 and cached[0].stem == f"{first.fingerprint}-{POOLED_FORMAT}"
    again = pooled_features(store.root, stats=("mean",))
    np.testing.assert_array_equal(first.features, again.features)
    path = next((store.root / "embeddings" / TILING / ENCODER).glob("*.parquet"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        changed = pooled_features(store.root, stats=("mean",))
        assert changed.fingerprint != first.fingerprint
        assert [p.stem for p in (store.root / POOLED_DIR / TILING / ENCODER).glob("*.parquet")] == [
            f"{changed.fingerprint}-{POOLED_FORMAT}"
        ]
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_asks_for_memory_for_quantiles(store):
    with pytest.raises(ValueError, match="medians and quantiles"):
        pooled_features(store.root, stats=("median",))
    with pytest.raises(ValueError, match="by="):
        pooled_features(store.root, by="tile")
