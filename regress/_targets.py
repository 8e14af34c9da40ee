"""Targets import: expression matrices and GDC STAR-counts files → ``targets/<name>.parquet`` (long form).

The store's slides are read through :mod:`slide2expr.sql`; the file is written through the contract
(``targets_path``, ``TARGETS_SCHEMA``, ``write_table_atomic``).

>>> PANELS["graziani2022"][:3], len(PANELS["graziani2022"])
(('SEMA5A', 'CTTNBP2', 'WARS'), 35)
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
    TARGETS_SCHEMA,
    StoreError,
    check_id,
    check_store,
    targets_path,
    tcga_patient,
    write_table_atomic,
)

#: The 35 genes of Graziani et al. 2022 (recoverable from their code), in their order.
GRAZIANI2022_GENES = (
    "SEMA5A",
    "CTTNBP2",
    "WARS",
    "POFUT1",
    "QPRT",
    "PLAGL2",
    "TP53RK",
    "DDX27",
    "FSCN1",
    "TIMP3",
    "VAV2",
    "RBMS1",
    "ASRGL1",
    "SPINK4",
    "RAB34",
    "MGP",
    "TNS1",
    "SDC2",
    "LYZ",
    "TRIB2",
    "ATP9A",
    "ARMCX1",
    "RASD1",
    "GNLY",
    "CCDC80",
    "B3GNT6",
    "TP53",
    "APC",
    "AXIN2",
    "CXCR4",
    "CDHR1",
    "DNMT3B",
    "DACH1",
    "FBN1",
    "CAPN9",
)
#: Named gene panels that ``genes=`` accepts.
PANELS: dict[str, tuple[str, ...]] = {"graziani2022": GRAZIANI2022_GENES}
#: Current HGNC symbols of panel genes renamed since the paper (GENCODE v36, as in GDC STAR-counts, uses these).
PANEL_ALIASES = {"WARS": ("WARS1",)}
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
#: Items a message lists before "… (+n more)".
MAX_LISTED = 12
#: Share of an axis's labels that must match (patients, barcodes or genes) for ``orientation="auto"`` to decide.
ORIENTATION_MATCH = 0.5


class TargetsError(ValueError):
    """The targets cannot be imported as given; the message lists every problem found. Nothing was written."""


class SamplesWithoutSlidesWarning(UserWarning):
    """Some imported samples belong to patients with no slide in the store (listed in the report)."""


@dataclass(frozen=True)
class TargetsReport:
    """What :func:`import_targets` / :func:`import_star_counts` wrote (or, with ``dry_run``, would write) and
    found."""

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

    def summary(self) -> str:
        """The report in a few lines."""
        lines = [
            f"{'wrote' if self.written else 'would write'} {self.path}: {self.n_samples} samples of {self.n_patients} patients × {len(self.genes)} genes "
            f"({self.transform}; matrix read as {self.orientation})",
            *self.notes,
        ]
        if self.samples_without_slides:
            lines.append(
                f"{len(self.samples_without_slides)} sample(s) have no slide in the store: "
                + _listing(self.samples_without_slides)
            )
        return "\n".join(lines)


def _listing(items: Sequence[str]) -> str:
    items = list(items)
    more = f" … (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(map(str, items[:MAX_LISTED])) + more


def resolve_genes(genes: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``None`` (every gene), a panel name (``"graziani2022"``), a comma-separated string, or a list."""
    if genes is None:
        return None
    if isinstance(genes, str):
        if genes in PANELS:
            return PANELS[genes]
        genes = [g.strip() for g in genes.split(",") if g.strip()]
    genes = tuple(genes)
    if not genes:
        raise TargetsError(
            "genes= (--genes) is empty: give gene names, a panel (graziani2022), or None for every gene"
        )
    dup = sorted(set(pd.Index(genes)[pd.Index(genes).duplicated()]))
    if dup:
        raise TargetsError(f"genes listed twice: {_listing(dup)}")
    return genes


