from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slide2expr.contract import (
    TARGETS_SCHEMA,
    StoreError,
    embeddings_path,
    read_metadata,
    targets_path,
    write_table_atomic,
)
from slide2expr.sql import Cohort, MissingTargetsWarning, iter_cohort, load_cohort
from tests._fakestore import make_fake_store


def _expected_bags(fs, by):
    """bag id -> (n, d) reference array, built independently from the fake store's own record."""
    out = {}
    for sid, pid in sorted(fs.slides, key=lambda sp: (sp[1], sp[0])):
        key = pid if by == "patient" else sid
        out.setdefault(key, []).append(fs.embeddings[sid])
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("by", ["patient", "slide"])
def test_load_cohort_matches_store(fake_store, by):
    c = load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr", by=by)
    assert isinstance(c, Cohort)
    ref = _expected_bags(fake_store, by)
    assert list(c.bag_ids) == list(ref)
    assert c.features.dtype == np.float32 and c.features.shape == (
        sum(len(v) for v in ref.values()),
        fake_store.dim,
    )
    assert c.offsets[0] == 0 and c.offsets[-1] == len(c.features)
    for i, (bag, bid) in enumerate(zip(c.bags, c.bag_ids, strict=True)):
        np.testing.assert_array_equal(bag, ref[bid])
        assert np.shares_memory(bag, c.features)  # a view, not a copy
        pid = bid if by == "patient" else dict(fake_store.slides)[bid]
        assert c.groups[i] == pid
        np.testing.assert_allclose(c.y_true[i], [fake_store.targets[pid][g] for g in c.genes])
    assert c.genes == fake_store.genes
    assert c.missing_targets == ()
    assert c.meta["weights_sha256"] == "0" * 64 and c.meta["dim"] == fake_store.dim
    # per-tile arrays line up with the features: tile ids restart at 0 for each slide, coords from the store
    for sid in {s for s, _ in fake_store.slides}:
        rows = np.flatnonzero(c.slide_ids == sid)
        np.testing.assert_array_equal(c.tile_ids[rows], np.arange(len(rows)))
        np.testing.assert_array_equal(c.features[rows], fake_store.embeddings[sid])
        table = pq.read_table(embeddings_path(fake_store.root, fake_store.tiling, fake_store.encoder, sid))
        np.testing.assert_array_equal(c.x[rows], table["x"].to_numpy())
        np.testing.assert_array_equal(c.y[rows], table["y"].to_numpy())


def test_genes_subset_and_order(fake_store):
    c = load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr", genes=["SPINK4", "GNLY"])
    assert c.genes == ("SPINK4", "GNLY") and c.y_true.shape == (c.n_bags, 2)
    assert c.y_true[0, 1] == pytest.approx(fake_store.targets[c.bag_ids[0]]["GNLY"])
    with pytest.raises(StoreError, match="NOTAGENE"):
        load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr", genes=["NOTAGENE"])


def test_no_targets_and_errors(fake_store):
    c = load_cohort(fake_store.root, encoder=fake_store.encoder)
    assert c.y_true is None and c.genes == ()
    with pytest.raises(StoreError, match="fake-encoder"):
        load_cohort(fake_store.root, encoder="uni")
    with pytest.raises(StoreError, match="no targets named 'nope'.*expr"):
        load_cohort(fake_store.root, encoder=fake_store.encoder, targets="nope")
    with pytest.raises(ValueError, match="by='tile'"):
        load_cohort(fake_store.root, encoder=fake_store.encoder, by="tile")


def test_iter_cohort_streams_the_same_bags(fake_store):
    full = load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr", by="slide")
    chunks = list(
        iter_cohort(
            fake_store.root, encoder=fake_store.encoder, targets="expr", by="slide", patients_per_chunk=5
        )
    )
    assert len(chunks) == 3  # 12 patients in chunks of 5
    assert [b for ch in chunks for b in ch.bag_ids] == list(full.bag_ids)
    np.testing.assert_array_equal(np.concatenate([ch.features for ch in chunks]), full.features)
    np.testing.assert_array_equal(np.concatenate([ch.y_true for ch in chunks]), full.y_true)
    for ch in chunks:  # a patient's slides never span two chunks
        assert len(set(ch.groups)) <= 5


def test_missing_targets_reported_and_samples_averaged(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=5, failed_slide=False)
    pids = sorted(fs.targets)
    rows = []
    for pid in pids[1:]:  # the first patient has no targets at all
        for g in fs.genes:
            rows.append(
                {"sample_id": f"{pid}-01A", "patient_id": pid, "gene": g, "value": 1.0, "raw_value": 1.7}
            )
    # a second sample for the last patient: the patient's value is the mean of both
    for g in fs.genes:
        rows.append(
            {"sample_id": f"{pids[-1]}-01B", "patient_id": pids[-1], "gene": g, "value": 3.0, "raw_value": 0}
        )
    write_table_atomic(pa.Table.from_pylist(rows, schema=TARGETS_SCHEMA), targets_path(fs.root, "partial"))
    with pytest.warns(MissingTargetsWarning, match=pids[0]):
        c = load_cohort(fs.root, encoder=fs.encoder, targets="partial")
    assert c.missing_targets == (pids[0],)
    assert list(c.bag_ids) == pids and np.all(np.isnan(c.y_true[0]))
    np.testing.assert_allclose(c.y_true[-1], 2.0)
    np.testing.assert_allclose(c.y_true[1], 1.0)
    assert c.meta["patients_with_several_samples_averaged"] == [pids[-1]]
    with pytest.warns(MissingTargetsWarning, match="dropped"):
        d = load_cohort(fs.root, encoder=fs.encoder, targets="partial", drop_missing=True)
    assert list(d.bag_ids) == pids[1:] and not np.isnan(d.y_true).any()
    np.testing.assert_array_equal(d.features, c.features[c.offsets[1] :])
    with pytest.warns(MissingTargetsWarning):
        cached = load_cohort(fs.root, encoder=fs.encoder, targets="partial", drop_missing=True, cache=True)
    np.testing.assert_array_equal(cached.features, d.features)
    np.testing.assert_array_equal(cached.offsets, d.offsets)


