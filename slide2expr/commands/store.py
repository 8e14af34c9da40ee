"""``slide2expr store``: store maintenance; ``store rm`` takes slides, a tiling or an encoder out with their files.

The flags are the parameters of :func:`slide2expr.featurize.remove_from_store` with dashes; the library checks
them (:func:`slide2expr.featurize.plan_removal`, which ``--dry-run`` shows and the removal begins with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import DryRunOpt, app, reported, store_option

store_app = typer.Typer(
    help="Store maintenance: take slides, a tiling or an encoder out of a store with their files.",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")


@store_app.command(name="rm", no_args_is_help=True)
def rm_command(
    store: Annotated[
        Path,
        store_option("The store: a directory or s3://bucket/prefix."),
    ],
    slides: Annotated[
        str | None,
        typer.Option(
            "--slides",
            metavar="ID,ID…",
            help="Comma-separated slide ids. Alone: each slide whole (its slides/ row, tile grids, QC images and "
            "embeddings), e.g. a slide recorded by mistake. With --tiling or --encoder: only its files there.",
        ),
    ] = None,
    tiling: Annotated[
        str | None,
        typer.Option(
            help="A tiling (mpp0.50_px224_ov0): its tile grids, QC images and every encoder's embeddings."
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="An encoder: its embeddings (of --tiling only, when given); tile grids and rows stay."
        ),
    ] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Remove slides, a tiling or an encoder from a store with their files, embeddings first and slide rows last
    (a reader never sees embeddings without their tiles; the same command finishes a removal cut short).

    Example: `slide2expr store rm --store S --slides TCGA-AA-3511-01Z-00-DX1 --dry-run`.
    """
    from rich.console import Console

    from slide2expr import featurize as fz
    from slide2expr.contract import StoreError

    ids = [s.strip() for s in (slides or "").split(",") if s.strip()]
    console = Console(soft_wrap=True)
    with reported(fz.RemovalError, StoreError):
        if dry_run:
            plan = fz.plan_removal(store, slides=ids, tiling=tiling, encoder=encoder)
            console.print(f"would remove {plan.describe()}", highlight=False)
            for p in plan.files:
                console.print(f"  {p.relative_to(plan.store)}", highlight=False, markup=False)
            console.print("nothing removed (--dry-run)")
            return
        done = fz.remove_from_store(store, slides=ids, tiling=tiling, encoder=encoder)
    console.print(f"removed {done.describe()} from {done.store}", highlight=False, markup=False)
