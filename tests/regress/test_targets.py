from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slide2expr.contract import TARGETS_SCHEMA, StoreError, read_metadata
from slide2expr.regress import (
    PANELS,
    SamplesWithoutSlidesWarning,
    TargetsError,
    import_star_counts,
    import_targets,
)
from slide2expr.sql import list_targets, load_cohort
from tests._fakestore import make_fake_store


@pytest.fixture
def store(tmp_path):
    return make_fake_store(tmp_path / "store 'x'", n_patients=4, failed_slide=False)


def _matrix(store, genes=("GNLY", "FBN1", "MGP")):
    rng = np.random.default_rng(3)
    samples = [f"{p}-01A-11R-A41B-07" for p in sorted(store.targets)]
    return pd.DataFrame(
        rng.uniform(0, 50, size=(len(samples), len(genes))), index=samples, columns=list(genes)
    )


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
@pytest.mark.parametrize("layout", ["samples-rows", "genes-rows"])
def test_import_matrix_both_orientations(store, tmp_path, fmt, layout):
    m = _matrix(store)
    df = (
        m.rename_axis("sample").reset_index()
        if layout == "samples-rows"
        else m.T.rename_axis("gene").reset_index()
    )
    path = tmp_path / f"expr.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    report = import_targets(path, store=store.root, name="imp", genes=["MGP", "GNLY"])
    assert report.orientation == layout and any("detected" in n for n in report.notes)
    assert report.genes == ("MGP", "GNLY") and report.n_samples == 4 and report.samples_without_slides == ()
    t = pq.read_table(report.path)
    assert t.schema.equals(TARGETS_SCHEMA, check_metadata=False)
    got = t.to_pandas()
    for s in m.index:
        for g in ("MGP", "GNLY"):
            row = got[(got.sample_id == s) & (got.gene == g)].iloc[0]
            assert row.patient_id == s[:12]
            assert row.raw_value == pytest.approx(m.loc[s, g])
            assert row.value == pytest.approx(np.log1p(m.loc[s, g]))
    assert read_metadata(report.path)["transform"] == "log1p"
    # load_cohort reads it: one sample per patient
    c = load_cohort(store.root, encoder=store.encoder, targets="imp")
    assert c.genes == ("MGP", "GNLY")
    np.testing.assert_allclose(
        c.y_true[:, 1], np.log1p(m.loc[[f"{p}-01A-11R-A41B-07" for p in c.bag_ids], "GNLY"])
    )


def test_transforms_and_patient_column(store, tmp_path):
    m = _matrix(store)
    df = m.reset_index(names="sample")
    df["sample"] = [f"S{i}" for i in range(len(df))]
    df.insert(1, "donor", sorted(store.targets))
    path = tmp_path / "x.csv"
    df.to_csv(path, index=False)
    r = import_targets(
        path, store=store.root, name="l10", transform="log10p", sample_col="sample", patient_col="donor"
    )
    got = pq.read_table(r.path).to_pandas()
    np.testing.assert_allclose(got.value, np.log10(1 + got.raw_value))
    assert sorted(set(got.patient_id)) == sorted(store.targets)
    with pytest.raises(TargetsError, match="exists"):
        import_targets(path, store=store.root, name="l10", sample_col="sample", patient_col="donor")
    r2 = import_targets(
        path,
        store=store.root,
        name="l10",
        transform="none",
        sample_col="sample",
        patient_col="donor",
        overwrite=True,
    )
    got = pq.read_table(r2.path).to_pandas()
    np.testing.assert_array_equal(got.value, got.raw_value)
    listed = list_targets(store.root).set_index("name")
    assert listed.loc["l10", "transform"] == "none" and listed.loc["l10", "genes"] == 3