def _store_patients(store: Path) -> set[str]:
    """The patients with a slide in the store (none before any slide is featurized)."""
    try:
        slides = sql.read_slides(store)
    except StoreError:  # no slides/*.parquet yet
        return set()
    return {
        (pid if isinstance(pid, str) else None) or tcga_patient(sid) or sid
        for sid, pid in zip(slides["slide_id"], slides["patient_id"], strict=True)
    }


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
    header = [str(h) for h in _read_text_table(path, what=what, header=None, nrows=1, **opts).iloc[0]]
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


def _select_genes(wide: pd.DataFrame, genes: tuple[str, ...] | None, notes: list[str]) -> pd.DataFrame:
    if genes is None:
        dup = sorted(set(wide.columns[wide.columns.duplicated()]))
        if dup:
            raise TargetsError(f"gene(s) appear in several columns: {_listing(dup)}")
        return wide
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
        raise TargetsError(f"gene(s) not in the matrix: {_listing(unknown)}")
    out = wide.loc[:, list(take.values())]
    out.columns = list(take)
    return out


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


def _long_table(samples: list[str], patient: list[str], genes: list[str], value, raw) -> pa.Table:
    """The long form (TARGETS_SCHEMA): one row per sample × gene, samples outer."""
    n_s, n_g = raw.shape
    by_sample = pa.array(np.repeat(np.arange(n_s), n_g))
    return pa.table(
        {
            "sample_id": pa.array(samples, pa.string()).take(by_sample),
            "patient_id": pa.array(patient, pa.string()).take(by_sample),
            "gene": pa.array(genes, pa.string()).take(pa.array(np.tile(np.arange(n_g), n_s))),
            "value": value.ravel(),
            "raw_value": raw.ravel(),
        },
        schema=TARGETS_SCHEMA,
    )


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
) -> TargetsReport:
    """Check the samples × genes matrix ``wide`` and write it (unless ``dry_run``) as ``targets/<name>.parquet``."""
    root = Path(store)
    out = targets_path(root, name)
    if out.exists() and not overwrite:
        raise TargetsError(f"{out} exists: choose another name, or replace it with overwrite (--overwrite)")
    wide = _select_genes(wide, genes, notes)
    if wide.shape[0] == 0 or wide.shape[1] == 0:
        raise TargetsError(f"nothing to import: {wide.shape[0]} samples × {wide.shape[1]} genes")
    raw = _numeric(wide)
    samples = [str(s) for s in wide.index]
    gene_names = [str(g) for g in wide.columns]
    value = _transform(raw, transform, samples, gene_names)
    store_patients = _store_patients(root)
    patient = _sample_patients(samples, patients_given, store_patients)
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
        }
        write_table_atomic(_long_table(samples, patient, gene_names, value, raw), out, metadata=meta)
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
    )


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
        raw_value), atomically; nothing is written when any check fails.
    orientation
        ``"auto"`` detects it: the axis whose labels match patients with slides in the store, else the axis of
        TCGA barcodes, else the axis holding the requested genes (the report says which rule decided).
    genes
        ``None`` (every gene), a list, a comma-separated string, or a panel name (``"graziani2022"``: the 35
        genes of Graziani et al. 2022; ``WARS`` is taken from ``WARS1`` when only the new symbol is present).
    transform
        ``value`` = ``log1p(raw)``, ``log10(1 + raw)`` (``"log10p"``) or ``raw`` (``"none"``). Z-scoring is left
        to training, fitted on training folds only.
    sample_col, patient_col
        For samples-rows matrices. Patients come from ``patient_col`` if given, else from TCGA barcodes
        (``TCGA-XX-XXXX``), else a sample id equal to a store patient id.
    strict
        Samples whose patient has no slide in the store are an error instead of a warning.
    overwrite
        Replace an existing ``targets/<name>.parquet``.
    dry_run
        Run every check and return the report without writing.

    Returns
    -------
    TargetsReport

    Raises
    ------
    TargetsError
        Duplicate sample ids or genes (rows, or columns of the header), genes not in the matrix, missing or
        non-numeric values, negative values under a log transform, samples with no patient id — each listed by
        name; an empty, binary or unparsable file.
    StoreError
        ``store`` does not exist or is not a slide2expr store; ``name`` is not a safe file stem.
    """
    path = Path(path)
    if orientation not in ORIENTATIONS:
        raise TargetsError(
            f"orientation={orientation!r} (--orientation): use one of {', '.join(ORIENTATIONS)}"
        )
    _check_destination(store, name, transform)
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
            orientation, why = _detect_orientation(df, _store_patients(Path(store)), gene_list)
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
    )


def read_star_counts(path: str | os.PathLike, *, measure: str = "tpm_unstranded") -> pd.Series:
    """One GDC STAR-counts file → values of ``measure`` by gene name (the four ``N_*`` rows skipped).

    Gene names that occur on several rows (e.g. the PAR_Y copies of X genes) are summed.
    """
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
    return values.groupby(df["gene_name"].to_numpy(), sort=False).sum()


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


def import_star_counts(
    files_or_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    sample_sheet: str | os.PathLike,
    store: str | os.PathLike,
    name: str,
    measure: str = "tpm_unstranded",
    genes: str | Sequence[str] | None = None,
    transform: str = "log1p",
    strict: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
) -> TargetsReport:
    """Import GDC STAR-counts files (one per sample) into ``targets/<name>.parquet``.

    Parameters
    ----------
    files_or_dir
        ``*.tsv`` files, or a directory searched recursively (the GDC download layout ``<file id>/<file name>``).
    sample_sheet
        The GDC sample sheet TSV: ``File Name`` → ``Sample ID`` (the sample barcode; its patient is the
        ``TCGA-XX-XXXX`` part, or ``Case ID`` for non-TCGA projects).
    measure
        Column to import: ``tpm_unstranded`` (default), ``fpkm_unstranded``, ``fpkm_uq_unstranded``,
        ``unstranded``, ``stranded_first``, ``stranded_second``.
    genes, transform, strict, overwrite, dry_run, store, name
        As in :func:`import_targets`.

    Raises
    ------
    TargetsError, StoreError
        As in :func:`import_targets`; also files missing from the sample sheet, files that are not STAR-counts
        files, and two files for one sample.
    """
    if measure not in STAR_MEASURES:
        raise TargetsError(f"measure={measure!r} (--measure): use one of {', '.join(STAR_MEASURES)}")
    _check_destination(store, name, transform)
    if isinstance(files_or_dir, (str, os.PathLike)) and Path(files_or_dir).is_dir():
        files = sorted(p for p in Path(files_or_dir).rglob("*.tsv") if p.name != Path(sample_sheet).name)
    elif isinstance(files_or_dir, (str, os.PathLike)):
        files = [Path(files_or_dir)]
    else:
        files = [Path(f) for f in files_or_dir]
    if not files:
        raise TargetsError(f"no STAR-counts .tsv files under {files_or_dir}")
    missing_files = [str(f) for f in files if not f.exists()]
    if missing_files:
        raise TargetsError(f"file(s) not found: {_listing(missing_files)}")
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
    gene_list = resolve_genes(genes)
    columns = {sample_of[f]: read_star_counts(f, measure=measure) for f in files}
    wide = pd.DataFrame(columns).T  # samples × genes (union of gene names; NaN where a file lacks a gene)
    patients = None
    if "Case ID" in sheet.columns:
        case = {sample_of[f]: sheet.at[f.name, "Case ID"].split(",")[0].strip() for f in files}
        if not all(tcga_patient(s) for s in case):
            patients = pd.Series(case)
    notes = [f"{len(files)} STAR-counts file(s), measure {measure}"]
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
        },
    )
