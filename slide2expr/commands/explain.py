"""``slide2expr explain`` and ``slide2expr report``: maps, hotspots, gallery, SHAP, localisation, HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import DryRunOpt, app, reported


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
            metavar="SLIDE",
            help="Slides to draw maps for (repeat or comma-separate); default: per gene, "
            "the slides of the highest-expression patients.",
        ),
    ] = None,
    genes: Annotated[
        list[str] | None, typer.Option("--genes", metavar="GENE", help="Genes (default: all of the run's).")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--models", metavar="MODEL", help="Models (default: all of the run's)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/explain).")
    ] = None,
    top_slides: Annotated[int, typer.Option(help="Slides per gene when --slides is not given.")] = 3,
    percentile: Annotated[
        float, typer.Option(help="Hotspot threshold: percentile of a slide's tile scores.")
    ] = 90.0,
    min_cells: Annotated[int, typer.Option(help="Smallest hotspot, in grid cells.")] = 2,
    sigma: Annotated[float, typer.Option(help="Gaussian smoothing of the maps, in cells (0: none).")] = 0.0,
    n_bins: Annotated[int, typer.Option(help="Gallery: bins of true expression.")] = 7,
    top_k: Annotated[int, typer.Option(help="Gallery: tiles per bin.")] = 5,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")] = True,
    dry_run: DryRunOpt = False,
) -> None:
    """Explain a run: heatmaps, hotspots (Parquet + QuPath GeoJSON), gallery, SHAP, localisation, report.html."""
    from rich.console import Console

    from slide2expr.explain import ExplainError, plan_explain, run_plan

    console = Console(stderr=True)
    with reported(ExplainError):
        plan = plan_explain(
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
            n_bins=n_bins,
            top_k=top_k,
            report=report,
        )
    if dry_run:
        _print_plan(plan)
        return
    with reported(ExplainError), console.status("explaining …") as status:
        res = run_plan(plan, progress=lambda msg: status.update(f"explain: {msg} …"))
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


def _print_plan(plan) -> None:
    """What ``explain --dry-run`` prints: what would be explained, and every file that may be written."""
    maps = sorted({s for v in plan.map_slides.values() for s in v})
    print(f"would explain {plan.run.path} (store {plan.store}): genes {', '.join(plan.genes)}")
    print(f"  models {', '.join(plan.models)}; SHAP for {', '.join(plan.trees) or 'none'}")
    if plan.map_model is None:
        print("  no model with attention: no maps, hotspots or gallery")
    else:
        print(
            f"  {plan.map_model} attention: hotspots on {len(plan.hotspot_slides)} slides, heatmaps of "
            f"{len(maps)} ({', '.join(maps)})"
        )
    paths = plan.outputs()
    print(f"would write up to {len(paths)} files (nothing written, --dry-run):")
    for p in paths:
        print(f"  {p.relative_to(plan.out) if p.is_relative_to(plan.out) else p}")


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
    width: Annotated[int, typer.Option(help="Screenshot width in px.")] = 1280,
    height: Annotated[int, typer.Option(help="Screenshot height in px.")] = 2400,
    dry_run: DryRunOpt = False,
) -> None:
    """(Re)write the self-contained HTML report of a run; optionally screenshot it."""
    from slide2expr.explain import ExplainError, check_screenshot_size, report_path, write_report
    from slide2expr.explain import screenshot as take_screenshot

    with reported(ExplainError):
        path = report_path(run, explain_dir=explain_dir, out=out)
        if screenshot is not None:
            check_screenshot_size(width, height)
        if dry_run:
            print(f"would write {path}" + (f" and {screenshot}" if screenshot is not None else ""))
            return
        path = write_report(run, explain_dir=explain_dir, out=out)
        if screenshot is not None:
            take_screenshot(path, out=screenshot, width=width, height=height)
    print(path)