def test_bad_inputs_are_named_and_nothing_is_written(store, tmp_path):
    m = _matrix(store).reset_index(names="sample")
    cases = {
        "dup": (lambda d: pd.concat([d, d.iloc[[1]]]), "duplicate sample id.*TCGA-FK-0002-01A"),
        "nan": (
            lambda d: d.assign(GNLY=d.GNLY.astype(object).where(d.index != 2, "n/a")),
            r"TCGA-FK-0003-01A.*/GNLY='n/a'",
        ),
        "empty": (
            lambda d: d.assign(MGP=d.MGP.astype(object).where(d.index != 0, "")),
            r"TCGA-FK-0001-01A.*/MGP=''",
        ),
        "neg": (
            lambda d: d.assign(FBN1=d.FBN1.where(d.index != 1, -2.0)),
            r"log1p needs values ≥ 0.*FBN1=-2",
        ),
    }
    for name, (mutate, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        mutate(m.copy()).to_csv(path, index=False)
        with pytest.raises(TargetsError, match=message):
            import_targets(path, store=store.root, name=name)
        assert not (store.root / "targets" / f"{name}.parquet").exists()
    path = tmp_path / "ok.csv"
    m.to_csv(path, index=False)
    with pytest.raises(TargetsError, match="not in the matrix: NOTAGENE, ALSO"):
        import_targets(path, store=store.root, name="g", genes=["GNLY", "NOTAGENE", "ALSO"])
    with pytest.raises(TargetsError, match=r"not in the matrix: SEMA5A, CTTNBP2"):
        import_targets(path, store=store.root, name="g", genes="graziani2022")
    other = m.assign(sample=[f"X{i}" for i in range(len(m))])
    other.to_csv(path, index=False)
    with pytest.raises(TargetsError, match="not TCGA barcodes.*X0.*patient_col"):
        import_targets(path, store=store.root, name="g", orientation="samples-rows")
    assert not (store.root / "targets" / "g.parquet").exists()


def test_samples_without_slides_warn_or_fail(store, tmp_path):
    m = _matrix(store)
    m.loc["TCGA-ZZ-0001-01A"] = 1.0
    path = tmp_path / "m.tsv"
    m.reset_index(names="sample").to_csv(path, sep="\t", index=False)
    with pytest.warns(SamplesWithoutSlidesWarning, match="TCGA-ZZ-0001-01A"):
        r = import_targets(path, store=store.root, name="w")
    assert r.samples_without_slides == ("TCGA-ZZ-0001-01A",) and "no slide" in r.summary()
    with pytest.raises(TargetsError, match="no slide in the store.*TCGA-ZZ-0001-01A"):
        import_targets(path, store=store.root, name="w2", strict=True)
    assert not (store.root / "targets" / "w2.parquet").exists()


def _write_star(path, values: dict[str, float], *, seed: int):
    """A GDC STAR-counts file in the real layout (header comment, N_* rows, nine columns)."""
    rng = np.random.default_rng(seed)
    lines = [
        "# gene-model: GENCODE v36",
        "\t".join(
            [
                "gene_id",
                "gene_name",
                "gene_type",
                "unstranded",
                "stranded_first",
                "stranded_second",
                "tpm_unstranded",
                "fpkm_unstranded",
                "fpkm_uq_unstranded",
            ]
        ),
    ]
    for n in ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous"):
        lines.append(
            f"{n}\t\t\t{rng.integers(1e5, 1e6)}\t{rng.integers(1e5, 1e6)}\t{rng.integers(1e5, 1e6)}\t\t\t"
        )
    for i, (gene, tpm) in enumerate(values.items()):
        counts = int(tpm * 40)
        lines.append(
            f"ENSG{i:011d}.{i % 9 + 1}\t{gene}\tprotein_coding\t{counts}\t{counts // 2}\t{counts - counts // 2}\t"
            f"{tpm:.4f}\t{tpm / 3:.4f}\t{tpm / 2:.4f}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_gdc_star_counts(store, tmp_path):
    gdc = tmp_path / "gdc_download"
    genes = [g if g != "WARS" else "WARS1" for g in PANELS["graziani2022"]] + ["GAPDH"]
    rng = np.random.default_rng(7)
    sheet = []
    truth = {}
    for i, pid in enumerate(sorted(store.targets)):
        fid = f"{i:08x}-aaaa-bbbb-cccc-{i:012x}"
        fname = f"{fid[:8]}.rna_seq.augmented_star_gene_counts.tsv"
        vals = {g: float(np.round(rng.uniform(0, 200), 4)) for g in genes}
        _write_star(gdc / fid / fname, vals, seed=i)
        sample = f"{pid}-01A"
        truth[sample] = vals
        sheet.append(
            {
                "File ID": fid,
                "File Name": fname,
                "Data Category": "Transcriptome Profiling",
                "Data Type": "Gene Expression Quantification",
                "Project ID": "TCGA-COAD",
                "Case ID": pid,
                "Sample ID": sample,
                "Sample Type": "Primary Tumor",
            }
        )
    sheet_path = tmp_path / "gdc_sample_sheet.2026-11-25.tsv"
    pd.DataFrame(sheet).to_csv(sheet_path, sep="\t", index=False)
    r = import_star_counts(gdc, sample_sheet=sheet_path, store=store.root, name="star", genes="graziani2022")
    assert r.genes == tuple(PANELS["graziani2022"]) and r.n_samples == len(store.targets)
    assert any("WARS1" in n for n in r.notes)
    got = pq.read_table(r.path).to_pandas().set_index(["sample_id", "gene"])
    for sample, vals in truth.items():
        assert got.loc[(sample, "GNLY"), "raw_value"] == pytest.approx(vals["GNLY"])
        assert got.loc[(sample, "WARS"), "raw_value"] == pytest.approx(vals["WARS1"])
        assert got.loc[(sample, "TP53"), "value"] == pytest.approx(np.log1p(vals["TP53"]))
        assert got.loc[(sample, "GNLY"), "patient_id"] == sample[:12]
    fq = import_star_counts(
        gdc,
        sample_sheet=sheet_path,
        store=store.root,
        name="star_uq",
        measure="fpkm_uq_unstranded",
        genes=["APC"],
    )
    got = pq.read_table(fq.path).to_pandas().set_index("sample_id")
    for sample, vals in truth.items():
        assert got.loc[sample, "raw_value"] == pytest.approx(vals["APC"] / 2, abs=1e-4)
    with pytest.raises(TargetsError, match="measure='tpm'"):
        import_star_counts(gdc, sample_sheet=sheet_path, store=store.root, name="bad", measure="tpm")
    # a file missing from the sample sheet is named
    pd.DataFrame(sheet[1:]).to_csv(sheet_path, sep="\t", index=False)
    with pytest.raises(TargetsError, match=r"not in the sample sheet.*00000000\.rna_seq"):
        import_star_counts(gdc, sample_sheet=sheet_path, store=store.root, name="bad")
    # two files for one sample are named
    sheet[1]["Sample ID"] = sheet[0]["Sample ID"]
    pd.DataFrame(sheet).to_csv(sheet_path, sep="\t", index=False)
    with pytest.raises(TargetsError, match="duplicate sample id.*TCGA-FK-0001-01A"):
        import_star_counts(gdc, sample_sheet=sheet_path, store=store.root, name="bad")
    assert not (store.root / "targets" / "bad.parquet").exists()


def test_parquet_with_a_pandas_index(store, tmp_path):
    """Sample ids (or genes) that pandas wrote as the Parquet index are read as the first column."""
    m = _matrix(store)
    path = tmp_path / "indexed.parquet"
    m.rename_axis("sample_id").to_parquet(path)
    r = import_targets(path, store=store.root, name="ix")
    assert r.orientation == "samples-rows" and r.n_samples == 4 and r.genes == ("GNLY", "FBN1", "MGP")
    r = import_targets(path, store=store.root, name="ix2", orientation="samples-rows")
    got = pq.read_table(r.path).to_pandas()
    assert sorted(set(got.sample_id)) == sorted(m.index)
    assert got.set_index(["sample_id", "gene"]).loc[(m.index[0], "MGP"), "raw_value"] == pytest.approx(
        m.iloc[0]["MGP"]
    )
    m.T.rename_axis("gene").to_parquet(path)
    r = import_targets(path, store=store.root, name="ix3")
    assert r.orientation == "genes-rows" and r.genes == ("GNLY", "FBN1", "MGP") and r.n_samples == 4
    # R's write.table: a header one field short of the rows (no name for the row-name column)
    tsv = tmp_path / "r.tsv"
    tsv.write_text(
        "\t".join(m.columns)
        + "\n"
        + "".join("\t".join([s, *map(str, row)]) + "\n" for s, row in m.iterrows())
    )
    r = import_targets(tsv, store=store.root, name="ix4")
    assert r.orientation == "samples-rows" and r.genes == ("GNLY", "FBN1", "MGP") and r.n_samples == 4


def test_repeated_header_names_are_named(store, tmp_path):
    m = _matrix(store).reset_index(names="sample")
    path = tmp_path / "dup.csv"
    m.set_axis(["sample", "APC", "GNLY", "APC"], axis=1).to_csv(path, index=False)
    for genes in (None, ["GNLY"], ["APC"]):
        with pytest.raises(TargetsError, match=r"gene\(s\) in several columns of the header: APC$"):
            import_targets(path, store=store.root, name="dup", genes=genes)
    assert not (store.root / "targets" / "dup.parquet").exists()
    # names differing in case are different genes
    m.set_axis(["sample", "APC", "GNLY", "apc"], axis=1).to_csv(path, index=False)
    r = import_targets(path, store=store.root, name="case")
    assert r.genes == ("APC", "GNLY", "apc")
    # genes as rows: a repeated header name is a repeated sample
    t = _matrix(store).T.rename_axis("gene").reset_index()
    t.columns = ["gene", *[t.columns[1]] * 2, *t.columns[3:]]
    t.to_csv(path, index=False)
    with pytest.raises(TargetsError, match=f"duplicate sample id.*{t.columns[1]}"):
        import_targets(path, store=store.root, name="dup", orientation="genes-rows")


def test_unreadable_files_and_bad_destinations_are_named(store, tmp_path):
    m = _matrix(store).reset_index(names="sample")
    ok = tmp_path / "ok.csv"
    m.to_csv(ok, index=False)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    png = tmp_path / "image.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    not_parquet = tmp_path / "m.parquet"
    not_parquet.write_bytes(b"sample,GNLY\n")
    for path, message in [
        (empty, "empty.csv is empty"),
        (png, "image.csv is not UTF-8 text"),
        (not_parquet, "m.parquet cannot be read as Parquet"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(TargetsError, match=message):
            import_targets(path, store=store.root, name="bad")
    with pytest.raises(StoreError, match=r"targets name '\.\./evil' cannot be used as a file name"):
        import_targets(ok, store=store.root, name="../evil")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for where, message in [
        (tmp_path / "nostore", "does not exist"),
        (run_dir, "is not a slide2expr store"),
        (ok, "is not a directory"),
    ]:
        with pytest.raises(StoreError, match=message):
            import_targets(ok, store=where, name="x")
        with pytest.raises(StoreError, match=message):
            import_star_counts(ok, sample_sheet=ok, store=where, name="x")
    assert not (tmp_path / "nostore").exists() and not (run_dir / "targets").exists()
    with pytest.raises(TargetsError, match=r"transform='sqrt' \(--transform\)"):
        import_targets(ok, store=store.root, name="x", transform="sqrt")
    with pytest.raises(TargetsError, match="nosheet.tsv does not exist"):
        import_star_counts(ok, sample_sheet=tmp_path / "nosheet.tsv", store=store.root, name="x")
