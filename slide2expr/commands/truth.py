"""``slide2expr truth``: tile-level ground truth of a synthetic cohort into a run directory, for localisation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import DryRunOpt, app, reported, store_option


@app.command()
def truth(
    cohort: Annotated[Path, typer.Argument(help="A synthetic cohort folder written by `slide2expr synth`.")],
    store: Annotated[
        Path,
        store_option("The store its slides were featurized into: a directory or s3://bucket/prefix."),
    ],
    run: Annotated[
        Path,
        typer.Option(
            "--run", help="The run (compare) or prediction directory to write truth_tiles.parquet into."
        ),
    ],
    tiling: Annotated[str | None, typer.Option("--tiling", help="Tiling name (default: the run's).")] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Write RUN/truth_tiles.parquet: for every tile, the share covered by each gene's planted drivers.

    `slide2expr explain RUN` then measures localisation (AUROC of attention, tile predictions and SHAP against the
    planted driver tiles) for any synthetic cohort, not only the demo's.
    """
    from slide2expr import sql
    from slide2expr.contract import RunLayout, StoreError, Tiling, TilingError, check_store
    from slide2expr.synth import CohortError, read_truth, write_truth_tiles

    with reported(CohortError, StoreError, TilingError, FileNotFoundError):
        read_truth(cohort)
        check_store(store)
        name = Tiling.parse(tiling).name if tiling else sql.open_run(run).tiling
        out = RunLayout(run).truth_tiles
        if dry_run:
            typer.echo(
                f"would write {out} from {cohort} and the {name} tiles of {store}; nothing written (--dry-run)"
            )
            return
        path = write_truth_tiles(cohort, store=store, tiling=name, out=out)
    typer.echo(f"tile-level ground truth → {path}")
