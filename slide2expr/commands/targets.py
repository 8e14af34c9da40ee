"""``slide2expr targets``: import expression targets into a store (matrices or GDC STAR-counts), list them.

The flags are the parameters of :func:`slide2expr.regress.import_targets` / :func:`~slide2expr.regress.import_star_counts`
with dashes; the library checks them.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import DryRunOpt, app, fail, reported
from slide2expr.contract import store_path

targets_app = typer.Typer(
    help="Expression targets: import a matrix or GDC STAR-counts files into STORE/targets/<name>.parquet.",
    no_args_is_help=True,
)
app.add_typer(targets_app, name="targets")

StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store", parser=store_path, metavar="PATH", help="The store: a directory or s3://bucket/prefix."
    ),
]


@targets_app.command(name="import")
def import_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILES...",
            help="A CSV/TSV/Parquet matrix, or GDC STAR-counts .tsv files / a GDC download folder.",
        ),
    ],
    store: StoreOpt,
    name: Annotated[
        str, typer.Option("--name", help="Targets set name: writes STORE/targets/<name>.parquet.")
    ],
    orientation: Annotated[
        str, typer.Option("--orientation", help="auto | samples-rows | genes-rows")
    ] = "auto",
    genes: Annotated[
        str | None,
        typer.Option(
            "--genes",
            help="Comma-separated genes, a file of gene names, or a panel: graziani2022 (default: every gene). "
            "Unknown names are listed with the closest names in the file.",
        ),
    ] = None,
    transform: Annotated[
        str, typer.Option("--transform", help="log1p | log10p | none (raw kept beside it).")
    ] = "log1p",
    sample_col: Annotated[
        str | None, typer.Option("--sample-col", help="Sample-id column (samples-rows).")
    ] = None,
    patient_col: Annotated[
        str | None, typer.Option("--patient-col", help="Patient-id column (non-TCGA cohorts).")
    ] = None,
    sample_sheet: Annotated[
        Path | None,
        typer.Option("--sample-sheet", help="GDC sample sheet TSV: the inputs are STAR-counts files."),
    ] = None,
    measure: Annotated[
        str, typer.Option("--measure", help="STAR-counts column to import.")
    ] = "tpm_unstranded",
    sample_types: Annotated[
        str,
        typer.Option(
            "--sample-types",
            help="TCGA sample types to keep, from the barcodes: codes (01 primary tumour, 11 solid tissue normal, "
            "01,06 …), tumor (01-09), normal (10-19), control (20-29) or all. Ids that are no TCGA barcode are kept.",
        ),
    ] = "01",
    slide_types: Annotated[
        str,
        typer.Option(
            "--slide-types",
            help="Slides that get these targets: all, DX (diagnostic), frozen (TS,BS,MS), or codes such as TS,BS.",
        ),
    ] = "all",
    pair_by: Annotated[
        str,
        typer.Option(
            "--pair-by",
            help="How a slide pairs with its patient's samples: portion (same sample type, and vial and portion "
            "where both ids carry them), vial, or sample_type.",
        ),
    ] = "portion",
    duplicates: Annotated[
        str,
        typer.Option(
            "--duplicates",
            help="STAR-counts: a gene symbol on several Ensembl genes is summed (sum) or an error (refuse); "
            "PAR_Y rows are dropped either way.",
        ),
    ] = "sum",
    strict: Annotated[
        bool, typer.Option("--strict", help="Samples with no slide in the store are an error.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing targets set of that name.")
    ] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Import expression targets; every problem (duplicate samples, unknown genes, bad values) is named.

    Nothing is written when a check fails. The summary says which samples were kept and dropped (by TCGA sample
    type), how the store's slides pair with them, which patients' bags average several samples, and which samples
    have no slide (an error with --strict).
    """
    from slide2expr import regress
    from slide2expr.contract import StoreError

    common = dict(
        store=store,
        name=name,
        genes=genes,
        transform=transform,
        sample_types=sample_types,
        slide_types=slide_types,
        pair_by=pair_by,
        strict=strict,
        overwrite=overwrite,
        dry_run=dry_run,
    )
    with reported(regress.TargetsError, StoreError), _os_errors(), warnings.catch_warnings():
        warnings.simplefilter("ignore", regress.SamplesWithoutSlidesWarning)  # the report lists them
        if sample_sheet is not None:
            src = files[0] if len(files) == 1 else files
            report = regress.import_star_counts(
                src, sample_sheet=sample_sheet, measure=measure, duplicates=duplicates, **common
            )
        elif len(files) != 1:
            raise fail("give one matrix file (or --sample-sheet for GDC STAR-counts files)")
        elif duplicates != "sum":
            raise fail(
                "--duplicates applies to GDC STAR-counts files (with --sample-sheet); a matrix names each gene once"
            )
        else:
            report = regress.import_targets(
                files[0], orientation=orientation, sample_col=sample_col, patient_col=patient_col, **common
            )
    typer.echo(report.summary())


@contextlib.contextmanager
def _os_errors():
    """An unreadable file or a full disk as one line: the OS's reason and the path, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None


@targets_app.command(name="list")
def list_command(store: StoreOpt) -> None:
    """List the targets sets of a store: samples, patients, genes, transform."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from slide2expr import sql
    from slide2expr.contract import StoreError, check_store

    with reported(StoreError):
        check_store(store)
    df = sql.list_targets(store)
    if df.empty:
        raise fail(f"no targets in {store}: run `slide2expr targets import FILE --store {store} --name NAME`")
    table = Table(title=Text(f"targets in {store}"))
    for col in df.columns:
        table.add_column(col)
    for row in df.itertuples(index=False):
        table.add_row(*(Text(str(v)) for v in row))
    Console().print(table)
