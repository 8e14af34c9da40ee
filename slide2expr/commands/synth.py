"""``slide2expr synth``: write the synthetic demo cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from slide2expr._app import app, fail


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (must be missing or empty)."),
    patients: int = typer.Option(
        40, "--patients", min=1, help="Number of patients (about a third get 2 slides)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes identical files."),
    size: int = typer.Option(
        0,
        "--size",
        min=0,
        help="Largest level-0 side in px; each slide's sides are drawn from [0.75*SIZE, SIZE]. "
        "0 (default) draws them from 10,000–16,000.",
    ),
    svs_fraction: float = typer.Option(
        0.5,
        "--svs-fraction",
        min=0.0,
        max=1.0,
        help="Share of slides written as Aperio .svs at 40x (rest: .tiff 20x).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier synthetic cohort in --out."
    ),
) -> None:
    """Write a synthetic cohort: H&E-like pyramidal slides, patients, expression of the paper's 35 genes, truth.

    Writes OUT/slides/*.svs|*.tiff, patients.csv, slides.csv, expression.csv (TPM-like; take log1p), truth.json and
    truth/<slide_id>.npz (label maps). See `slide2expr.synth.make_cohort`.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from slide2expr.synth import CohortError, make_cohort

    if size and size < 344:
        raise fail(
            f"--size {size} is too small: use at least 344 px (a slide needs room for 3 pyramid levels)"
        )
    size_range = (int(0.75 * size), size) if size else (10_000, 16_000)
    from slide2expr.synth._cohort import _check_out

    try:
        _check_out(out, overwrite)  # before the progress bar starts, so a refusal prints alone
    except CohortError as err:
        raise fail(str(err)) from None
    console = Console()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("rendering textures", total=None)

        def progress(done: int, total: int, row: dict | None) -> None:
            bar.update(
                task, total=total, completed=done, description=f"slide {row['slide_id']}" if row else "slides"
            )

        try:
            info = make_cohort(
                out,
                n_patients=patients,
                seed=seed,
                size=size_range,
                svs_fraction=svs_fraction,
                overwrite=overwrite,
                progress=progress,
            )
        except CohortError as err:
            raise fail(str(err)) from None

    slides = info.slides
    table = Table(title=f"synthetic cohort in {info.root}", title_justify="left")
    for col in ("format", "vendor", "mpp", "slides", "size (px)", "levels", "tissue", "MB", "s/slide"):
        table.add_column(col, justify="left" if col in ("format", "vendor") else "right")
    for fmt, g in slides.groupby("format", sort=True):
        table.add_row(
            f".{fmt}",
            g["vendor"].iloc[0],
            f"{g['mpp'].iloc[0]:.2f}",
            str(len(g)),
            f"{g[['width', 'height']].min().min():,}–{g[['width', 'height']].max().max():,}",
            f"{g['levels'].min()}–{g['levels'].max()}",
            f"{g['tissue_frac'].mean():.0%}",
            f"{g['bytes'].sum() / 1e6:.1f}",
            f"{g['seconds'].mean():.2f}",
        )
    console.print(table)
    kinds = {}
    for spec in info.truth["genes"].values():
        kinds[spec["kind"]] = kinds.get(spec["kind"], 0) + 1
    n_two = int((slides.groupby("patient_id").size() == 2).sum())
    console.print(
        f"{len(info.expression)} patients ({n_two} with 2 slides), {len(slides)} slides, "
        f"{info.expression.shape[1]} genes ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}); "
        f"{info.seconds:.1f} s in all"
    )