def test_refuses_mixed_weights(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=3, failed_slide=False)
    sid = fs.slides[-1][0]
    path = embeddings_path(fs.root, fs.tiling, fs.encoder, sid)
    table = pq.read_table(path)
    meta = read_metadata(path) | {"weights_sha256": "f" * 64}
    write_table_atomic(table.replace_schema_metadata({}), path, metadata=meta)
    with pytest.raises(StoreError, match="weights_sha256.*must not be mixed"):
        load_cohort(fs.root, encoder=fs.encoder)


def test_float16_store_loads_as_float32(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=3, dtype="float16", failed_slide=False)
    c = load_cohort(fs.root, encoder=fs.encoder, by="slide")
    assert c.features.dtype == np.float32
    sid = c.bag_ids[0]
    np.testing.assert_allclose(c.bags[0], fs.embeddings[sid], atol=2e-3, rtol=2e-3)


def test_derived_cache_is_rebuilt_when_the_store_changes(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=4, failed_slide=False)
    plain = load_cohort(fs.root, encoder=fs.encoder, targets="expr")
    first = load_cohort(fs.root, encoder=fs.encoder, targets="expr", cache=True)
    folders = list((fs.root / ".cache" / "bags" / fs.tiling / fs.encoder).iterdir())
    assert len(folders) == 1 and (folders[0] / "features.npy").exists()
    again = load_cohort(fs.root, encoder=fs.encoder, targets="expr", cache=True)
    mapped = load_cohort(fs.root, encoder=fs.encoder, targets="expr", cache="mmap")
    for c in (first, again, mapped):
        np.testing.assert_array_equal(c.features, plain.features)
        np.testing.assert_array_equal(c.offsets, plain.offsets)
        np.testing.assert_array_equal(c.x, plain.x)
        np.testing.assert_array_equal(c.tile_ids, plain.tile_ids)
        assert list(c.slide_ids) == list(plain.slide_ids)
    assert isinstance(mapped.features, np.memmap) and not mapped.features.flags.writeable
    # the views never see the cache
    con = __import__("slide2expr.sql", fromlist=["connect"]).connect(fs.root)
    assert con.execute("select count(*) from embeddings").fetchall()[0][0] == len(plain.features)
    # re-featurizing one slide changes the fingerprint: the cache is rebuilt from the new file, the old one removed
    sid = fs.slides[0][0]
    path = embeddings_path(fs.root, fs.tiling, fs.encoder, sid)
    table = pq.read_table(path)
    new = np.full((table.num_rows, fs.dim), 7.0, np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(new.ravel()), type=table.schema.field("embedding").type)
    write_table_atomic(
        table.set_column(4, table.schema.field("embedding"), col), path, metadata=read_metadata(path)
    )
    fresh = load_cohort(fs.root, encoder=fs.encoder, cache=True)
    np.testing.assert_array_equal(fresh.features[fresh.slide_ids == sid], new)
    assert len(list((fs.root / ".cache" / "bags" / fs.tiling / fs.encoder).iterdir())) == 1
    # a damaged cache (wrong shape) is replaced, not trusted
    folder = next((fs.root / ".cache" / "bags" / fs.tiling / fs.encoder).iterdir())
    np.save(folder / "features.npy", np.zeros((3, fs.dim), np.float32))
    healed = load_cohort(fs.root, encoder=fs.encoder, cache=True)
    np.testing.assert_array_equal(healed.features, fresh.features)
    assert np.load(folder / "features.npy").shape == fresh.features.shape
    with pytest.raises(ValueError, match="cache='yes'"):
        load_cohort(fs.root, encoder=fs.encoder, cache="yes")


def test_empty_embeddings_files_make_no_bag(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=2, failed_slide=False)
    path = embeddings_path(fs.root, fs.tiling, fs.encoder, "TCGA-FK-0077-01Z-00-DX1")  # featurize: no tissue
    empty = pq.read_table(embeddings_path(fs.root, fs.tiling, fs.encoder, fs.slides[0][0])).slice(0, 0)
    write_table_atomic(
        empty, path, metadata=read_metadata(embeddings_path(fs.root, fs.tiling, fs.encoder, fs.slides[0][0]))
    )
    c = load_cohort(fs.root, encoder=fs.encoder)
    assert "TCGA-FK-0077" not in set(c.bag_ids) and all(len(b) for b in c.bags)
    assert c.meta["slides_without_tiles"] == ["TCGA-FK-0077-01Z-00-DX1"]
