"""Targets import: expression matrices and GDC STAR-counts files → ``targets/<name>.parquet`` (long form).

The store's slides are read through :mod:`slide2expr.sql`; the file is written through the contract
(``targets_path``, ``TARGETS_SCHEMA``, ``write_table_atomic``).

Which samples are kept and how slides get them (TCGA barcodes, :mod:`slide2expr.contract`):

- ``sample_types`` keeps samples by the sample type of their barcode (default ``01``, primary tumour); a sample id
  that is no TCGA barcode carries no sample type and is kept.
- A slide pairs with the samples of its patient of the same sample type and, where both barcodes carry them
  (``pair_by``), the same vial and portion; ``slide_types`` limits the slides (``DX`` diagnostic, ``TS``/``BS``
  frozen). The choice is recorded in the file, and ``sql.load_cohort`` joins bags to samples by it: a bag's target is
  the mean of the samples its slides pair with (never across sample types), and its slides that pair with none are
  left out of it.
- GDC STAR-counts: the ``_PAR_Y`` rows (the Y copies of the pseudoautosomal genes) are dropped, symbols on several
  Ensembl genes are summed or refused (``duplicates``), and the Ensembl id and GENCODE gene type are kept beside each
  symbol (``gene_id``, ``gene_type``).

The report (:class:`TargetsReport`) says what was kept, dropped, paired and averaged, and why.

>>> resolve_sample_types("tumor")[:3], resolve_sample_types("01,11"), resolve_sample_types("all")
(('01', '02', '03'), ('01', '11'), None)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr import sql
from slide2expr.contract import (
    PAIR_LEVELS,
    TARGETS_SCHEMA,
    StoreError,
    check_id,
    check_store,
    pair_slides,
    parse_tcga,
    resolve_slide_types,
    sample_type_name,
    store_path,
    targets_path,
    tcga_patient,
    write_table_atomic,
)
from slide2expr.regress._genes import (
    ALL_GENES,
    GRAZIANI2022_GENES,
    PANEL_ALIASES,
    PANELS,
    GeneSelectionError,
    unknown_genes_message,
)
from slide2expr.regress._genes import listing as _listing
from slide2expr.regress._genes import resolve_genes as _resolve_genes

__all__ = ["GRAZIANI2022_GENES", "PANELS", "PANEL_ALIASES"]

#: What ``transform=`` takes: ``log1p(raw)``, ``log10(1 + raw)``, or the raw values.
TRANSFORMS = ("log1p", "log10p", "none")
#: What ``orientation=`` takes.
ORIENTATIONS = ("auto", "genes-rows", "samples-rows")
#: The columns of a GDC STAR-counts file; the last six are the measures ``measure=`` takes.
STAR_COLUMNS = (
    "gene_id",
    "gene_name",
    "gene_type",
    "unstranded",
    "stranded_first",
    "stranded_second",
    "tpm_unstranded",
    "fpkm_unstranded",
    "fpkm_uq_unstranded",
)
STAR_MEASURES = STAR_COLUMNS[3:]
#: The name GDC gives the STAR-counts files; a download folder is searched for these.
STAR_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
#: Share of an axis's labels that must match (patients, barcodes or genes) for ``orientation="auto"`` to decide.
ORIENTATION_MATCH = 0.5
#: ``sample_types=`` default: primary solid tumour.
DEFAULT_SAMPLE_TYPES = "01"
#: Sample kinds ``sample_types=`` takes by name, as ranges of sample type codes.
SAMPLE_KIND_CODES = {
    "tumor": range(1, 10),
    "tumour": range(1, 10),
    "normal": range(10, 20),
    "control": range(20, 30),
}
#: What ``duplicates=`` takes for a gene symbol on several Ensembl genes of a STAR-counts file.
DUPLICATE_RULES = ("sum", "refuse")
#: GDC's suffix of the Y copies of the pseudoautosomal genes (their reads are counted on the X copy).
PAR_Y_SUFFIX = "_PAR_Y"


class TargetsError(ValueError):
    """The targets cannot be imported as given; the message lists every problem found. Nothing was written."""


class SamplesWithoutSlidesWarning(UserWarning):
    """Some imported samples belong to patients with no slide in the store (listed in the report)."""


@dataclass(frozen=True)
class TargetsReport:
    """What :func:`import_targets` / :func:`import_star_counts` wrote (or, with ``dry_run``, would write) and
    decided.

    Attributes
    ----------
    n_samples, n_patients, genes
        What the file holds (kept samples only).
    kept_by_type
        Sample type code (``"none"`` for ids that are no TCGA barcode) → samples kept.
    dropped_by_type
        Sample type code → the ids of the samples ``sample_types`` dropped.
    paired_slides, unpaired_slides
        How many store slides pair with a kept sample; slide id → why one pairs with none.
    averaged
        Patient → the samples its bag averages (several samples of one sample type pair with its slides).
    mixed
        Patient → the sample types its slides pair with when there are several (a patient bag refuses them).
    duplicate_genes
        Symbol → the Ensembl ids summed into it (STAR-counts, ``duplicates="sum"``), for the imported genes.
    par_y_rows
        STAR-counts ``_PAR_Y`` rows dropped (per file).
    """

    name: str
    path: Path
    n_samples: int
    n_patients: int
    genes: tuple[str, ...]
    orientation: str
    transform: str
    samples_without_slides: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    written: bool = True
    sample_types: tuple[str, ...] | None = None
    kept_by_type: dict[str, int] = field(default_factory=dict)
    dropped_by_type: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pair_by: str = "portion"
    slide_types: tuple[str, ...] | None = None
    n_slides: int = 0
    paired_slides: int = 0
    unpaired_slides: dict[str, str] = field(default_factory=dict)
    averaged: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mixed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    duplicate_genes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    par_y_rows: int = 0

    def summary(self) -> str:
        """The report in a few lines: one per decision (samples kept and dropped, slides paired, bags averaged)."""
        lines = [
            f"{'wrote' if self.written else 'would write'} {self.path}: {self.n_samples} samples of "
            f"{self.n_patients} patients × {len(self.genes)} genes ({self.transform}; matrix read as "
            f"{self.orientation})",
            *self.notes,
            self._samples_line(),
        ]
        if self.n_slides:
            types = "all" if self.slide_types is None else ",".join(self.slide_types)
            line = (
                f"slides (pair_by={self.pair_by}, slide_types={types}): {self.paired_slides} of {self.n_slides} "
                "pair with a kept sample of their patient (same sample type; vial and portion where both ids carry "
                "them)"
            )
            if self.unpaired_slides:
                line += (
                    "; not paired (left out of their patient's bag, which has no target when none pairs): "
                    + _listing([f"{s} ({why})" for s, why in self.unpaired_slides.items()])
                )
            lines.append(line)
        if self.averaged:
            lines.append(
                f"averaged: {len(self.averaged)} patient bag(s) take the mean of several samples of one sample type "
                "that pair with their slides: "
                + _listing([f"{p} ({', '.join(s)})" for p, s in self.averaged.items()])
            )
        if self.mixed:
            lines.append(
                f"{len(self.mixed)} patient(s) have slides paired with samples of several sample types, which a "
                "patient bag never averages: load them by slide (by='slide', --by slide): "
                + _listing([f"{p} ({', '.join(t)})" for p, t in self.mixed.items()])
            )
        if self.samples_without_slides:
            lines.append(
                f"{len(self.samples_without_slides)} sample(s) have no slide in the store: "
                + _listing(self.samples_without_slides)
            )
        return "\n".join(lines)

    def _samples_line(self) -> str:
        chosen = "all" if self.sample_types is None else ",".join(self.sample_types)
        kept = ", ".join(
            f"{n} of type {sample_type_name(None if t == 'none' else t)}"
            for t, n in self.kept_by_type.items()
        )
        line = f"samples (sample_types={chosen}): kept {kept or 'none'}"
        if self.dropped_by_type:
            dropped = sum(len(v) for v in self.dropped_by_type.values())
            line += f"; dropped {dropped} of other sample types: " + "; ".join(
                f"{sample_type_name(t)} ×{len(ids)} ({_listing(ids)})"
                for t, ids in self.dropped_by_type.items()
            )
            line += " (choose with sample_types=, --sample-types: codes such as 01,11, or tumor, normal, all)"
        return line


def resolve_genes(genes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``None`` or ``"all"`` (every gene), a panel name (``"graziani2022"``), a file of names, a comma-separated
    string, or a list."""
    try:
        out = _resolve_genes(genes)
    except GeneSelectionError as exc:
        raise TargetsError(str(exc)) from None
    return None if out == ALL_GENES else out


