"""sql's read functions: the same values as plain pyarrow reads of the contract's files, and errors that name the
missing file and the step that writes it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slide2expr import sql
from slide2expr.contract import SLIDES_DIR, StoreError, embeddings_path, slide_path, tiles_path
from tests._fakestore import make_fake_store


def test_read_slides_and_one_slide_equal_plain_pyarrow_reads(fake_store):
    files = sorted((fake_store.root / SLIDES_DIR).glob("*.parquet"))
    plain = pd.DataFrame([r for f in files for r in pq.read_table(f).to_pylist()])
    slides = sql.read_slides(fake_store.root)
    assert list(slides.columns) == list(plain.columns)
    assert slides["slide_id"].tolist() == plain["slide_id"].tolist()
    for col in ("slide_id", "patient_id", "status", "path", "width", "height", "mpp_x", "n_tiles"):
        pd.testing.assert_series_equal(slides[col], plain[col], check_dtype=False)
    sid = fake_store.slides[0][0]
    assert (
        sql.read_slide(fake_store.root, sid) == pq.read_table(slide_path(fake_store.root, sid)).to_pylist()[0]
    )


def test_read_tiles_equals_plain_pyarrow_read(fake_store):
    for sid, _ in fake_store.slides[:3]:
        plain = pq.read_table(tiles_path(fake_store.root, fake_store.tiling, sid)).to_pandas()
        pd.testing.assert_frame_equal(sql.read_tiles(fake_store.root, fake_store.tiling, sid), plain)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_read_embeddings_equals_plain_pyarrow_read(tmp_path, dtype):
    fs = make_fake_store(tmp_path / "s", n_patients=3, dtype=dtype, failed_slide=False)
    for sid, _ in fs.slides:
        t = pq.read_table(
            embeddings_path(fs.root, fs.tiling, fs.encoder, sid), columns=["tile_id", "embedding"]
        )
        col = t.column("embedding").combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        want = np.asarray(flat, dtype=np.float32).reshape(len(t), col.type.list_size)
        tile_ids, emb = sql.read_embeddings(fs.root, fs.tiling, fs.encoder, sid)
        assert tile_ids.dtype == np.int32 and emb.dtype == np.float32 and emb.flags.c_contiguous
        np.testing.assert_array_equal(tile_ids, t.column("tile_id").to_numpy().astype(np.int32))
        np.testing.assert_array_equal(emb, want)
        np.testing.assert_array_equal(emb, fs.embeddings[sid].astype(dtype).astype(np.float32))


def test_missing_files_name_the_file_and_the_step(fake_store, tmp_path):
    root = fake_store.root
    with pytest.raises(StoreError, match=r"slide 'nope' has no .*nope\.parquet: featurize it into the store"):
        sql.read_slide(root, "nope")
    with pytest.raises(StoreError, match=r"has no tile grid .*: featurize it with tiling 'mpp9.00_px1_ov0'"):
        sql.read_tiles(root, "mpp9.00_px1_ov0", fake_store.slides[0][0])
    with pytest.raises(StoreError, match=r"has no embeddings .*: featurize it with encoder 'other'"):
        sql.read_embeddings(root, fake_store.tiling, "other", fake_store.slides[0][0])
    with pytest.raises(StoreError, match="does not exist"):
        sql.read_slides(tmp_path / "nostore")


def test_open_run_reads_config_and_tables(fake_store, fake_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(StoreError, match="not a run directory"):
        sql.open_run(run)
    (run / "config.json").write_text(json.dumps({"tiling": fake_store.tiling, "encoder": fake_store.encoder}))
    with pytest.raises(StoreError, match="has no 'genes': it was not written by regress.compare"):
        sql.open_run(run)
    config = {
        "tiling": fake_store.tiling,
        "encoder": fake_store.encoder,
        "genes": list(fake_store.genes),
        "models": ["mil"],
    }
    (run / "config.json").write_text(json.dumps(config))
    for name in ("folds", "attention", "predictions"):
        (run / f"{name}.parquet").write_bytes((fake_run / f"{name}.parquet").read_bytes())
    r = sql.open_run(run)
    assert sql.open_run(r) is r
    assert (r.genes, r.models, r.tiling, r.encoder, r.by) == (
        fake_store.genes,
        ("mil",),
        fake_store.tiling,
        fake_store.encoder,
        "patient",
    )
    att = r.table("attention")
    pd.testing.assert_frame_equal(att, pq.read_table(run / "attention.parquet").to_pandas())
    assert r.table("attention") is att  # read once
    assert r.table("metrics", required=False) is None
    with pytest.raises(StoreError, match=r"metrics\.parquet is missing: run `slide2expr compare`"):
        r.table("metrics")
