"""``slide2expr synth``: write a synthetic cohort with ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import EXIT_INTERRUPTED, DryRunOpt, OverwriteOpt, app, fail, reported


def parse_size(text: str | None) -> int | tuple[int, int] | None:
    """``--size``: ``MAX`` draws each side from [0.75·MAX, MAX]; ``MIN-MAX`` from [MIN, MAX]; None the default."""
    if not text:
        return None
    lo, sep, hi = text.replace(",", "-").replace(":", "-").partition("-")
    try:
        if sep:
            return int(lo.replace("_", "")), int(hi.replace("_", ""))
        side = int(lo.replace("_", ""))
    except ValueError:
        raise fail(
            f"--size {text!r}: give the largest side in px (e.g. 12000) or a range MIN-MAX (e.g. 9000-13000)"
        ) from None
    return int(0.75 * side), side


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (must be missing or empty).")],
    n_patients: Annotated[
        int,
        typer.Option("--n-patients", help="Number of patients (about a third get 2 slides)."),
    ] = 40,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed writes identical files.")
    ] = 0,
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            help="Level-0 side lengths in px: MAX draws each side from [0.75*MAX, MAX], MIN-MAX from [MIN, MAX] "
            "(default 10000-16000; the demo uses 9000-13000).",
        ),
    ] = None,
    svs_fraction: Annotated[
        float,
        typer.Option(
            "--svs-fraction", help="Share of slides written as Aperio .svs at 40x (rest: .tiff 20x)."
        ),
    ] = 0.5,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Write a synthetic cohort: H&E-like pyramidal slides, patients, expression of the paper's 35 genes, truth.

    Writes OUT/slides/*.svs|*.tiff, patients.csv, slides.csv, expression.csv (TPM-like; take log1p), truth.json and
    truth/<slide_id>.npz (label maps). See `slide2expr.synth.make_cohort`.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slide2expr.synth import CohortError, check_cohort, make_cohort

    kwargs = {"n_patients": n_patients, "svs_fraction": svs_fraction, "overwrite": overwrite}
    if (parsed := parse_size(size)) is not None:
        kwargs["size"] = parsed
    with reported(CohortError):
        params = check_cohort(out, **kwargs)  # before the progress bar starts, so a refusal prints alone
    console = Console()
    if dry_run:
        lo, hi = params.size
        console.print(
            f"would write a synthetic cohort of {params.n_patients} patients (seed {seed}) into {out}: slides with "
            f"sides of {lo:,}–{hi:,} px, {params.svs_fraction:.0%} as .svs; nothing written (--dry-run)"
        )
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("rendering textures", total=None)

        def progress(done: int, total: int, row: dict | None) -> None:
            bar.update(
                task, total=total, completed=done, description=f"slide {row['slide_id']}" if row else "slides"
            )

        try:
            with reported(CohortError):
                info = make_cohort(out, seed=seed, progress=progress, **kwargs)
        except KeyboardInterrupt:
            bar.stop()
            console.print(
                f"interrupted: {out} holds an incomplete cohort; rerun with --overwrite to write it again"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_cohort(console, info)


def _print_cohort(console, info) -> None:
    from rich.table import Table

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
