"""``slide2expr explain`` and ``slide2expr report``: maps, hotspots, gallery, SHAP, localisation, HTML report."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import EXIT_INTERRUPTED, DryRunOpt, OverwriteOpt, app, fail, reported, store_option


def _split(values: list[str] | None) -> list[str] | None:
    """Accept repeated options and comma-separated lists alike."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def explain(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run directory written by `slide2expr compare`, prediction directory written by `slide2expr "
            "predict`, or model directory written by `slide2expr train` (then --out names the prediction "
            "directory to write first).",
        ),
    ],
    store: Annotated[
        Path,
        store_option("The store the run (or predictions) was made from: a directory or s3://bucket/prefix."),
    ],
    slides: Annotated[
        list[str] | None,
        typer.Option(
            "--slides",
            metavar="SLIDE",
            help="Slides to draw maps for (repeat or comma-separate); default: per gene, "
            "the slides of --top-slides patients ranked by --top-by.",
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
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (default RUN/explain); with a model directory, the prediction directory to write "
            "(explain output in OUT/explain).",
        ),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            "-t",
            help="With a model directory: the store's targets to report beside the predictions.",
        ),
    ] = None,
    top_slides: Annotated[int, typer.Option(help="Slides per gene when --slides is not given.")] = 3,
    top_by: Annotated[
        str,
        typer.Option(
            help="Without --slides, rank each gene's patients by: highest or lowest true expression (predicted "
            "when there is none), or largest-error (|predicted − true| of the map model). Only the run's tables "
            "are read to rank them, whatever the cohort's size.",
        ),
    ] = "highest",
    hotspots_on: Annotated[
        str,
        typer.Option(
            help="Slides that get hotspots (GeoJSON) and QuPath detections: all slides with attention, the map "
            "slides only (on a large run, explain then reads only those slides' attention), or auto: all up to "
            "200 slides, else the map slides.",
        ),
    ] = "auto",
    percentile: Annotated[
        float, typer.Option(help="Hotspot threshold: percentile of a slide's tile scores.")
    ] = 90.0,
    min_cells: Annotated[int, typer.Option(help="Smallest hotspot, in grid cells.")] = 2,
    sigma: Annotated[float, typer.Option(help="Gaussian smoothing of the maps, in cells (0: none).")] = 0.0,
    n_bins: Annotated[int, typer.Option(help="Gallery: bins of true expression.")] = 7,
    top_k: Annotated[int, typer.Option(help="Gallery: tiles per bin.")] = 5,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")] = True,
    detections: Annotated[
        bool,
        typer.Option(
            "--detections/--no-detections",
            help="Write every tile as a QuPath detection with its attention and prediction per gene.",
        ),
    ] = True,
    gallery: Annotated[
        bool,
        typer.Option(
            "--gallery/--no-gallery",
            help="Write the gallery: the top-attention tiles per bin of true expression (reads every bag's "
            "attention for each gene).",
        ),
    ] = True,
    overlays: Annotated[
        bool,
        typer.Option(
            "--overlays",
            help="Also write a pyramidal TIFF per map slide, gene and score, aligned to the slide (OpenSlide and "
            "QuPath open it).",
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Explain a run or new slides: heatmaps, hotspots (Parquet + QuPath GeoJSON), QuPath tile detections,
    gallery, SHAP, localisation, report.html. Writes its folder only once complete."""
    with _interrupted_checking():  # the first import loads torch and matplotlib: seconds
        from slide2expr.explain import ExplainError, is_model_dir, plan_explain, run_plan
        from slide2expr.regress import OutputExistsError

    args = dict(
        slides=_split(slides),
        genes=_split(genes),
        models=_split(models),
        top_slides=top_slides,
        top_by=top_by,
        hotspots_on=hotspots_on,
        percentile=percentile,
        min_cells=min_cells,
        sigma=sigma,
        n_bins=n_bins,
        top_k=top_k,
        report=report,
        detections=detections,
        overlays=overlays,
        gallery=gallery,
    )
    if is_model_dir(run):
        _explain_model(
            run, store=store, out=out, targets=targets, overwrite=overwrite, dry_run=dry_run, args=args
        )
        return
    if targets is not None:
        raise fail(
            f"--targets applies when RUN is a model directory; {run} is not one (its predictions carry the "
            "targets they were made with)"
        )
    with _interrupted_checking(), reported(ExplainError, OutputExistsError), _warnings_as_lines():
        plan = plan_explain(run, store=store, out=out, overwrite=overwrite, **args)
    if dry_run:
        _print_plan(plan)
        return
    res = _run_with_status(
        lambda progress: run_plan(plan, progress=progress),
        rerun="run the same command again to explain from the start",
    )
    _print_result(res)


@contextlib.contextmanager
def _interrupted_checking():
    """Ctrl-C while the inputs are read and checked: say that nothing was written (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(
            "interrupted while checking the inputs, before anything was written: run the same command again",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def _warnings_as_lines():
    """Print explain's own warnings (a model that learned nothing) as one ``warning: …`` line each."""
    from slide2expr.explain import LearnedNothingWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LearnedNothingWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, LearnedNothingWarning):
                    typer.echo(f"warning: {w.message}", err=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _explain_model(
    model: Path, *, store: Path, out: Path | None, targets, overwrite: bool, dry_run: bool, args
):
    """``explain MODEL --store NEW --out PRED``: predict the new store into PRED, then explain it."""
    from slide2expr.explain import ExplainError, explain_run, plan_explain_model
    from slide2expr.regress import OutputExistsError, predict

    if out is None:
        raise fail(
            f"{model} is a model directory: give --out PRED, the prediction directory to write (its maps go to "
            "PRED/explain), or predict first with `slide2expr predict MODEL --store STORE --out PRED`"
        )
    with _interrupted_checking(), reported(ExplainError, OutputExistsError):
        plan = plan_explain_model(model, store=store, out=out, targets=targets, overwrite=overwrite, **args)
    if dry_run:
        print(plan.describe())
        return
    from rich.console import Console

    from slide2expr.regress import PredictInterrupted

    console = Console(stderr=True)
    try:
        with console.status(f"predicting {plan.cohort.n_bags} bags …"):
            predict(
                plan.cohort,
                model=model,
                out=out,
                store=store,
                targets=targets,
                overwrite=overwrite,
                attention_genes=args["genes"],
            )
    except PredictInterrupted as exc:
        console.print(f"{exc}. Run the same command again to predict and explain.", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(f"predictions of {plan.cohort.n_bags} bags → {out}", highlight=False)
    res = _run_with_status(
        lambda progress: explain_run(out, store=store, progress=progress, **args),
        rerun=f"the predictions in {out} are written: run `slide2expr explain {out} --store {store}` (with the same "
        "options) to explain them",
    )
    _print_result(res)


def _run_with_status(work, *, rerun: str):
    """Run ``work(progress)`` under a status line; Ctrl-C says what was done and how to run it again."""
    from rich.console import Console

    from slide2expr.explain import ExplainError, ExplainInterrupted
    from slide2expr.regress import OutputExistsError

    console = Console(stderr=True)
    try:
        with reported(ExplainError, OutputExistsError), console.status("explaining …") as status:
            return work(lambda msg: status.update(f"explain: {msg} …"))
    except ExplainInterrupted as exc:
        console.print(
            f"{exc}. explain writes its folder only once complete; {rerun}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _print_result(res) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    n_fig = sum(len(v) for v in res.figures.values())
    n_hot = 0 if res.hotspots is None else len(res.hotspots)
    console.print(
        f"{n_fig} figures, {n_hot} hotspots in {len(res.geojson)} GeoJSON files, tile detections of "
        f"{len(res.detections)} slides"
        + (f", {len(res.overlays)} TIFF overlays" if res.overlays else "")
        + f" under {res.out}",
        highlight=False,
    )
    if res.stages:
        worst = max(v["peak_rss_gb"] for v in res.stages.values())
        console.print(
            ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in res.stages.items())
            + f"; peak RSS {worst:.2f} GB",
            highlight=False,
            soft_wrap=True,
        )
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
    what = "predictions" if plan.kind == "predictions" else "run"
    print(f"would explain the {what} {plan.run.path} (store {plan.store}): genes {', '.join(plan.genes)}")
    print(f"  models {', '.join(plan.models)}; SHAP for {', '.join(plan.trees) or 'none'}")
    if plan.map_model is None:
        print("  no model with attention: no maps, hotspots or gallery")
    else:
        print(
            f"  {plan.map_model} attention: hotspots on {len(plan.hotspot_slides)} slides, heatmaps of "
            f"{len(maps)} ({', '.join(maps)}), chosen by {plan.map_slides_by}"
        )
    for note in plan.notes:
        print(f"  note: {note}")
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
