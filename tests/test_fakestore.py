from __future__ import annotations

import duckdb
import numpy as np
import pyarrow.parquet as pq

from slide2expr.contract import read_metadata


def test_fake_store_is_readable_by_duckdb(fake_store):
    root = fake_store.root
    con = duckdb.connect()
    n = con.execute(
        "select count(*) from read_parquet($p)", {"p": str(root / "embeddings" / "*" / "*" / "*.parquet")}
    ).fetchone()[0]
    assert n == sum(len(e) for e in fake_store.embeddings.values())
    sid = fake_store.slides[0][0]
    path = root / "embeddings" / fake_store.tiling / fake_store.encoder / f"{sid}.parquet"
    table = pq.read_table(path)
    emb = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(len(table), -1)
    np.testing.assert_array_equal(emb, fake_store.embeddings[sid])
    assert read_metadata(path)["dim"] == fake_store.dim
    assert not list(root.rglob(".*.tmp"))
