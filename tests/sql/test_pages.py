"""The bag loader's direct page reader (sql._pages): same values as pyarrow, or a clean refusal."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import slide2expr.sql._bags as sql_bags
from slide2expr.contract import StoreError, embeddings_path, embeddings_schema, write_table_atomic
from slide2expr.sql import load_cohort
from slide2expr.sql._pages import read_plain_float_column


def _table(emb: np.ndarray, *, nullable: bool = False, dtype: str = "float32", null_at: int | None = None):
    n, dim = emb.shape
    schema = embeddings_schema(dim, dtype)
    vtype = schema.field("embedding").type.value_type
    if nullable:
        fields = list(schema)
        fields[-1] = pa.field("embedding", pa.list_(pa.field("element", vtype, nullable=True), dim))
        schema = pa.schema(fields)
    values = pa.array(emb.astype(dtype).ravel(), type=vtype)
    if null_at is not None:
        mask = np.zeros(len(values), bool)
        mask[null_at] = True
        values = pa.array(emb.astype(dtype).ravel(), type=vtype, mask=mask)
    col = pa.FixedSizeListArray.from_arrays(values, type=schema.field("embedding").type)
    tid = np.arange(n, dtype=np.int32)
    return pa.table(
        {"slide_id": ["s"] * n, "tile_id": tid, "x": tid.astype(np.int64), "y": tid.astype(np.int64),
         "embedding": col},
        schema=schema,
    )  # fmt: skip


def _read(path, dim, rows=None):
    with pa.memory_map(str(path)) as src:
        pf = pq.ParquetFile(src)
        out = np.full((pf.metadata.num_rows if rows is None else rows, dim), np.nan, np.float32)
        return read_plain_float_column(src.fileno(), pf, 4, dim, out), out


@pytest.mark.parametrize(
    "kw",
    [
        {},  # featurize's layout: one row group, ~1 MB v1 pages
        {"row_group_size": 97, "data_page_size": 4096},  # many row groups, pages that split rows
        {"data_page_version": "2.0", "data_page_size": 4096},
        {"write_page_index": True, "data_page_size": 8192},
        {"write_statistics": False},
    ],
)
@pytest.mark.parametrize("nullable", [False, True])
def test_plain_pages_read_exactly_as_pyarrow(tmp_path, kw, nullable):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((613, 40)).astype(np.float32)
    emb[5, 3] = np.inf  # special values are bytes like any other
    emb[7, 0] = -0.0
    path = tmp_path / "e.parquet"
    pq.write_table(_table(emb, nullable=nullable), path, compression="none", use_dictionary=False, **kw)
    ok, out = _read(path, 40)
    assert ok
    ref = np.stack(pq.read_table(path).column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(out, ref)
    assert np.array_equal(out.view(np.uint32), emb.view(np.uint32))  # bit for bit, -0.0 included


def test_featurize_writer_takes_the_fast_path(tmp_path):
    emb = np.random.default_rng(1).random((3000, 96), dtype=np.float32)  # > 1 MB: several pages
    path = write_table_atomic(_table(emb), tmp_path / "e.parquet")
    ok, out = _read(path, 96)
    assert ok and np.array_equal(out, emb)


@pytest.mark.parametrize(
    "write, table_kw",
    [
        ({"compression": "zstd", "use_dictionary": False}, {}),
        ({"compression": "none", "use_dictionary": True}, {}),  # dictionary page first
        ({"compression": "none", "use_dictionary": False}, {"dtype": "float16"}),
        ({"compression": "none", "use_dictionary": False}, {"nullable": True, "null_at": 17}),
        (
            {
                "compression": "none",
                "use_dictionary": False,
                "column_encoding": {"embedding.list.element": "BYTE_STREAM_SPLIT"},
            },
            {},
        ),
    ],
    ids=["zstd", "dictionary", "float16", "a-null", "byte-stream-split"],
)
def test_other_layouts_are_refused_for_pyarrow(tmp_path, write, table_kw):
    emb = np.random.default_rng(2).random((200, 16), dtype=np.float32)
    path = tmp_path / "e.parquet"
    pq.write_table(_table(emb, **table_kw), path, **write)
    ok, _ = _read(path, 16)
    assert not ok


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_pages_that_do_not_hold_whole_rows_raise(tmp_path, version):
    emb = np.random.default_rng(3).random((100, 10), dtype=np.float32)
    path = tmp_path / "e.parquet"
    pq.write_table(_table(emb), path, compression="none", use_dictionary=False, data_page_version=version)
    # read as if each row held 11 values: the pages hold 1,000 values where 100 rows × 11 need 1,100
    with pytest.raises(ValueError, match="1100|whole rows"):
        _read(path, 11)


def test_wrong_slot_is_refused_not_overrun(tmp_path):
    emb = np.random.default_rng(4).random((50, 8), dtype=np.float32)
    path = tmp_path / "e.parquet"
    pq.write_table(_table(emb), path, compression="none", use_dictionary=False)
    with pa.memory_map(str(path)) as src:
        pf = pq.ParquetFile(src)
        for out in (
            np.empty((49, 8), np.float32),
            np.empty((50, 8), np.float64),
            np.empty((8, 50), np.float32).T,
        ):
            assert not read_plain_float_column(src.fileno(), pf, 4, 8, out)


def test_pages_come_from_the_open_file_even_if_the_path_is_replaced(tmp_path):
    old, new = (np.random.default_rng(s).random((300, 12), dtype=np.float32) for s in (5, 6))
    path = write_table_atomic(_table(old), tmp_path / "e.parquet")
    other = write_table_atomic(_table(new[:200]), tmp_path / "other.parquet")
    with pa.memory_map(str(path)) as src:
        pf = pq.ParquetFile(src)
        os.replace(other, path)  # featurize --force rewrites a slide while a loader holds the old footer
        out = np.empty((300, 12), np.float32)
        assert read_plain_float_column(src.fileno(), pf, 4, 12, out)
    np.testing.assert_array_equal(out, old)


def test_load_cohort_same_with_and_without_fast_path(fake_store, monkeypatch):
    fast = load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr")
    calls = []
    real = sql_bags.read_plain_float_column

    def refuse(*a, **k):
        calls.append(real(*a, **k))  # the fast path would have been taken ...
        return False  # ... but pyarrow reads it this time

    monkeypatch.setattr(sql_bags, "read_plain_float_column", refuse)
    slow = load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr")
    assert calls and all(calls)
    np.testing.assert_array_equal(fast.features, slow.features)
    np.testing.assert_array_equal(fast.tile_ids, slow.tile_ids)
    np.testing.assert_array_equal(fast.x, slow.x)


def test_damaged_page_header_is_a_store_error_naming_the_file(fake_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(fake_store.root, root)  # the session's fake store is read-only
    sid = fake_store.slides[0][0]
    path = embeddings_path(root, fake_store.tiling, fake_store.encoder, sid)
    start = pq.ParquetFile(path).metadata.row_group(0).column(4).data_page_offset
    with open(path, "r+b") as fh:  # scribble over the first embedding page header; the footer stays intact
        fh.seek(start)
        fh.write(b"\xff" * 8)
    with pytest.raises(StoreError, match=rf"{path.name}.*re-featurize"):
        load_cohort(root, encoder=fake_store.encoder, targets="expr", n_threads=1)
