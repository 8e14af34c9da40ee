"""``slide2expr explain`` and ``slide2expr report``: maps, hotspots, gallery, SHAP, localisation, HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import app, fail


def _split(values: list[str] | None) -> list[str] | None:
    """Accept repeated options and comma-separated lists alike."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run directory written by `slide2expr compare`.")],
    store: Annotated[Path, typer.Option("--store", "-s", help="The store the run was trained on.")],
    slides: Annotated[
        list[str] | None,
        typer.Option(
            "--slides",
            help="Slides to draw maps for (repeat or comma-separate); default: per gene, "
            "the slides of the highest-expression patients.",
        ),
    ] = None,
    genes: Annotated[
        list[str] | None, typer.Option("--genes", help="Genes (default: all of the run's).")
    ] = None,
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Models (default: all of the run's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/explain).")
    ] = None,
    top_slides: Annotated[int, typer.Option(help="Slides per gene when --slides is not given.", min=1)] = 3,
    percentile: Annotated[
        float, typer.Option(help="Hotspot threshold: percentile of a slide's tile scores.", min=0, max=100)
    ] = 90.0,
    min_cells: Annotated[int, typer.Option(help="Smallest hotspot, in grid cells.", min=1)] = 2,
    sigma: Annotated[
        float, typer.Option(help="Gaussian smoothing of the maps, in cells (0: none).", min=0)
    ] = 0.0,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip report.html.")] = False,
) -> None:
    """Explain a run: heatmaps, hotspots (Parquet + QuPath GeoJSON), gallery, SHAP, localisation, report.html."""
    from rich.console import Console

    from slide2expr.explain import ExplainError, explain_run

    console = Console(stderr=True)
    if not (run / "config.json").exists():
        raise fail(f"{run} is not a run directory (no config.json): run `slide2expr compare` first")
    if not store.is_dir():
        raise fail(f"--store {store} is not a directory: pass the store the run was trained on")
    try:
        with console.status("explaining …") as status:
            res = explain_run(
                run,
                store=store,
                out=out,
                slides=_split(slides),
                genes=_split(genes),
                models=_split(models),
                top_slides=top_slides,
                percentile=percentile,
                min_cells=min_cells,
                sigma=sigma,
                report=not no_report,
                progress=lambda msg: status.update(f"explain: {msg} …"),
            )
    except ExplainError as exc:
        raise fail(str(exc)) from exc
    n_fig = sum(len(v) for v in res.figures.values())
    n_hot = 0 if res.hotspots is None else len(res.hotspots)
    console.print(f"{n_fig} figures, {n_hot} hotspots in {len(res.geojson)} GeoJSON files under {res.out}")
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if res.localisation is not None and not res.localisation.empty:
        loc = res.localisation.dropna(subset=["auroc"])
        for r in loc.itertuples(index=False):
            console.print(f"  localisation {r.model:>8} {r.score:<9} {r.gene:<10} AUROC {r.auroc:.3f}")
    if res.report is not None:
        print(res.report)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory written by `slide2expr compare`.")],
    explain_dir: Annotated[
        Path | None,
        typer.Option("--explain-dir", help="Where `slide2expr explain` wrote (default RUN/explain)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file (default EXPLAIN_DIR/report.html).")
    ] = None,
    screenshot: Annotated[
        Path | None,
        typer.Option("--screenshot", help="Also save a PNG screenshot of the report (needs Chromium)."),
    ] = None,
    width: Annotated[int, typer.Option(help="Screenshot width in px.", min=320)] = 1280,
    height: Annotated[int, typer.Option(help="Screenshot height in px.", min=240)] = 2400,
) -> None:
    """(Re)write the self-contained HTML report of a run; optionally screenshot it."""
    from slide2expr.explain import ExplainError, write_report
    from slide2expr.explain import screenshot as take_screenshot

    if not (run / "config.json").exists():
        raise fail(f"{run} is not a run directory (no config.json): run `slide2expr compare` first")
    try:
        path = write_report(run, explain_dir=explain_dir, out=out)
        if screenshot is not None:
            take_screenshot(path, out=screenshot, width=width, height=height)
    except ExplainError as exc:
        raise fail(str(exc)) from exc
    print(path)
