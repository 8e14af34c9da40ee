"""TCGA/GDC semantics of ``targets import`` and of the bags' targets, on a GDC download in the real layout.

The fixture is what ``gdc-client download -m manifest`` leaves (one folder per file UUID holding
``<uuid-prefix>.rna_seq.augmented_star_gene_counts.tsv`` and a ``logs/`` folder) plus the portal's sample sheet, and a
store of TCGA-named slides with every trap:

- TCGA-FK-0001: tumour 01A and normal 11A samples; two diagnostic slides and a normal frozen slide (11A-01-TS1);
- TCGA-FK-0002: two tumour vials (01A, 01B) averaged;
- TCGA-FK-0003: sample 01A, a diagnostic slide and a frozen slide of vial B (01B-01-TS1), which pairs with nothing;
- TCGA-FK-0004: a normal sample only (11A) beside two tumour diagnostic slides;
- TCGA-FK-0005: one tumour sample, one diagnostic slide;
- TCGA-FK-0006: sample 01A, a diagnostic slide and a frozen slide of vial A (01A-01-TS1), which pairs;
- TCGA-FK-0099: a tumour sample whose patient has no slide;
- genes: a PAR_Y copy (CD99), a symbol on two Ensembl genes (MATR3), protein-coding and other gene types.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from slide2expr.contract import (
    SLIDES_SCHEMA,
    StoreError,
    embeddings_path,
    read_metadata,
    slide_path,
    tiles_path,
    write_table_atomic,
)
from tests._fakestore import make_fake_store

#: (gene_id, gene_name, gene_type) rows of the STAR files, in file order.
GENES = (
    ("ENSG00000115523.17", "GNLY", "protein_coding"),
    ("ENSG00000166147.15", "FBN1", "protein_coding"),
    ("ENSG00000122711.9", "SPINK4", "protein_coding"),
    ("ENSG00000002586.20", "CD99", "protein_coding"),
    ("ENSG00000002586.20_PAR_Y", "CD99", "protein_coding"),
    ("ENSG00000015479.19", "MATR3", "protein_coding"),
    ("ENSG00000280987.4", "MATR3", "protein_coding"),
    ("ENSG00000251562.8", "MALAT1", "lncRNA"),
    ("ENSG00000207008.1", "MIR16-1", "miRNA"),
)
SYMBOLS = ("GNLY", "FBN1", "SPINK4", "CD99", "MATR3", "MALAT1", "MIR16-1")
#: sample → (case, tissue type) of the sample sheet.
SAMPLES = {
    "TCGA-FK-0001-01A": "Tumor",
    "TCGA-FK-0001-11A": "Normal",
    "TCGA-FK-0002-01A": "Tumor",
    "TCGA-FK-0002-01B": "Tumor",
    "TCGA-FK-0003-01A": "Tumor",
    "TCGA-FK-0004-11A": "Normal",
    "TCGA-FK-0005-01A": "Tumor",
    "TCGA-FK-0006-01A": "Tumor",
    "TCGA-FK-0099-01A": "Tumor",
}
#: Slides added to the fake store's diagnostic slides (01Z-00-DX1/DX2), each a copy of a DX slide's tiles.
EXTRA_SLIDES = {
    "TCGA-FK-0001-11A-01-TS1": "TCGA-FK-0001-01Z-00-DX1",
    "TCGA-FK-0003-01B-01-TS1": "TCGA-FK-0003-01Z-00-DX1",
    "TCGA-FK-0006-01A-01-TS1": "TCGA-FK-0006-01Z-00-DX1",
}


def _tpm(sample: str) -> dict[str, float]:
    """Hand-set TPM per STAR row (gene_id): distinct per sample and gene, PAR_Y rows zero as GDC writes them."""
    k = list(SAMPLES).index(sample) + 1 if sample in SAMPLES else 50
    out = {}
    for i, (gid, _, _) in enumerate(GENES):
        out[gid] = 0.0 if gid.endswith("_PAR_Y") else round(10.0 * k + 1.5 * i + 0.25, 4)
    return out


def _expected_raw(sample: str) -> dict[str, float]:
    """Per symbol: the PAR_Y row dropped, MATR3's two Ensembl genes summed."""
    tpm = _tpm(sample)
    out = {}
    for gid, name, _ in GENES:
        if gid.endswith("_PAR_Y"):
            continue
        out[name] = out.get(name, 0.0) + tpm[gid]
    return out


