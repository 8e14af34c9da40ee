"""``slide2expr demo``: the whole pipeline on a synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from slide2expr._app import app, fail


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the cohort, store, run and report."),
    patients: int = typer.Option(
        40, "--patients", min=4, help="Synthetic patients (about a third get 2 slides)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic cohort and of the folds."),
    encoder: str = typer.Option(
        "efficientnet-lite0",
        "--encoder",
        help="Tile encoder (`slide2expr encoders`); efficientnet-lite0 (ImageNet weights) and stain-texture "
        "(weight-free) work offline.",
    ),
    models: str = typer.Option("mil,lgbm,ridge", "--models", help="Comma-separated models to compare."),
    folds: int = typer.Option(5, "--folds", min=2, help="Patient-grouped cross-validation folds."),
    no_explain: bool = typer.Option(False, "--no-explain", help="Stop after the comparison."),
) -> None:
    """Synthetic cohort → featurize → targets → compare → explain → report, on the CPU.

    Re-running reuses what already exists (the cohort, featurized slides). Ends by printing the comparison table,
    the hotspot genes' figures and the report's path.
    """
    from rich.console import Console
    from rich.table import Table

    from slide2expr._demo import run_demo
    from slide2expr.regress import OutputExistsError
    from slide2expr.synth import CohortError

    console = Console()
    try:
        res = run_demo(
            out,
            n_patients=patients,
            seed=seed,
            encoder=encoder,
            models=tuple(m.strip() for m in models.split(",") if m.strip()),
            n_folds=folds,
            explain=not no_explain,
            log=console.print,
        )
    except (CohortError, OutputExistsError) as exc:
        raise fail(str(exc)) from exc

    if res.hotspot_genes is not None:
        df = res.hotspot_genes
        shown = df[df["kind"].isin(["hotspot", "noise"])]
        cols = [c for c in ("kind", "gene", "r_mil", "r_lgbm", "r_ridge", "well_predicted_by",
                            "auroc_mil_attention", "auroc_mil_tile_pred", "auroc_lgbm_shap") if c in df.columns]  # fmt: skip
        t = Table(title="Hotspot and negative-control genes: pooled held-out Pearson r, well-predicted calls, "
                  "localisation AUROC against the planted driver tiles")  # fmt: skip
        for c in cols:
            t.add_column(c.replace("_", " "), justify="left" if df[c].dtype == object else "right")
        for row in shown[cols].itertuples(index=False):
            t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
        console.print(t)
        rs = [c for c in ("r_mil", "r_lgbm", "r_ridge") if c in df.columns]
        console.print("median r by gene kind:\n" + df.groupby("kind")[rs].median().round(3).to_string())
    times = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    console.print(f"stage times: {times}; total {sum(res.seconds.values()):.0f} s")
    if res.report:
        console.print(f"report: [bold]{res.report}[/]")
