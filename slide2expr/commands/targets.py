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

targets_app = typer.Typer(
    help="Expression targets: import a matrix or GDC STAR-counts files into STORE/targets/<name>.parquet.",
    no_args_is_help=True,
)
app.add_typer(targets_app, name="targets")

StoreOpt = Annotated[Path, typer.Option("--store", help="The store directory.")]


@targets_app.command(name="import")
def import_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILES...",
            help="A CSV/TSV/Parquet matrix, or GDC STAR-counts .tsv files / a GDC download folder."
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
            "--genes", help="Comma-separated genes, or a panel: graziani2022 (default: every gene)."
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
    strict: Annotated[
        bool, typer.Option("--strict", help="Samples with no slide in the store are an error.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing targets set of that name.")
    ] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Import expression targets; every problem (duplicate samples, unknown genes, bad values) is named.

    Nothing is written when a check fails. Samples whose patient has no slide in the store are listed (an
    error with --strict).
    """
    from slide2expr import regress
    from slide2expr.contract import StoreError

    common = dict(
        store=store,
        name=name,
        genes=genes,
        transform=transform,
        strict=strict,
        overwrite=overwrite,
        dry_run=dry_run,
    )
    with reported(regress.TargetsError, StoreError), _os_errors(), warnings.catch_warnings():
        warnings.simplefilter("ignore", regress.SamplesWithoutSlidesWarning)  # the report lists them
        if sample_sheet is not None:
            src = files[0] if len(files) == 1 else files
            report = regress.import_star_counts(src, sample_sheet=sample_sheet, measure=measure, **common)
        elif len(files) != 1:
            raise fail("give one matrix file (or --sample-sheet for GDC STAR-counts files)")
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