def resolve_sample_types(sample_types: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The sample type codes ``sample_types`` names: codes (``"01"``, ``"1"``, ``"01,11"``), kinds (``"tumor"``:
    01–09, ``"normal"``: 10–19, ``"control"``: 20–29) or ``"all"``/None (every sample, None)."""
    if sample_types is None:
        return None
    items = sample_types.split(",") if isinstance(sample_types, str) else list(sample_types)
    items = [str(s).strip().lower() for s in items if str(s).strip()]
    if not items or items == ["all"]:
        return None
    codes: list[str] = []
    for s in items:
        if s in SAMPLE_KIND_CODES:
            codes.extend(f"{c:02d}" for c in SAMPLE_KIND_CODES[s])
        elif s.isdigit() and 0 < int(s) < 100:
            codes.append(f"{int(s):02d}")
        else:
            raise TargetsError(
                f"sample_types={sample_types!r} (--sample-types): {s!r} is no TCGA sample type; use codes (01 "
                "primary tumour, 11 solid tissue normal, …), tumor, normal, control, or all"
            )
    return tuple(dict.fromkeys(codes))


def _store_slides(store: Path) -> dict[str, str]:
    """Slide id → patient id of every slide row of the store (none before any slide is featurized)."""
    try:
        slides = sql.read_slides(store)
    except StoreError:  # no slides/*.parquet yet
        return {}
    return {
        str(sid): (pid if isinstance(pid, str) and pid else None) or tcga_patient(sid) or str(sid)
        for sid, pid in zip(slides["slide_id"], slides["patient_id"], strict=True)
    }


def _store_patients(store: Path) -> set[str]:
    """The patients with a slide in the store."""
    return set(_store_slides(store).values())


def _read_text_table(path: Path, *, what: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``, with an empty, binary or malformed file raised as a TargetsError."""
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise TargetsError(f"{path} does not exist: give {what}") from None
    except IsADirectoryError:
        raise TargetsError(f"{path} is a directory: give {what}") from None
    except pd.errors.EmptyDataError:
        raise TargetsError(f"{path} is empty: give {what}") from None
    except UnicodeDecodeError:
        raise TargetsError(f"{path} is not UTF-8 text (a binary file?): give {what}") from None
    except pd.errors.ParserError as exc:
        raise TargetsError(f"{path} cannot be parsed as {what}: {exc}".rstrip()) from None


def _header_row(path: Path, *, sep: str) -> list[str]:
    """The first row of a CSV/TSV file (gzip too) as written, with csv quoting rules."""
    import csv
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        return next(csv.reader(fh, delimiter=sep), [])


def _read_matrix(path: Path) -> pd.DataFrame:
    """The matrix as read, its header verbatim: index columns of a pandas Parquet file come back as columns."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            df = pq.read_table(path).to_pandas()
        except pa.ArrowException as exc:
            raise TargetsError(f"{path} cannot be read as Parquet: {exc}") from None
        if not isinstance(df.index, pd.RangeIndex):  # pandas wrote the sample ids (or genes) as its index
            df = df.reset_index()
        return df
    tsv = any(name.endswith(s) for s in (".tsv", ".tsv.gz", ".txt", ".txt.gz", ".tab"))
    what = "a TSV matrix (tab-separated)" if tsv else "a CSV matrix (comma-separated)"
    opts = {"sep": "\t" if tsv else ",", "dtype": object, "keep_default_na": False}
    df = _read_text_table(path, what=what, **opts)
    # pandas renames a repeated column name (APC, APC → APC, APC.1); the header row read as data keeps it
    header = _header_row(path, sep=opts["sep"])
    named = [h for h in header if h]
    if len(set(named)) < len(named) and len(header) == df.shape[1] and isinstance(df.index, pd.RangeIndex):
        df.columns = pd.Index([h or c for h, c in zip(header, df.columns, strict=True)], dtype=object)
    if not isinstance(df.index, pd.RangeIndex):  # a header one field short: pandas took column 1 as the index
        df = df.reset_index()
    return df


def _patient_of(sample: str, patients: set[str]) -> str | None:
    return tcga_patient(sample) or (sample if sample in patients else None)


def _detect_orientation(
    df: pd.DataFrame, patients: set[str], genes: tuple[str, ...] | None
) -> tuple[str, str]:
    first = df.iloc[:, 0].astype(str).tolist()
    cols = [str(c) for c in df.columns[1:]]

    def frac(labels: list[str], test) -> float:
        return sum(bool(test(x)) for x in labels) / max(len(labels), 1)

    for what, test in (
        ("match patients with slides in the store", lambda x: _patient_of(x, patients) in patients),
        ("are TCGA barcodes", tcga_patient),
        ("are the requested genes", (lambda x: x in set(genes)) if genes else (lambda x: False)),
    ):
        in_cols, in_rows = frac(cols, test), frac(first, test)
        if max(in_cols, in_rows) >= ORIENTATION_MATCH and in_cols != in_rows:
            genes_axis = what == "are the requested genes"
            cols_win = in_cols > in_rows
            orientation = "genes-rows" if cols_win != genes_axis else "samples-rows"
            where = "column names" if cols_win else "first-column values"
            return orientation, f"{in_cols if cols_win else in_rows:.0%} of the {where} {what}"
    raise TargetsError(
        "cannot tell whether samples are rows or columns (no axis holds TCGA barcodes, store patients or the "
        "requested genes): pass --orientation samples-rows or genes-rows (orientation= in Python)"
    )


def _to_samples_rows(
    df: pd.DataFrame, orientation: str, sample_col: str | None, patient_col: str | None
) -> tuple[pd.DataFrame, pd.Series | None]:
    """(samples × genes string frame indexed by sample id, sample→patient series or None)."""
    if orientation == "genes-rows":
        if sample_col or patient_col:
            raise TargetsError(
                "--sample-col/--patient-col (sample_col=/patient_col=) apply to samples-rows matrices; this one "
                "has genes as rows"
            )
        genes = df.iloc[:, 0].astype(str)
        dup = sorted(set(genes[genes.duplicated()]))
        if dup:
            raise TargetsError(f"gene(s) listed on several rows: {_listing(dup)}")
        body = df.iloc[:, 1:]
        dup_s = sorted(set(body.columns[body.columns.duplicated()]))
        if dup_s:
            raise TargetsError(f"duplicate sample id(s): {_listing(dup_s)}")
        wide = body.T
        wide.columns = genes.tolist()
        wide.index = [str(c) for c in body.columns]
        return wide, None
    repeated = sorted(set(df.columns[df.columns.duplicated()]))
    if repeated and not {sample_col or df.columns[0], patient_col} & set(repeated):
        raise TargetsError(f"gene(s) in several columns of the header: {_listing(repeated)}")
    if repeated:
        raise TargetsError(f"column(s) named several times in the header: {_listing(repeated)}")
    sample_col = sample_col or df.columns[0]
    for col, what in ((sample_col, "sample_col"), (patient_col, "patient_col")):
        if col is not None and col not in df.columns:
            raise TargetsError(
                f"{what}={col!r} (--{what.replace('_', '-')}) is not a column; columns: {_listing(list(df.columns))}"
            )
    samples = df[sample_col].astype(str)
    dup = sorted(set(samples[samples.duplicated()]))
    if dup:
        raise TargetsError(f"duplicate sample id(s): {_listing(dup)}")
    patients = df[patient_col].astype(str).set_axis(samples.tolist()) if patient_col else None
    wide = df.drop(columns=[c for c in (sample_col, patient_col) if c]).set_axis(samples.tolist())
    wide.columns = [str(c) for c in wide.columns]
    return wide, patients


def _select_genes(
    wide: pd.DataFrame, genes: tuple[str, ...] | None, notes: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """The columns of ``genes`` (all when None), named as asked, and the matrix column each was taken from."""
    if genes is None:
        dup = sorted(set(wide.columns[wide.columns.duplicated()]))
        if dup:
            raise TargetsError(f"gene(s) appear in several columns: {_listing(dup)}")
        return wide, list(wide.columns)
    have = set(wide.columns)
    take, unknown = {}, []
    for g in genes:
        if g in have:
            take[g] = g
            continue
        alias = next((a for a in PANEL_ALIASES.get(g, ()) if a in have), None)
        if alias:
            take[g] = alias
            notes.append(f"{g}: values of {alias} (its current HGNC symbol)")
        else:
            unknown.append(g)
    if unknown:
        raise TargetsError(unknown_genes_message(unknown, list(wide.columns), where="the matrix"))
    out = wide.loc[:, list(take.values())]
    out.columns = list(take)
    return out, list(take.values())


def _numeric(wide: pd.DataFrame) -> np.ndarray:
    """Parse every cell as a float; raise naming the (sample, gene) cells that are missing or not numbers."""
    cells = wide.to_numpy()
    if cells.dtype.kind in "fiu":
        values = cells.astype(np.float64)
    else:  # one vectorised parse of every cell
        values = (
            pd.to_numeric(pd.Series(cells.ravel()), errors="coerce").to_numpy(np.float64).reshape(cells.shape)
        )
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        cells = [
            f"{wide.index[r]}/{wide.columns[c]}={wide.iat[r, c]!r}" for r, c in zip(rows, cols, strict=True)
        ]
        raise TargetsError(
            f"{len(cells)} missing or non-numeric value(s) (sample/gene=value): {_listing(cells)}"
        )
    return values


def _transform(raw: np.ndarray, transform: str, samples: Sequence[str], genes: Sequence[str]) -> np.ndarray:
    if transform == "none":
        return raw.copy()
    neg = np.argwhere(raw < 0)
    if len(neg):
        cells = [f"{samples[r]}/{genes[c]}={raw[r, c]:g}" for r, c in neg]
        raise TargetsError(
            f"{transform} needs values ≥ 0; negative: {_listing(cells)} (use --transform none, or "
            "transform='none' in Python)"
        )
    return np.log1p(raw) if transform == "log1p" else np.log10(1.0 + raw)


def _check_destination(store: str | os.PathLike, name: str, transform: str) -> Path:
    """Refuse a bad transform, a targets name that is no file stem, or a path that is not a store."""
    if transform not in TRANSFORMS:
        raise TargetsError(f"transform={transform!r} (--transform): use one of {', '.join(TRANSFORMS)}")
    check_id(name, what="targets name")
    return check_store(store)


def _sample_patients(
    samples: list[str], patients_given: pd.Series | None, store_patients: set[str]
) -> list[str]:
    """The patient of each sample: from the given column, else its TCGA barcode or a store patient id."""
    if patients_given is not None:
        patient = [str(patients_given[s]) for s in samples]
        empty = [s for s, p in zip(samples, patient, strict=True) if not p or p == "nan"]
        if empty:
            raise TargetsError(f"sample(s) with an empty patient id: {_listing(empty)}")
        return patient
    patient = [_patient_of(s, store_patients) for s in samples]
    unknown = [s for s, p in zip(samples, patient, strict=True) if p is None]
    if unknown:
        raise TargetsError(
            f"{len(unknown)} sample id(s) are not TCGA barcodes and not patient ids of the store: "
            f"{_listing(unknown)}; give a sample→patient column (patient_col=/--patient-col)"
        )
    return patient


def _long_table(
    samples: list[str], patient: list[str], genes: list[str], value, raw, gene_info: pd.DataFrame | None
) -> pa.Table:
    """The long form (TARGETS_SCHEMA): one row per sample × gene, samples outer; ``gene_info`` (indexed by gene:
    ``gene_id``, ``gene_type``) fills those columns, null without it."""
    n_s, n_g = raw.shape
    by_sample = pa.array(np.repeat(np.arange(n_s), n_g))
    by_gene = pa.array(np.tile(np.arange(n_g), n_s))

    def per_gene(col: str) -> pa.Array:
        if gene_info is None:
            return pa.nulls(n_s * n_g, pa.string())
        return pa.array(gene_info.loc[genes, col].tolist(), pa.string()).take(by_gene)

    return pa.table(
        {
            "sample_id": pa.array(samples, pa.string()).take(by_sample),
            "patient_id": pa.array(patient, pa.string()).take(by_sample),
            "gene": pa.array(genes, pa.string()).take(by_gene),
            "value": value.ravel(),
            "raw_value": raw.ravel(),
            "gene_id": per_gene("gene_id"),
            "gene_type": per_gene("gene_type"),
        },
        schema=TARGETS_SCHEMA,
    )


def _sample_type_of(sample: str) -> str:
    """The sample type code of a sample id, ``"none"`` when it is no TCGA barcode or carries none."""
    b = parse_tcga(sample)
    return b.sample_type if b is not None and b.sample_type else "none"


def _keep_sample_types(
    samples: list[str], sample_types: tuple[str, ...] | None
) -> tuple[np.ndarray, dict[str, int], dict[str, tuple[str, ...]]]:
    """``(keep (n_samples,) bool, kept count by type, dropped ids by type)``; ids without a sample type are kept."""
    types = [_sample_type_of(s) for s in samples]
    keep = np.array([sample_types is None or t == "none" or t in sample_types for t in types], dtype=bool)
    kept: dict[str, int] = {}
    dropped: dict[str, list[str]] = {}
    for s, t, k in zip(samples, types, keep, strict=True):
        if k:
            kept[t] = kept.get(t, 0) + 1
        else:
            dropped.setdefault(t, []).append(s)
    if not keep.any():
        found = "; ".join(f"{sample_type_name(t)} ×{len(v)}" for t, v in sorted(dropped.items()))
        raise TargetsError(
            f"no sample of sample_types={','.join(sample_types or ())} (--sample-types): the file holds {found}; "
            "choose the sample types to keep (codes such as 01,11, or tumor, normal, all)"
        )
    return keep, dict(sorted(kept.items())), {t: tuple(v) for t, v in sorted(dropped.items())}


def _no_pairs_message(slides: dict[str, str], samples: list[str], pair_by: str, slide_types) -> str:
    types = "all" if slide_types is None else ",".join(slide_types)
    return (
        f"no sample pairs with any slide of the store ({len(slides)} slides of {len(set(slides.values()))} "
        f"patients, e.g. {_listing(sorted(slides)[:3])}; {len(samples)} samples, e.g. {_listing(samples[:3])}). "
        "A sample pairs with a slide of the same patient (the TCGA-XX-XXXX part of both ids, or the slide's "
        "patient_id and the sample's patient column) whose sample type (the 01 of -01A) is the same and, where both "
        f"ids carry them, whose vial (A) and portion (-01) are the same (pair_by={pair_by}; a diagnostic slide's "
        f"01Z-00 matches any vial and portion; slide_types={types}). Check the patient ids, sample_types= "
        "(--sample-types), slide_types= (--slide-types) or pair_by= (--pair-by)"
    )


def _pairing_report(
    slides: dict[str, str],
    samples: list[str],
    patient: list[str],
    *,
    pair_by: str,
    slide_types: tuple[str, ...] | None,
) -> dict:
    """How the store's slides pair with the kept samples, as :class:`TargetsReport` fields."""
    pairing = pair_slides(
        slides, dict(zip(samples, patient, strict=True)), pair_by=pair_by, slide_types=slide_types
    )
    if slides and samples and not pairing.samples_of:
        raise TargetsError(_no_pairs_message(slides, samples, pair_by, slide_types))
    bag_samples: dict[str, set[str]] = {}
    for slide, paired in pairing.samples_of.items():
        bag_samples.setdefault(slides[slide], set()).update(paired)
    averaged, mixed = {}, {}
    for p, ss in sorted(bag_samples.items()):
        types = sorted({_sample_type_of(s) for s in ss})
        if len(types) > 1:
            mixed[p] = tuple(types)
        elif len(ss) > 1:
            averaged[p] = tuple(sorted(ss))
    return {
        "n_slides": len(slides),
        "paired_slides": len(pairing.samples_of),
        "unpaired_slides": dict(sorted(pairing.unpaired.items())),
        "averaged": averaged,
        "mixed": mixed,
    }


def _finish(
    wide: pd.DataFrame,
    patients_given: pd.Series | None,
    *,
    store: str | os.PathLike,
    name: str,
    genes: tuple[str, ...] | None,
    transform: str,
    orientation: str,
    strict: bool,
    overwrite: bool,
    dry_run: bool,
    notes: list[str],
    source: dict,
    sample_types,
    slide_types,
    pair_by: str,
    gene_info: pd.DataFrame | None = None,
    report_extra: dict | None = None,
) -> TargetsReport:
    """Check the samples × genes matrix ``wide``, keep the chosen sample types, pair them with the store's slides,
    and write it (unless ``dry_run``) as ``targets/<name>.parquet``."""
    root = store_path(store)
    out = targets_path(root, name)
    if out.exists() and not overwrite:
        raise TargetsError(f"{out} exists: choose another name, or replace it with overwrite (--overwrite)")
    wide, taken_from = _select_genes(wide, genes, notes)
    if gene_info is not None:
        gene_info = gene_info.loc[taken_from].set_axis(list(wide.columns))
    if wide.shape[0] == 0 or wide.shape[1] == 0:
        raise TargetsError(f"nothing to import: {wide.shape[0]} samples × {wide.shape[1]} genes")
    slides = _store_slides(root)
    store_patients = set(slides.values())
    samples = [str(s) for s in wide.index]
    patient = _sample_patients(samples, patients_given, store_patients)
    keep, kept_by_type, dropped_by_type = _keep_sample_types(samples, sample_types)
    wide = wide.loc[keep]
    samples = [s for s, k in zip(samples, keep, strict=True) if k]
    patient = [p for p, k in zip(patient, keep, strict=True) if k]
    raw = _numeric(wide)
    gene_names = [str(g) for g in wide.columns]
    value = _transform(raw, transform, samples, gene_names)
    pairing = _pairing_report(slides, samples, patient, pair_by=pair_by, slide_types=slide_types)
    without = tuple(s for s, p in zip(samples, patient, strict=True) if p not in store_patients)
    if without and strict:
        raise TargetsError(
            f"{len(without)} sample(s) have no slide in the store (strict): {_listing(without)}"
        )
    if not dry_run:
        meta = {
            "kind": "targets",
            "transform": transform,
            "genes": gene_names,
            "orientation": orientation,
            "source": source,
            "sample_types": None if sample_types is None else list(sample_types),
            "pairing": {
                "pair_by": pair_by,
                "slide_types": None if slide_types is None else list(slide_types),
            },
        }
        table = _long_table(samples, patient, gene_names, value, raw, gene_info)
        write_table_atomic(table, out, metadata=meta)
    if without:
        warnings.warn(
            f"{len(without)} sample(s) have no slide in the store: {_listing(without)}",
            SamplesWithoutSlidesWarning,
            stacklevel=3,
        )
    return TargetsReport(
        name=name,
        path=out,
        n_samples=len(samples),
        n_patients=len(set(patient)),
        genes=tuple(gene_names),
        orientation=orientation,
        transform=transform,
        samples_without_slides=without,
        notes=tuple(notes),
        written=not dry_run,
        sample_types=sample_types,
        kept_by_type=kept_by_type,
        dropped_by_type=dropped_by_type,
        pair_by=pair_by,
        slide_types=slide_types,
        **pairing,
        **(report_extra or {}),
    )


def _check_pairing_args(sample_types, slide_types, pair_by) -> tuple:
    """``(sample type codes or None, slide type codes or None, pair_by)``, each checked."""
    if pair_by not in PAIR_LEVELS:
        raise TargetsError(f"pair_by={pair_by!r} (--pair-by): use one of {', '.join(PAIR_LEVELS)}")
    try:
        slides = resolve_slide_types(slide_types)
    except ValueError as exc:
        raise TargetsError(str(exc)) from None
    return resolve_sample_types(sample_types), slides, pair_by


def import_targets(
    path: str | os.PathLike,
    *,
    store: str | os.PathLike,
    name: str,
    orientation: str = "auto",
    genes: str | Sequence[str] | None = None,
    transform: str = "log1p",
    sample_col: str | None = None,
    patient_col: str | None = None,
    sample_types: str | Sequence[str] | None = DEFAULT_SAMPLE_TYPES,
    slide_types: str | Sequence[str] | None = None,
    pair_by: str = "portion",
    strict: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
) -> TargetsReport:
    """Import an expression matrix (CSV, TSV or Parquet) into ``targets/<name>.parquet``.

    Parameters
    ----------
    path
        The matrix. ``samples-rows``: one row per sample, a sample-id column (``sample_col``, default the first),
        optionally a patient column, then one column per gene. ``genes-rows``: one row per gene (gene names in
        the first column), one column per sample.
    store, name
        Writes ``STORE/targets/<name>.parquet`` (TARGETS_SCHEMA, long form: sample_id, patient_id, gene, value,
        raw_value; ``gene_id``/``gene_type`` null), atomically; nothing is written when any check fails.
    orientation
        ``"auto"`` detects it: the axis whose labels match patients with slides in the store, else the axis of
        TCGA barcodes, else the axis holding the requested genes (the report says which rule decided).
    genes
        ``None`` (every gene), a list, a comma-separated string, a file of names, or a panel name
        (``"graziani2022"``: the 35 genes of Graziani et al. 2022; ``WARS`` is taken from ``WARS1`` when only the
        new symbol is present). Unknown names are listed with the closest names of the matrix.
    transform
        ``value`` = ``log1p(raw)``, ``log10(1 + raw)`` (``"log10p"``) or ``raw`` (``"none"``). Z-scoring is left
        to training, fitted on training folds only.
    sample_col, patient_col
        For samples-rows matrices. Patients come from ``patient_col`` if given, else from TCGA barcodes
        (``TCGA-XX-XXXX``), else a sample id equal to a store patient id.
    sample_types
        Samples kept by the sample type of their TCGA barcode: ``"01"`` (primary solid tumour, the default), codes
        (``"01,06"``), ``"tumor"`` (01–09), ``"normal"`` (10–19), ``"control"`` (20–29), or ``"all"``. Ids that
        are no TCGA barcode are kept (they carry no sample type).
    slide_types, pair_by
        How ``sql.load_cohort`` pairs the store's slides with these samples (recorded in the file): slides of
        ``slide_types`` only (``"DX"``, ``"frozen"`` = TS/BS/MS, …; None: every slide), matching the sample type
        and, where both ids carry them, the vial and portion (``pair_by="portion"``), the vial only (``"vial"``)
        or the sample type only (``"sample_type"``).
    strict
        Samples whose patient has no slide in the store are an error instead of a warning.
    overwrite
        Replace an existing ``targets/<name>.parquet``.
    dry_run
        Run every check and return the report without writing.

    Returns
    -------
    TargetsReport
        Its ``summary()`` names each decision: samples kept and dropped by sample type, slides paired and why the
        others are not, patients whose bag averages several samples.

    Raises
    ------
    TargetsError
        Duplicate sample ids or genes (rows, or columns of the header), genes not in the matrix, missing or
        non-numeric values, negative values under a log transform, samples with no patient id — each listed by
        name; an empty, binary or unparsable file; no sample of ``sample_types``; a store with slides none of which
        pairs with a sample (the message says how pairing works).
    StoreError
        ``store`` does not exist or is not a slide2expr store; ``name`` is not a safe file stem.
    """
    path = Path(path)
    if orientation not in ORIENTATIONS:
        raise TargetsError(
            f"orientation={orientation!r} (--orientation): use one of {', '.join(ORIENTATIONS)}"
        )
    _check_destination(store, name, transform)
    sample_types, slide_types, pair_by = _check_pairing_args(sample_types, slide_types, pair_by)
    if not path.exists():
        raise TargetsError(f"targets file {path} does not exist")
    if path.is_dir():
        raise TargetsError(
            f"targets file {path} is a directory: give a CSV/TSV/Parquet matrix (a GDC download folder needs "
            "--sample-sheet / import_star_counts)"
        )
    gene_list = resolve_genes(genes)
    df = _read_matrix(path)
    if df.shape[1] < 2:
        raise TargetsError(
            f"{path} has {df.shape[1]} column(s); is the separator right (.csv: comma, .tsv: tab)?"
        )
    notes: list[str] = []
    if orientation == "auto":
        if sample_col or patient_col:
            orientation, why = "samples-rows", "sample_col/patient_col given"
        else:
            orientation, why = _detect_orientation(df, _store_patients(store_path(store)), gene_list)
        notes.append(f"orientation detected as {orientation}: {why}")
    wide, patients = _to_samples_rows(df, orientation, sample_col, patient_col)
    return _finish(
        wide,
        patients,
        store=store,
        name=name,
        genes=gene_list,
        transform=transform,
        orientation=orientation,
        strict=strict,
        overwrite=overwrite,
        dry_run=dry_run,
        notes=notes,
        source={"file": str(path.resolve()), "format": "matrix"},
        sample_types=sample_types,
        slide_types=slide_types,
        pair_by=pair_by,
    )


def read_star_counts(path: str | os.PathLike, *, measure: str = "tpm_unstranded") -> pd.DataFrame:
    """One GDC STAR-counts file → ``gene_id``, ``gene_name``, ``gene_type``, ``value`` (of ``measure``), one row
    per gene row of the file, in file order; the four ``N_*`` summary rows are skipped."""
    if measure not in STAR_MEASURES:
        raise TargetsError(f"measure={measure!r} (--measure): use one of {', '.join(STAR_MEASURES)}")
    path = Path(path)
    df = _read_text_table(
        path, what="a GDC STAR-counts file", sep="\t", comment="#", dtype=str, keep_default_na=False
    )
    missing = [c for c in ("gene_id", "gene_name", measure) if c not in df.columns]
    if missing:
        raise TargetsError(f"{path} is not a GDC STAR-counts file: no column(s) {', '.join(missing)}")
    df = df[~df["gene_id"].str.startswith("N_")]
    values = pd.to_numeric(df[measure], errors="coerce")
    bad = df.loc[values.isna(), "gene_name"].tolist()
    if bad:
        raise TargetsError(f"{path}: missing or non-numeric {measure} for gene(s) {_listing(bad)}")
    dup = sorted(set(df.loc[df["gene_id"].duplicated(), "gene_id"]))
    if dup:
        raise TargetsError(f"{path}: Ensembl id(s) on several rows: {_listing(dup)}")
    return pd.DataFrame(
        {
            "gene_id": df["gene_id"].to_numpy(),
            "gene_name": df["gene_name"].to_numpy(),
            "gene_type": df["gene_type"].to_numpy() if "gene_type" in df.columns else None,
            "value": values.to_numpy(np.float64),
        }
    )


def read_sample_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """A GDC sample sheet (TSV with ``File Name`` and ``Sample ID``; ``Case ID`` used when present)."""
    sheet = _read_text_table(
        path, what="a GDC sample sheet (TSV)", sep="\t", dtype=str, keep_default_na=False
    )
    missing = [c for c in ("File Name", "Sample ID") if c not in sheet.columns]
    if missing:
        raise TargetsError(f"{path} is not a GDC sample sheet: no column(s) {', '.join(missing)}")
    dup = sorted(set(sheet.loc[sheet["File Name"].duplicated(), "File Name"]))
    if dup:
        raise TargetsError(f"{path}: file name(s) listed twice: {_listing(dup)}")
    return sheet


def _star_files(files_or_dir, sample_sheet) -> list[Path]:
    """The STAR-counts files: those given, or under a folder (GDC's ``<file id>/<file name>`` layout) the files
    named ``*.rna_seq.augmented_star_gene_counts.tsv``, else every ``*.tsv`` but the sample sheet."""
    if isinstance(files_or_dir, (str, os.PathLike)) and Path(files_or_dir).is_dir():
        found = sorted(p for p in Path(files_or_dir).rglob(f"*{STAR_SUFFIX}") if not p.name.startswith("."))
        files = found or sorted(
            p for p in Path(files_or_dir).rglob("*.tsv") if p.name != Path(sample_sheet).name
        )
    elif isinstance(files_or_dir, (str, os.PathLike)):
        files = [Path(files_or_dir)]
    else:
        files = [Path(f) for f in files_or_dir]
    if not files:
        raise TargetsError(f"no STAR-counts .tsv files under {files_or_dir}")
    missing_files = [str(f) for f in files if not f.exists()]
    if missing_files:
        raise TargetsError(f"file(s) not found: {_listing(missing_files)}")
    return files


def _sheet_samples(files: list[Path], sample_sheet) -> tuple[dict[Path, str], pd.Series | None]:
    """Each file's sample id from the sample sheet, and sample → patient from ``Case ID`` for non-TCGA ids."""
    sheet = read_sample_sheet(sample_sheet).set_index("File Name")
    unlisted = [f.name for f in files if f.name not in sheet.index]
    if unlisted:
        raise TargetsError(
            f"{len(unlisted)} file(s) are not in the sample sheet {sample_sheet}: {_listing(unlisted)}"
        )
    sample_of = {f: sheet.at[f.name, "Sample ID"].strip() for f in files}
    multi = [f"{f.name} ({s})" for f, s in sample_of.items() if "," in s or not s]
    if multi:
        raise TargetsError(f"file(s) with no or several Sample IDs in the sample sheet: {_listing(multi)}")
    seen: dict[str, Path] = {}
    dups = []
    for f, s in sample_of.items():
        if s in seen:
            dups.append(f"{s} ({seen[s].name}, {f.name})")
        seen[s] = f
    if dups:
        raise TargetsError(f"duplicate sample id(s) across files: {_listing(dups)}")
    patients = None
    if "Case ID" in sheet.columns:
        case = {sample_of[f]: sheet.at[f.name, "Case ID"].split(",")[0].strip() for f in files}
        if not all(tcga_patient(s) for s in case):
            patients = pd.Series(case)
    return sample_of, patients


def _collapse_symbols(
    tables: dict[str, pd.DataFrame], *, genes: tuple[str, ...] | None, duplicates: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """STAR-counts tables (sample → rows of :func:`read_star_counts`) → ``(samples × symbols values, per-symbol
    gene_id/gene_type, report fields)``: ``_PAR_Y`` rows dropped, symbols on several Ensembl ids summed (or
    refused, ``duplicates="refuse"``)."""
    ref_name, ref = next(iter(tables.items()))
    for sample, t in tables.items():
        if len(t) != len(ref) or not np.array_equal(t["gene_id"].to_numpy(), ref["gene_id"].to_numpy()):
            raise TargetsError(
                f"the STAR-counts files list different genes ({sample}: {len(t)} rows, {ref_name}: {len(ref)}): "
                "import files of one GDC data release (one GENCODE version) together"
            )
    par_y = ref["gene_id"].str.endswith(PAR_Y_SUFFIX).to_numpy()
    info = ref.loc[~par_y, ["gene_id", "gene_name", "gene_type"]].reset_index(drop=True)
    values = np.stack([t["value"].to_numpy()[~par_y] for t in tables.values()])  # samples × rows
    groups = info.groupby("gene_name", sort=False).indices  # symbol → row positions, first-appearance order
    symbols = list(groups)
    dup = {g: tuple(info["gene_id"].iloc[rows]) for g, rows in groups.items() if len(rows) > 1}
    wanted = set(symbols) if genes is None else {a for g in genes for a in (g, *PANEL_ALIASES.get(g, ()))}
    relevant = {g: ids for g, ids in dup.items() if g in wanted}
    if relevant and duplicates == "refuse":
        raise TargetsError(
            f"{len(relevant)} gene symbol(s) name several Ensembl genes (duplicates='refuse'): "
            + _listing([f"{g} ({', '.join(ids)})" for g, ids in relevant.items()])
            + "; sum them with duplicates='sum' (--duplicates sum), or leave them out with genes= (--genes)"
        )
    first = np.array([rows[0] for rows in groups.values()])
    summed = values[:, first].copy()
    for j, g in enumerate(symbols):
        if g in dup:
            summed[:, j] = values[:, groups[g]].sum(axis=1)
    wide = pd.DataFrame(summed, index=list(tables), columns=symbols)
    gene_info = pd.DataFrame(
        {
            "gene_id": [
                "+".join(dup[g]) if g in dup else info["gene_id"].iloc[groups[g][0]] for g in symbols
            ],
            "gene_type": [
                "+".join(dict.fromkeys(info["gene_type"].iloc[groups[g]].astype(str)))
                if info["gene_type"].notna().all()
                else None
                for g in symbols
            ],
        },
        index=symbols,
    )
    return wide, gene_info, {"duplicate_genes": relevant, "par_y_rows": int(par_y.sum())}


def import_star_counts(
    files_or_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    sample_sheet: str | os.PathLike,
    store: str | os.PathLike,
    name: str,
    measure: str = "tpm_unstranded",
    genes: str | Sequence[str] | None = None,
    transform: str = "log1p",
    sample_types: str | Sequence[str] | None = DEFAULT_SAMPLE_TYPES,
    slide_types: str | Sequence[str] | None = None,
    pair_by: str = "portion",
    duplicates: str = "sum",
    strict: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
) -> TargetsReport:
    """Import GDC STAR-counts files (one per sample) into ``targets/<name>.parquet``.

    Parameters
    ----------
    files_or_dir
        STAR-counts files, or the folder ``gdc-client`` downloads into (``<file id>/<file name>``), searched
        recursively for ``*.rna_seq.augmented_star_gene_counts.tsv``.
    sample_sheet
        The GDC sample sheet TSV: ``File Name`` → ``Sample ID`` (the sample barcode; its patient is the
        ``TCGA-XX-XXXX`` part, or ``Case ID`` for non-TCGA projects).
    measure
        Column to import: ``tpm_unstranded`` (default), ``fpkm_unstranded``, ``fpkm_uq_unstranded``,
        ``unstranded``, ``stranded_first``, ``stranded_second``.
    duplicates
        A gene symbol on several Ensembl genes: ``"sum"`` (default; counts, TPM and FPKM add up over genes) or
        ``"refuse"``. The ``_PAR_Y`` rows (Y copies of the pseudoautosomal genes, whose reads GDC counts on the X
        copy) are dropped either way. The table keeps each symbol's Ensembl id(s) (``gene_id``, ``+``-joined when
        summed) and GENCODE ``gene_type``, which ``compare``'s ``protein_coding`` option reads.
    genes, transform, sample_types, slide_types, pair_by, strict, overwrite, dry_run, store, name
        As in :func:`import_targets`.

    Raises
    ------
    TargetsError, StoreError
        As in :func:`import_targets`; also files missing from the sample sheet, files that are not STAR-counts
        files, files of different gene models, two files for one sample, and duplicated symbols under
        ``duplicates="refuse"``.
    """
    if measure not in STAR_MEASURES:
        raise TargetsError(f"measure={measure!r} (--measure): use one of {', '.join(STAR_MEASURES)}")
    if duplicates not in DUPLICATE_RULES:
        raise TargetsError(
            f"duplicates={duplicates!r} (--duplicates): use one of {', '.join(DUPLICATE_RULES)}"
        )
    _check_destination(store, name, transform)
    sample_types, slide_types, pair_by = _check_pairing_args(sample_types, slide_types, pair_by)
    files = _star_files(files_or_dir, sample_sheet)
    sample_of, patients = _sheet_samples(files, sample_sheet)
    gene_list = resolve_genes(genes)
    tables = {sample_of[f]: read_star_counts(f, measure=measure) for f in files}
    wide, gene_info, extra = _collapse_symbols(tables, genes=gene_list, duplicates=duplicates)
    notes = [f"{len(files)} STAR-counts file(s), measure {measure}"]
    if extra["par_y_rows"]:
        notes.append(
            f"PAR_Y: {extra['par_y_rows']} row(s) per file dropped (the Y copies of pseudoautosomal genes; each "
            "gene keeps its X row)"
        )
    if extra["duplicate_genes"]:
        notes.append(
            f"duplicated symbols (duplicates=sum): {len(extra['duplicate_genes'])} symbol(s) on several Ensembl "
            "genes summed: "
            + _listing([f"{g} ({', '.join(ids)})" for g, ids in extra["duplicate_genes"].items()])
        )
    return _finish(
        wide,
        patients,
        store=store,
        name=name,
        genes=gene_list,
        transform=transform,
        orientation="samples-rows",
        strict=strict,
        overwrite=overwrite,
        dry_run=dry_run,
        notes=notes,
        source={
            "files": len(files),
            "format": "gdc-star-counts",
            "measure": measure,
            "sample_sheet": str(sample_sheet),
            "duplicates": duplicates,
        },
        sample_types=sample_types,
        slide_types=slide_types,
        pair_by=pair_by,
        gene_info=gene_info,
        report_extra=extra,
    )