def _write_star(path, sample: str) -> None:
    header = [
        "gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
        "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded",
    ]  # fmt: skip
    lines = ["# gene-model: GENCODE v36", "\t".join(header)]
    for n, c in (("N_unmapped", 2591358), ("N_multimapping", 1845227), ("N_noFeature", 1207713), ("N_ambiguous", 2367455)):  # fmt: skip
        lines.append(f"{n}\t\t\t{c}\t{c + 11}\t{c + 7}\t\t\t")
    for (gid, name, gtype), tpm in zip(GENES, _tpm(sample).values(), strict=True):
        counts = int(tpm * 40)
        lines.append(
            f"{gid}\t{name}\t{gtype}\t{counts}\t{counts // 2}\t{counts - counts // 2}\t{tpm:.4f}\t{tpm / 3:.4f}\t"
            f"{tpm / 2:.4f}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _gdc_download(root, samples=SAMPLES):
    """``root/<uuid>/<prefix>.rna_seq.augmented_star_gene_counts.tsv`` (+ ``logs/``) and the sample sheet."""
    rows = []
    for i, (sample, tissue) in enumerate(samples.items()):
        uuid = f"{i + 1:08x}-5b2f-4a3c-9d1e-{i + 17:012x}"
        name = f"{uuid[:8]}-aaaa-bbbb-cccc-{i:012x}.rna_seq.augmented_star_gene_counts.tsv"
        _write_star(root / uuid / name, sample)
        (root / uuid / "logs").mkdir()
        (root / uuid / "logs" / f"{name}.parcel").write_text("")
        rows.append(
            {
                "File ID": uuid,
                "File Name": name,
                "Data Category": "Transcriptome Profiling",
                "Data Type": "Gene Expression Quantification",
                "Project ID": "TCGA-FK",
                "Case ID": sample[:12],
                "Sample ID": sample,
                "Tissue Type": tissue,
                "Tumor Descriptor": "Primary" if tissue == "Tumor" else "Not Applicable",
                "Specimen Type": "Solid Tissue",
                "Preservation Method": "Unknown",
            }
        )
    sheet = root / "gdc_sample_sheet.2026-12-06.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return root, sheet


def _clone_slide(fs, src: str, new: str) -> None:
    """Write slide ``new`` into the fake store with ``src``'s tiles and embeddings (the contract's writers)."""
    patient = new[:12]
    for path_of in (
        lambda sid: tiles_path(fs.root, fs.tiling, sid),
        lambda sid: embeddings_path(fs.root, fs.tiling, fs.encoder, sid),
    ):
        t = pq.read_table(path_of(src))
        meta = read_metadata(path_of(src)) | {"slide_id": new}
        t = t.set_column(0, "slide_id", pa.array([new] * len(t), pa.string()))
        write_table_atomic(t.replace_schema_metadata({}), path_of(new), metadata=meta)
    row = pq.read_table(slide_path(fs.root, src)).to_pylist()[0] | {"slide_id": new, "patient_id": patient}
    write_table_atomic(
        pa.Table.from_pylist([row], schema=SLIDES_SCHEMA),
        slide_path(fs.root, new),
        metadata={"kind": "slides"},
    )


@pytest.fixture(scope="module")
def gdc(tmp_path_factory):
    root = tmp_path_factory.mktemp("gdc")
    fs = make_fake_store(root / "store", n_patients=6, failed_slide=False)
    for new, src in EXTRA_SLIDES.items():
        _clone_slide(fs, src, new)
    folder, sheet = _gdc_download(root / "gdc_download")
    return fs, folder, sheet


def _import(gdc, name, **kw):
    fs, folder, sheet = gdc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", regress.SamplesWithoutSlidesWarning)
        return regress.import_star_counts(folder, sample_sheet=sheet, store=fs.root, name=name, **kw)


def _load(gdc, name, **kw):
    fs = gdc[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cohort = sql.load_cohort(fs.root, encoder=fs.encoder, targets=name, **kw)
    return cohort, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def tumour(gdc):
    return _import(gdc, "tumour")


def test_imported_targets_equal_the_hand_computed_values(tumour):
    got = pq.read_table(tumour.path).to_pandas()
    kept = [s for s in SAMPLES if "-01" in s]
    assert sorted(got["sample_id"].unique()) == sorted(kept)
    assert tuple(got["gene"].unique()) == SYMBOLS
    got = got.set_index(["sample_id", "gene"])
    for s in kept:
        for gene, raw in _expected_raw(s).items():
            row = got.loc[(s, gene)]
            assert row["raw_value"] == pytest.approx(raw, abs=1e-4)
            assert row["value"] == pytest.approx(np.log1p(raw), abs=1e-4)
            assert row["patient_id"] == s[:12]
    s = kept[0]
    assert got.loc[(s, "MATR3"), "gene_id"] == "ENSG00000015479.19+ENSG00000280987.4"
    assert got.loc[(s, "CD99"), "gene_id"] == "ENSG00000002586.20"  # the PAR_Y copy dropped, not summed
    assert (
        got.loc[(s, "MALAT1"), "gene_type"] == "lncRNA"
        and got.loc[(s, "GNLY"), "gene_type"] == "protein_coding"
    )
    meta = read_metadata(tumour.path)
    assert meta["sample_types"] == ["01"] and meta["pairing"] == {"pair_by": "portion", "slide_types": None}


def test_the_summary_names_each_decision(tumour):
    r = tumour
    assert r.kept_by_type == {"01": 7}
    assert r.dropped_by_type == {"11": ("TCGA-FK-0001-11A", "TCGA-FK-0004-11A")}
    assert r.par_y_rows == 1
    assert r.duplicate_genes == {"MATR3": ("ENSG00000015479.19", "ENSG00000280987.4")}
    assert r.averaged == {"TCGA-FK-0002": ("TCGA-FK-0002-01A", "TCGA-FK-0002-01B")}
    assert r.samples_without_slides == ("TCGA-FK-0099-01A",)
    assert r.n_slides == 11 and r.paired_slides == 7
    assert set(r.unpaired_slides) == {
        "TCGA-FK-0001-11A-01-TS1",
        "TCGA-FK-0003-01B-01-TS1",
        "TCGA-FK-0004-01Z-00-DX1",
        "TCGA-FK-0004-01Z-00-DX2",
    }
    assert r.unpaired_slides["TCGA-FK-0003-01B-01-TS1"] == "vial B ≠ A (TCGA-FK-0003-01A)"
    assert r.unpaired_slides["TCGA-FK-0004-01Z-00-DX1"] == "its patient has no sample"
    text = r.summary()
    for phrase in (
        "kept 7 of type 01 (Primary Solid Tumor)",
        "dropped 2 of other sample types: 11 (Solid Tissue Normal) ×2",
        "PAR_Y: 1 row(s) per file dropped",
        "MATR3 (ENSG00000015479.19, ENSG00000280987.4)",
        "7 of 11 pair with a kept sample",
        "TCGA-FK-0001-11A-01-TS1 (sample type 11 ≠ 01 (TCGA-FK-0001-01A))",
        "averaged: 1 patient bag(s)",
        "TCGA-FK-0002 (TCGA-FK-0002-01A, TCGA-FK-0002-01B)",
        "1 sample(s) have no slide in the store: TCGA-FK-0099-01A",
    ):
        assert phrase in text, (phrase, text)


def test_bags_get_the_paired_samples_targets(gdc, tumour):
    fs = gdc[0]
    c, messages = _load(gdc, "tumour")
    y = pd.DataFrame(c.y_true, index=c.bag_ids, columns=c.genes)
    log = {s: {g: np.log1p(v) for g, v in _expected_raw(s).items()} for s in SAMPLES}
    for p in ("TCGA-FK-0001", "TCGA-FK-0003", "TCGA-FK-0005", "TCGA-FK-0006"):
        for g in SYMBOLS:
            assert y.loc[p, g] == pytest.approx(log[f"{p}-01A"][g], abs=1e-4)
    for g in SYMBOLS:  # two tumour vials: their mean
        want = (log["TCGA-FK-0002-01A"][g] + log["TCGA-FK-0002-01B"][g]) / 2
        assert y.loc["TCGA-FK-0002", g] == pytest.approx(want, abs=1e-4)
    # the normal-only patient is no target of its tumour slides
    assert y.loc["TCGA-FK-0004"].isna().all() and c.missing_targets == ("TCGA-FK-0004",)
    # unpaired slides are left out of their patient's bag; the paired frozen slide is in it
    slides_of = {b: set(c.slide_ids[c.bag_slice(i)]) for i, b in enumerate(c.bag_ids)}
    assert slides_of["TCGA-FK-0001"] == {"TCGA-FK-0001-01Z-00-DX1", "TCGA-FK-0001-01Z-00-DX2"}
    assert slides_of["TCGA-FK-0003"] == {"TCGA-FK-0003-01Z-00-DX1"}
    assert slides_of["TCGA-FK-0006"] == {"TCGA-FK-0006-01Z-00-DX1", "TCGA-FK-0006-01A-01-TS1"}
    n = c.offsets[1] - c.offsets[0]
    assert n == len(fs.embeddings["TCGA-FK-0001-01Z-00-DX1"]) + len(fs.embeddings["TCGA-FK-0001-01Z-00-DX2"])
    assert c.meta["patients_with_several_samples_averaged"] == ["TCGA-FK-0002"]
    assert set(c.meta["slides_not_paired"]) == {"TCGA-FK-0001-11A-01-TS1", "TCGA-FK-0003-01B-01-TS1"}
    assert c.meta["gene_types"]["MALAT1"] == "lncRNA"
    assert any("left out of its bag" in m and "TCGA-FK-0001-11A-01-TS1" in m for m in messages)


def test_tumour_and_normal_are_never_averaged(gdc):
    r = _import(gdc, "every_type", sample_types="all")
    assert r.dropped_by_type == {} and r.kept_by_type == {"01": 7, "11": 2}
    assert r.mixed == {"TCGA-FK-0001": ("01", "11")}
    assert "patient bag never averages" in r.summary()
    with pytest.raises(
        StoreError, match=r"bag TCGA-FK-0001 pairs with samples of several sample types.*by='slide'"
    ):
        _load(gdc, "every_type")
    c, _ = _load(gdc, "every_type", by="slide")
    y = pd.DataFrame(c.y_true, index=c.bag_ids, columns=c.genes)
    assert y.loc["TCGA-FK-0001-11A-01-TS1", "GNLY"] == pytest.approx(
        np.log1p(_expected_raw("TCGA-FK-0001-11A")["GNLY"])
    )
    assert y.loc["TCGA-FK-0001-01Z-00-DX1", "GNLY"] == pytest.approx(
        np.log1p(_expected_raw("TCGA-FK-0001-01A")["GNLY"])
    )
    # the normal-only patient's tumour slides still get nothing
    assert y.loc["TCGA-FK-0004-01Z-00-DX1"].isna().all()
    normal = _import(gdc, "normal", sample_types="normal")
    assert normal.kept_by_type == {"11": 2} and normal.paired_slides == 1


def test_slide_types_and_pair_by(gdc):
    dx = _import(gdc, "dx", slide_types="DX")
    assert dx.paired_slides == 6 and dx.unpaired_slides["TCGA-FK-0006-01A-01-TS1"].startswith("slide type TS")
    c, _ = _load(gdc, "dx")
    slides = set(c.slide_ids)
    assert not any("-TS1" in s for s in slides)
    loose = _import(gdc, "loose", pair_by="sample_type")
    assert "TCGA-FK-0003-01B-01-TS1" not in loose.unpaired_slides
    c, _ = _load(gdc, "loose")
    assert "TCGA-FK-0003-01B-01-TS1" in set(c.slide_ids)
    for bad, message in (
        ({"slide_types": "XX"}, r"slide_types='XX' \(--slide-types\): 'XX' is no TCGA slide type"),
        ({"sample_types": "tumours"}, r"sample_types='tumours' \(--sample-types\)"),
        ({"pair_by": "aliquot"}, r"pair_by='aliquot' \(--pair-by\)"),
        ({"sample_types": "06"}, r"no sample of sample_types=06.*01 \(Primary Solid Tumor\) ×7"),
        ({"duplicates": "refuse"}, r"MATR3 \(ENSG00000015479\.19, ENSG00000280987\.4\).*duplicates='sum'"),
        (
            {"genes": ["GNLYY", "matr3"]},
            r"not in the matrix: GNLYY, matr3; did you mean GNLYY → GNLY, matr3 → MATR3\?",
        ),
    ):
        with pytest.raises(regress.TargetsError, match=message):
            _import(gdc, "bad", **bad)
    assert not (gdc[0].root / "targets" / "bad.parquet").exists()
    # duplicates outside the chosen genes are not an error
    r = _import(gdc, "panel", genes=["GNLY", "FBN1"], duplicates="refuse")
    assert r.genes == ("GNLY", "FBN1") and r.duplicate_genes == {}


def test_no_sample_pairing_with_any_slide_says_how_matching_works(gdc, tmp_path):
    fs = gdc[0]
    folder, sheet = _gdc_download(
        tmp_path / "other", {"TCGA-ZZ-0001-01A": "Tumor", "TCGA-ZZ-0002-01A": "Tumor"}
    )
    with pytest.raises(
        regress.TargetsError, match=r"no sample pairs with any slide.*same patient.*sample type.*vial"
    ):
        regress.import_star_counts(folder, sample_sheet=sheet, store=fs.root, name="none")


def test_cli_prints_the_summary(gdc, tmp_path):
    from slide2expr.cli import app

    fs, folder, sheet = gdc
    args = [
        "targets",
        "import",
        str(folder),
        "--sample-sheet",
        str(sheet),
        "--store",
        str(fs.root),
        "--name",
        "cli",
    ]
    r = CliRunner().invoke(app, [*args, "--dry-run"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "would write" in r.output and "dropped 2 of other sample types" in r.output
    assert not (fs.root / "targets" / "cli.parquet").exists()
    r = CliRunner().invoke(
        app, [*args, "--sample-types", "tumor", "--slide-types", "frozen"], env={"COLUMNS": "250"}
    )
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "slide_types=TS,BS,MS): 1 of 11 pair" in out and "slide type DX not in slide_types" in out
    assert "averaged" not in out  # TCGA-FK-0002's two vials pair with its diagnostic slide only
    r = CliRunner().invoke(app, [*args, "--name", "x", "--pair-by", "slide"])
    assert r.exit_code == 2 and "pair_by='slide' (--pair-by)" in " ".join(r.output.split())
