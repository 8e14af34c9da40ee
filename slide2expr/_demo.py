"""The end-to-end demo: synthetic cohort → featurize → targets → compare → truth → explain → report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

#: Defaults chosen so the whole demo runs in well under 15 minutes on 2 CPU cores (see README for timings).
DEMO_PATIENTS = 40
DEMO_SLIDE_PX = (9_000, 13_000)
#: efficientnet-lite0 (ImageNet weights, offline) on the 112 px tiles at their own size: 570–680 tiles/s in bf16
#: (3.5× the weight-free stain-texture encoder), 224 eager and 287 compiled in fp32 on 2 AVX2 cores (README), and
#: better features than the weight-free encoder (MIL's hotspot-gene r 0.73 → 0.80 on a 40-patient cohort).
DEMO_ENCODER = "efficientnet-lite0"
DEMO_MPP = 1.0
DEMO_TILE_PX = 112
#: Encoder input size per encoder: efficientnet-lite0 sees the tile at its own size (its data config says 224);
#: others keep their data-config size.
DEMO_INPUT_PX = {"efficientnet-lite0": DEMO_TILE_PX}
DEMO_MODELS = ("mil", "lgbm", "ridge")
#: Per-model parameters the demo gives compare: none. Every model runs at the library's pre-registered settings
#: (``regress._models.PRE_REGISTERED``: chosen on the demo's cohort, seed 0, and measured out of sample on other
#: seeds by ``benchmarks/validity.py``), so the demo shows what ``slide2expr compare`` does without ``--params``.
DEMO_MODEL_PARAMS: dict[str, dict] = {}
TARGETS_NAME = "expression"
#: Fewest patients the demo takes: two folds of two patients each.
MIN_DEMO_PATIENTS = 4


@dataclass
class DemoResult:
    """Where the demo wrote things and how long each stage took (seconds)."""

    out: Path
    cohort: Path
    store: Path
    run: Path
    report: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    hotspot_genes: pd.DataFrame | None = None


class DemoError(ValueError):
    """Demo arguments that no run can use; the message names the argument."""


@dataclass(frozen=True)
class DemoPlan:
    """What :func:`run_demo` would do, checked (see :func:`plan_demo`)."""

    out: Path
    cohort: Path
    store: Path
    run: Path
    reuse_cohort: bool
    featurize: Any
    models: tuple[str, ...]
    n_folds: int

    def describe(self) -> str:
        o = self.featurize
        return "\n".join(
            [
                f"cohort: {self.cohort}" + (" (exists; reused)" if self.reuse_cohort else " (to write)"),
                f"store:  {self.store} ({o.encoder} at {o.tiling_params.name})",
                f"run:    {self.run} ({', '.join(self.models)}; {self.n_folds} patient-grouped folds; replaced)",
            ]
        )


def plan_demo(
    out: str | os.PathLike,
    *,
    n_patients: int = DEMO_PATIENTS,
    seed: int = 0,
    slide_px: tuple[int, int] = DEMO_SLIDE_PX,
    encoder: str = DEMO_ENCODER,
    mpp: float = DEMO_MPP,
    tile_px: int = DEMO_TILE_PX,
    input_px: int | None = None,
    models: tuple[str, ...] = DEMO_MODELS,
    n_folds: int = 5,
    workers: int | None = None,
) -> DemoPlan:
    """Check :func:`run_demo`'s arguments as the run does and return its plan; writes nothing.

    Raises :class:`DemoError`, the synthetic cohort's, featurize's or regress's own error, naming the argument.
    """
    from slide2expr import featurize, regress
    from slide2expr.synth import check_cohort

    out = Path(out)
    if n_patients < MIN_DEMO_PATIENTS:
        raise DemoError(f"n_patients={n_patients}: the demo needs at least {MIN_DEMO_PATIENTS} patients")
    if not 2 <= n_folds <= n_patients:
        raise DemoError(f"n_folds={n_folds}: give 2 to n_patients ({n_patients}) patient-grouped folds")
    if not models:
        raise DemoError("models is empty: name at least one model (`slide2expr models` lists them)")
    for m in models:
        regress.model_info(m)
    featurize.get_spec(encoder)
    input_px = DEMO_INPUT_PX.get(encoder) if input_px is None else input_px
    options = featurize.FeaturizeOptions(
        encoder=encoder, mpp=mpp, tile_px=tile_px, input_px=input_px, workers=workers
    )
    cohort = out / "cohort"
    reuse = (cohort / "truth.json").is_file()
    if not reuse:
        check_cohort(cohort, n_patients=n_patients, size=slide_px)
    return DemoPlan(out, cohort, out / "store", out / "run", reuse, options, tuple(models), n_folds)


def run_demo(
    out: str | os.PathLike,
    *,
    n_patients: int = DEMO_PATIENTS,
    seed: int = 0,
    slide_px: tuple[int, int] = DEMO_SLIDE_PX,
    encoder: str = DEMO_ENCODER,
    mpp: float = DEMO_MPP,
    tile_px: int = DEMO_TILE_PX,
    input_px: int | None = None,
    models: tuple[str, ...] = DEMO_MODELS,
    n_folds: int = 5,
    workers: int | None = None,
    explain: bool = True,
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Run the whole pipeline on a synthetic cohort under ``out``; idempotent (stages resume).

    Writes ``out/cohort`` (slides, expression, truth), ``out/store`` (the Parquet store), ``out/run`` (the
    comparison run, with ``truth_tiles.parquet``, ``localisation.parquet`` and ``explain/report.html``).
    """
    from slide2expr import explain as ex
    from slide2expr import regress, sql
    from slide2expr.contract import RunLayout
    from slide2expr.featurize import featurize_cohort
    from slide2expr.synth import make_cohort, read_truth, write_truth_tiles

    plan = plan_demo(
        out,
        n_patients=n_patients,
        seed=seed,
        slide_px=slide_px,
        encoder=encoder,
        mpp=mpp,
        tile_px=tile_px,
        input_px=input_px,
        models=models,
        n_folds=n_folds,
        workers=workers,
    )
    cohort_dir, store, run = plan.cohort, plan.store, plan.run
    res = DemoResult(out=plan.out, cohort=cohort_dir, store=store, run=run, report=None)
    t = time.perf_counter()

    log(f"[1/6] synthetic cohort: {n_patients} patients → {cohort_dir}")
    if plan.reuse_cohort:
        log("      (exists; reusing it)")
    else:
        make_cohort(cohort_dir, n_patients=n_patients, seed=seed, size=slide_px)
    res.seconds["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"[2/6] featurize with {encoder} at {mpp} µm/px, {tile_px} px tiles → {store}")
    summary = featurize_cohort(
        cohort_dir / "slides.csv", store=store, options=plan.featurize, progress=progress
    )
    tiling = summary.tiling
    res.seconds["featurize"] = time.perf_counter() - t
    n_ok = sum(r.status == "ok" for r in summary.results)
    log(
        f"      {n_ok}/{len(summary.results)} slides ok, {summary.tiles:,} tiles in {summary.seconds:.0f} s"
        f" ({summary.tiles / max(summary.seconds, 1e-9):.0f} tiles/s"
        + (f"; encoder compiled in {summary.seconds_compile:.0f} s)" if summary.compiled else ")")
    )

    t = time.perf_counter()
    log(f"[3/6] import targets ({TARGETS_NAME}, log1p) into the store")
    regress.import_targets(
        cohort_dir / "expression.csv", store=store, name=TARGETS_NAME, transform="log1p", overwrite=True
    )
    cohort = sql.load_cohort(store, encoder=encoder, tiling=tiling, targets=TARGETS_NAME)
    res.seconds["targets+bags"] = time.perf_counter() - t
    log(f"      {cohort.n_bags} patients, {len(cohort.features):,} tiles × {cohort.dim} dims")

    t = time.perf_counter()
    log(f"[4/6] compare {', '.join(models)} on {n_folds} patient-grouped folds → {run}")
    result = regress.compare(
        cohort,
        models=models,
        n_folds=n_folds,
        seed=seed,
        out=run,
        progress=progress,
        store=store,
        targets=TARGETS_NAME,
        model_params={k: v for k, v in DEMO_MODEL_PARAMS.items() if k in models},
        overwrite=True,  # the demo owns out/run: a re-run replaces the previous run, its explain/ output included
    )
    res.seconds["compare"] = time.perf_counter() - t

    t = time.perf_counter()
    log("[5/6] ground truth per tile (planted drivers) → run/truth_tiles.parquet")
    write_truth_tiles(cohort_dir, store=store, tiling=tiling, out=RunLayout(run).truth_tiles)
    res.seconds["truth"] = time.perf_counter() - t
    truth = read_truth(cohort_dir)

    if explain:
        t = time.perf_counter()
        log("[6/6] explain: heatmaps, hotspots (GeoJSON), gallery, SHAP, localisation, report")
        genes = _demo_genes(truth)
        exr = ex.explain_run(
            run, store=store, genes=genes, progress=(lambda m: log(f"      {m}")) if progress else None
        )
        res.report = exr.report
        res.seconds["explain"] = time.perf_counter() - t

    res.summary = result.summary
    res.hotspot_genes = hotspot_gene_table(run, truth=truth)
    return res


def _demo_genes(truth: dict) -> list[str]:
    """The genes the demo explains: every hotspot gene, two compartment genes and one negative control."""
    kinds = {g: v["kind"] for g, v in truth["genes"].items()}
    hot = [g for g, k in kinds.items() if k == "hotspot"]
    comp = [g for g, k in kinds.items() if k == "compartment"][:2]
    noise = [g for g, k in kinds.items() if k == "noise"][:1]
    return hot + comp + noise


def hotspot_gene_table(run: str | os.PathLike, *, truth: dict) -> pd.DataFrame:
    """Per gene kind: pooled Pearson r per model, well-predicted calls, and MIL localisation AUROC."""
    import pyarrow.parquet as pq

    run = Path(run)
    m = pq.read_table(run / "metrics.parquet").to_pandas()
    m = m[m["fold"] == -1]
    kinds = {g: v["kind"] for g, v in truth["genes"].items()}
    m = m.assign(kind=m["gene"].map(kinds))
    wide = m.pivot_table(index=["kind", "gene"], columns="model", values="pearson_r")
    wide.columns = [f"r_{c}" for c in wide.columns]
    well = m[m["well_predicted"]].groupby("gene")["model"].apply(lambda s: ",".join(sorted(s)))
    wide["well_predicted_by"] = wide.index.get_level_values("gene").map(well).fillna("")
    loc_path = run / "localisation.parquet"
    if loc_path.exists():
        loc = pq.read_table(loc_path).to_pandas()
        for (model, score), grp in loc.groupby(["model", "score"]):
            wide[f"auroc_{model}_{score}"] = wide.index.get_level_values("gene").map(
                grp.set_index("gene")["auroc"]
            )
    return wide.reset_index()
