"""``slide2expr targets``: import expression targets into a store (matrices or GDC STAR-counts), list them."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from slide2expr._app import app, fail

targets_app = typer.Typer(
    help="Expression targets: import a matrix or GDC STAR-counts files into STORE/targets/<name>.parquet.",
    no_args_is_help=True,
)
app.add_typer(targets_app, name="targets")


@targets_app.command(name="import")
def import_command(
    files: list[Path] = typer.Argument(
        ..., help="A CSV/TSV/Parquet matrix, or GDC STAR-counts .tsv files / a GDC download folder."
    ),
    store: Path = typer.Option(..., "--store", help="The store directory."),
    name: str = typer.Option(..., "--name", help="Targets set name: writes STORE/targets/<name>.parquet."),
    orientation: str = typer.Option("auto", "--orientation", help="auto | samples-rows | genes-rows"),
    genes: str | None = typer.Option(
        None, "--genes", help="Comma-separated genes, or a panel: graziani2022 (default: every gene)."
    ),
    transform: str = typer.Option("log1p", "--transform", help="log1p | log10p | none (raw kept beside it)."),
    sample_col: str | None = typer.Option(None, "--sample-col", help="Sample-id column (samples-rows)."),
    patient_col: str | None = typer.Option(
        None, "--patient-col", help="Patient-id column (non-TCGA cohorts)."
    ),
    sample_sheet: Path | None = typer.Option(
        None, "--sample-sheet", help="GDC sample sheet TSV: the inputs are STAR-counts files."
    ),
    measure: str = typer.Option("tpm_unstranded", "--measure", help="STAR-counts column to import."),
    strict: bool = typer.Option(False, "--strict", help="Samples with no slide in the store are an error."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing targets set of that name."),
) -> None:
    """Import expression targets; every problem (duplicate samples, unknown genes, bad values) is named.

    Nothing is written when a check fails. Samples whose patient has no slide in the store are listed (an
    error with --strict).
    """
    from slide2expr.contract import StoreError
    from slide2expr.sql import SamplesWithoutSlidesWarning, TargetsError, import_star_counts, import_targets

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SamplesWithoutSlidesWarning)  # the report lists them
            if sample_sheet is not None:
                src = files[0] if len(files) == 1 else files
                report = import_star_counts(
                    src,
                    sample_sheet=sample_sheet,
                    store=store,
                    name=name,
                    measure=measure,
                    genes=genes,
                    transform=transform,
                    strict=strict,
                    overwrite=force,
                )
            else:
                if len(files) != 1:
                    raise fail("give one matrix file (or --sample-sheet for GDC STAR-counts files)")
                report = import_targets(
                    files[0],
                    store=store,
                    name=name,
                    orientation=orientation,
                    genes=genes,
                    transform=transform,
                    sample_col=sample_col,
                    patient_col=patient_col,
                    strict=strict,
                    overwrite=force,
                )
    except (TargetsError, StoreError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # unreadable file, full disk …: the OS's reason and the path, not a traceback
        raise fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None
    typer.echo(report.summary())


@targets_app.command(name="list")
def list_command(store: Path = typer.Option(..., "--store", help="The store directory.")) -> None:
    """List the targets sets of a store: samples, patients, genes, transform."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from slide2expr.contract import StoreError, check_store
    from slide2expr.sql import list_targets

    try:
        check_store(store)
    except StoreError as exc:
        raise fail(str(exc)) from None
    df = list_targets(store)
    if df.empty:
        raise fail(f"no targets in {store}: run `slide2expr targets import FILE --store {store} --name NAME`")
    table = Table(title=Text(f"targets in {store}"))
    for col in df.columns:
        table.add_column(col)
    for row in df.itertuples(index=False):
        table.add_row(*(Text(str(v)) for v in row))
    Console().print(table)
