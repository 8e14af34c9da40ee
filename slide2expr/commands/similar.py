"""``slide2expr similar``: the tiles most similar to a tile, by exact search or the store's similarity index."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import DryRunOpt, app, fail, reported
from slide2expr.contract import store_path


class Method(str, Enum):
    auto = "auto"
    exact = "exact"
    index = "index"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def similar(
    store: Annotated[
        Path,
        typer.Argument(parser=store_path, help="The store: a directory or s3://bucket/prefix."),
    ],
    tile: Annotated[
        str | None,
        typer.Option(
            "--tile", metavar="SLIDE:TILE_ID", help="The query tile, e.g. TCGA-AA-3511-01Z-00-DX1:1042."
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="How many neighbours.")] = 20,
    encoder: Annotated[
        str | None, typer.Option("--encoder", help="Encoder (default: the store's only one).")
    ] = None,
    tiling: Annotated[
        str | None, typer.Option("--tiling", help="Tiling (default: the encoder's only one).")
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="exact: scan every embedding; index: the similarity index (built when missing or stale); auto: "
            "exact on small stores, the index on large ones or whenever it exists.",
        ),
    ] = Method.auto,
    candidates: Annotated[
        int, typer.Option("--candidates", help="Tiles the index proposes and the store re-scores exactly.")
    ] = 200,
    n_probe: Annotated[
        int | None,
        typer.Option(
            "--n-probe",
            help="Inverted lists the index visits (more: higher recall, slower; default: a share of its lists).",
        ),
    ] = None,
    build: Annotated[
        bool, typer.Option("--build", help="Build (or rebuild) the similarity index and query nothing.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the neighbours to this .parquet or .csv file.")
    ] = None,
    format: Annotated[Format, typer.Option("--format", help="How to print the neighbours.")] = Format.table,
    dry_run: DryRunOpt = False,
) -> None:
    """The k tiles most similar (cosine) to one tile: slide_id, tile_id, x, y and the exact score, best first.

    Large stores are searched through an approximate index derived from the store (STORE/.index/, rebuilt when the
    embeddings change); its candidates are re-scored exactly against the stored embeddings.
    """
    from slide2expr import sql
    from slide2expr.contract import StoreError

    with reported(StoreError, ValueError):
        plan = sql.plan_similar(
            store, encoder=encoder, tiling=tiling, method="index" if build else method.value
        )
        if not build:
            slide_id, tile_id = _parse_tile(tile)
        if dry_run:
            what = f"build the similarity index in {plan.index_path}" if build else plan.describe()
            typer.echo(
                f"{plan.tiling}/{plan.encoder}: {what}; nothing written (--dry-run)"
                if build
                else f"{what}; nothing written (--dry-run)"
            )
            return
        if build:
            report = _with_progress(
                lambda cb: sql.build_similarity_index(
                    store, encoder=plan.encoder, tiling=plan.tiling, progress=cb
                )
            )
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
            typer.echo(
                f"similarity index of {report.n_tiles:,} tiles ({report.bytes / 1e9:.2f} GB) → {report.path} "
                f"({stages}; peak RSS {_peak_rss_gb():.2f} GB)"
            )
            return
        t0 = time.perf_counter()
        hits = _with_progress(
            lambda cb: sql.similar_tiles(
                store, slide_id=slide_id, tile_id=tile_id, k=k, encoder=plan.encoder, tiling=plan.tiling,
                method=method.value, candidates=candidates, n_probe=n_probe, progress=cb,
            )
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    _show(hits, out=out, format=format)
    typer.echo(
        f"{hits.num_rows} neighbours of {slide_id}:{tile_id} by {plan.method} search in {seconds:.2f} s "
        f"(peak RSS {_peak_rss_gb():.2f} GB)",
        err=True,
    )


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports kB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak / 1e6


def _parse_tile(tile: str | None) -> tuple[str, int]:
    if not tile:
        raise fail("give the query tile as --tile SLIDE:TILE_ID (or --build to build the index)")
    slide_id, sep, tile_id = tile.rpartition(":")
    if not sep or not slide_id or not tile_id.strip().isdigit():
        raise fail(f"--tile {tile!r}: give SLIDE:TILE_ID, e.g. TCGA-AA-3511-01Z-00-DX1:1042")
    return slide_id, int(tile_id)


def _with_progress(work):
    """Run ``work(callback)`` under a progress bar (bytes of embeddings, bytes/s, ETA) shown once a pass starts."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def callback(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        return work(callback)


def _show(hits, *, out: Path | None, format: Format) -> None:
    if out is not None:
        if out.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(hits, out)
        elif out.suffix == ".csv":
            hits.to_pandas().to_csv(out, index=False)
        else:
            raise fail(f"--out {out}: give a .parquet or .csv file name")
        typer.echo(f"{hits.num_rows} neighbours → {out}", err=True)
        return
    df = hits.to_pandas()
    if format is Format.csv:
        typer.echo(df.to_csv(index=False), nl=False)
    elif format is Format.json:
        typer.echo(df.to_json(orient="records", indent=1))
    else:
        typer.echo(df.to_string(index=False))
