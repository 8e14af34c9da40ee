"""Store locations: local paths keep their bytes and behaviour; s3:// URIs read and write through the S3 server."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slide2expr.contract import (
    ObjectPath,
    configure_storage,
    is_remote,
    open_input,
    pyarrow_filesystem,
    read_parquet_schema,
    read_parquet_table,
    read_range,
    register_duckdb,
    s3_settings,
    store_path,
    write_bytes_atomic,
    write_file_atomic,
    write_parquet_atomic,
    write_table_atomic,
)


def _table(n: int = 50) -> pa.Table:
    rng = np.random.default_rng(0)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * 8).astype(np.float32)), 8)
    return pa.table(
        {"slide_id": ["s"] * n, "tile_id": pa.array(np.arange(n, dtype=np.int32)), "embedding": emb}
    )


def test_paths_local_and_remote():
    assert store_path("a/b") == store_path("file://a/b") and not is_remote("a/b")
    p = store_path("s3://bkt//x/./y/")
    assert isinstance(p, ObjectPath) and str(p) == "s3://bkt/x/y" and is_remote(p)
    assert (p / "z.parquet").with_suffix(".png").as_posix() == "s3://bkt/x/y/z.png"
    assert (p / "z").relative_to("s3://bkt/x").as_posix() == "y/z"
    assert p.parent.parent == ObjectPath("s3://bkt") and ObjectPath("s3://bkt").parent == ObjectPath(
        "s3://bkt"
    )
    with pytest.raises(ValueError, match="names no bucket"):
        ObjectPath("s3://")


def test_local_writes_are_the_store_writers(tmp_path):
    t = _table()
    a = write_parquet_atomic(t, tmp_path / "a.parquet", metadata={"kind": "tiles"})
    b = write_table_atomic(t, tmp_path / "b.parquet", metadata={"kind": "tiles"})
    assert a.read_bytes() == b.read_bytes()
    write_file_atomic(tmp_path / "x.json", b"{}")
    write_bytes_atomic(tmp_path / "y.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet", "x.json", "y.json"]


def test_settings_explicit_over_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert s3_settings().endpoint_url == "http://127.0.0.1:1" and s3_settings().region == "eu-west-3"
    configure_storage(endpoint_url="http://127.0.0.1:2")
    try:
        assert s3_settings().endpoint_url == "http://127.0.0.1:2" and s3_settings().region == "eu-west-3"
        assert s3_settings().as_env()["AWS_ENDPOINT_URL"] == "http://127.0.0.1:2"
    finally:
        configure_storage()
    assert s3_settings().endpoint_url == "http://127.0.0.1:1"


def test_s3_write_read_list_glob(s3_env, tmp_path):
    root = store_path(s3_env) / "store"
    t = _table()
    write_parquet_atomic(t, root / "embeddings" / "t" / "e" / "s1.parquet", metadata={"kind": "embeddings"})
    write_parquet_atomic(t, root / "embeddings" / "t" / "e" / "s2.parquet", metadata={"kind": "embeddings"})
    write_file_atomic(root / "store.json", b'{"format": 1}')
    local = write_parquet_atomic(t, tmp_path / "s1.parquet", metadata={"kind": "embeddings"})
    remote = root / "embeddings" / "t" / "e" / "s1.parquet"
    # the bytes on the store are those a local run writes
    assert remote.read_bytes() == local.read_bytes()
    assert remote.is_file() and (root / "embeddings").is_dir() and not (root / "nothing").exists()
    assert [p.name for p in root.iterdir()] == ["embeddings", "store.json"]
    assert [p.name for p in root.glob("embeddings/*/*/*.parquet")] == ["s1.parquet", "s2.parquet"]
    assert [p.name for p in root.rglob("*.parquet")] == ["s1.parquet", "s2.parquet"]
    assert read_parquet_table(remote).equals(t)
    assert read_parquet_schema(remote).metadata[b"slide2expr.kind"] == b'"embeddings"'
    raw = local.read_bytes()
    assert read_range(remote, 4, 100) == raw[4:104] and read_range(remote, len(raw) - 8, 100) == raw[-8:]
    with open_input(remote) as fh:
        fh.seek(len(raw) - 4)
        assert fh.read() == b"PAR1"
    assert remote.stat().st_size == len(raw)
    (root / "store.json").unlink()
    assert not (root / "store.json").exists()
    (root / "store.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "store.json").read_bytes()
    with pytest.raises(ValueError, match="written whole"):
        remote.open("wb")


def test_s3_scans_in_place_duckdb_and_pyarrow(s3_env):
    root = store_path(s3_env) / "store"
    for i in range(3):
        write_parquet_atomic(_table(10 + i), root / "tiles" / f"s{i}.parquet")
    con = duckdb.connect()
    register_duckdb(con, root)
    register_duckdb(con, root)  # once per connection is enough; twice is harmless
    con.execute("set variable store = $s", {"s": str(root)})
    n = con.execute(
        "select count(*) from read_parquet(getvariable('store') || '/tiles/*.parquet')"
    ).fetchone()
    assert n == (33,)
    fs, path = pyarrow_filesystem(root / "tiles")
    assert pq.read_table(path, filesystem=fs).num_rows == 33


def test_s3_embeddings_pages_read_by_one_ranged_get(s3_env, tmp_path):
    """The bag loader's page-level fast path over an object store: one ranged GET of the embedding column chunk,
    parsed as from a local file; a layout the fast path does not take fetches nothing."""
    from slide2expr.sql._pages import read_plain_float_column_ranged

    rng = np.random.default_rng(1)
    n, d = 300, 24
    values = rng.standard_normal(n * d).astype(np.float32)
    emb = pa.FixedSizeListArray.from_arrays(
        pa.array(values), type=pa.list_(pa.field("element", pa.float32(), nullable=False), d)
    )
    t = pa.table({"tile_id": pa.array(np.arange(n, dtype=np.int32)), "embedding": emb})
    remote = store_path(s3_env) / "e.parquet"
    write_parquet_atomic(t, remote)
    fetched = []

    def fetch(start: int, length: int) -> bytes:
        fetched.append((start, length))
        return read_range(remote, start, length)

    with open_input(remote) as fh:
        pf = pq.ParquetFile(fh)
        out = np.empty((n, d), np.float32)
        assert read_plain_float_column_ranged(fetch, pf, 1, d, out)
    assert np.array_equal(out, values.reshape(n, d)) and len(fetched) == 1
    zstd = store_path(s3_env) / "z.parquet"
    write_parquet_atomic(t, zstd, compression="zstd")
    fetched.clear()
    with open_input(zstd) as fh:
        assert not read_plain_float_column_ranged(fetch, pq.ParquetFile(fh), 1, d, out)
    assert fetched == []
