"""``slide2expr demo``: the whole pipeline on a synthetic cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import EXIT_INTERRUPTED, DryRunOpt, app, reported


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the cohort, store, run and report.")
    ] = Path("demo"),
    n_patients: Annotated[
        int, typer.Option("--n-patients", help="Synthetic patients (about a third get 2 slides).")
    ] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic cohort and of the folds.")] = 0,
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder",
            "-e",
            help="Tile encoder (`slide2expr encoders`); efficientnet-lite0 (ImageNet weights) and stain-texture "
            "(weight-free) work offline.",
        ),
    ] = "efficientnet-lite0",
    models: Annotated[
        str, typer.Option("--models", "-m", help="Comma-separated models to compare (`slide2expr models`).")
    ] = "mil,lgbm,ridge",
    n_folds: Annotated[int, typer.Option("--n-folds", help="Patient-grouped cross-validation folds.")] = 5,
    no_explain: Annotated[bool, typer.Option("--no-explain", help="Stop after the comparison.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Synthetic cohort → featurize → targets → compare → explain → report, on the CPU.

    Re-running reuses what already exists (the cohort, featurized slides) and replaces the run. Ends by printing
    the comparison table, the hotspot genes' figures and the report's path.
    """
    from rich.console import Console

    from slide2expr import featurize, regress
    from slide2expr._demo import DemoError, plan_demo, run_demo
    from slide2expr.synth import CohortError

    console = Console()
    args = dict(
        n_patients=n_patients,
        seed=seed,
        encoder=encoder,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        n_folds=n_folds,
    )
    errors = (
        DemoError,
        CohortError,
        regress.OutputExistsError,
        regress.UnknownModelError,
        featurize.FeaturizeOptionsError,
        featurize.UnknownEncoderError,
    )
    if dry_run:
        with reported(*errors):
            plan = plan_demo(out, **args)
        console.print(plan.describe(), highlight=False)
        console.print("nothing written (--dry-run)")
        return
    try:
        with reported(*errors):
            res = run_demo(out, explain=not no_explain, log=console.print, **args)
    except KeyboardInterrupt:
        console.print(
            f"interrupted: rerun `slide2expr demo --out {out}` to go on; the cohort and the featurized slides "
            "already written are reused, the comparison and explain start again",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_result(console, res)


def _print_result(console, res) -> None:
    from rich.table import Table

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
