"""Validity benchmark: attention-MIL against the tuned baselines, out of sample, on synthetic cohorts that no
setting was ever chosen on; writes JSON and a generated Markdown page.

Every cohort goes through the whole pipeline at the library's pre-registered settings (what ``compare`` uses
without ``--params``): ``slide2expr.synth`` writes the slides (the demo's cohort size and slide size), featurize
embeds them as the demo does (efficientnet-lite0, 1 µm/px, 112 px tiles), the expression table is imported
(log1p), and ``mil``, ``lgbm`` and ``ridge`` run on the same 5 patient-grouped folds with each model's null (the
same model on permuted training targets). Beside them:

- the seed paper's model (the ``graziani2022`` preset: one network per gene) on :data:`SEED_MODEL_GENES` of the
  first ``--seed-model-cohorts`` cohorts, for the CPU's sake (one of its networks, SGD at lr 1e-4 on the
  1,280-d embeddings of every tile, takes about as long as one fold of the whole MIL model);
- the *oracle*: a perfect detector of the true drivers, which reads the share of each bag's tiles covered by the
  gene's planted driver compartments (``synth.tile_truth``) and weighs them with the generator's coefficients —
  the ceiling that any model of these tiles can reach;
- localisation: per slide, the AUROC of MIL's held-out attention and tile predictions against the tiles that are
  at least half driver tissue, averaged over slides that have both.

Per gene kind (``hotspot``, ``compartment``, ``noise``) it reports each model's pooled Pearson r (median over the
kind's genes, then median over cohorts with a bootstrap CI over cohorts), the oracle beside it, MIL minus the best
baseline per gene (mean over the kind's genes and cohorts, bootstrap CI over cohorts), and the share of
cohort × control-gene cells called well predicted (false calls).

Seeds: :data:`TUNING_SEEDS` are the cohorts on which the pre-registered settings were chosen (seed 0 is the
demo's); :data:`VALIDATION_SEEDS` are the cohorts this benchmark reports, never used to choose anything. The two
lists never share a seed.

Resumable per cohort: cohorts, stores and per-cohort results are cached under ``--work`` (default
``benchmarks/_work/validity``, ignored by git), which is deleted at the end unless ``--keep``. Run::

    python benchmarks/validity.py                    # the validation cohorts → benchmarks/results/validity.{json,md}
    python benchmarks/validity.py --seeds tuning --keep --out /tmp/tuning   # the tuning cohorts, elsewhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Cohorts the pre-registered settings were chosen on: the demo's cohort.
TUNING_SEEDS = (0,)
#: Cohorts this benchmark reports; no setting was ever chosen on them.
VALIDATION_SEEDS = (1, 2, 3, 4, 5)
assert not set(TUNING_SEEDS) & set(VALIDATION_SEEDS), "tuning and validation seeds must never cross"

MODELS = ("mil", "lgbm", "ridge")
BASELINES = ("lgbm", "ridge")
SEED_MODEL = "graziani2022"
N_FOLDS = 5
#: The folds' seed (``compare``'s ``seed``), the same on every cohort.
CV_SEED = 0
TARGETS = "expression"
KINDS = ("hotspot", "compartment", "noise")
#: A tile is a driver tile when at least this share of it is driver tissue (localisation AUROC).
DRIVER_TILE = 0.5
N_BOOT = 2000
#: The timed stages of a cohort (``seconds`` of its result).
STAGES = ("build", "fit", "null", "seed_model")
#: The seed paper's model runs on every hotspot gene and the first compartment and control gene.
SEED_MODEL_GENES = {"hotspot": None, "compartment": 1, "noise": 1}
WORK = ROOT / "benchmarks" / "_work" / "validity"
RESULTS = ROOT / "benchmarks" / "results"


# ---- one cohort ------------------------------------------------------------------------------------------------


def build_cohort(work: Path, seed: int, *, n_patients: int) -> tuple[Path, Path]:
    """Synthetic cohort → store (featurized as the demo does) → targets; each step skipped when done."""
    from slide2expr import featurize, regress
    from slide2expr._demo import DEMO_ENCODER, DEMO_INPUT_PX, DEMO_MPP, DEMO_SLIDE_PX, DEMO_TILE_PX
    from slide2expr.synth import make_cohort

    cohort, store = work / f"seed{seed}" / "cohort", work / f"seed{seed}" / "store"
    if not (cohort / "truth.json").is_file():
        shutil.rmtree(cohort, ignore_errors=True)  # an interrupted cohort is written again
        make_cohort(cohort, n_patients=n_patients, seed=seed, size=DEMO_SLIDE_PX)
    options = featurize.FeaturizeOptions(
        encoder=DEMO_ENCODER, mpp=DEMO_MPP, tile_px=DEMO_TILE_PX, input_px=DEMO_INPUT_PX.get(DEMO_ENCODER)
    )
    featurize.featurize_cohort(cohort / "slides.csv", store=store, options=options, progress=False)
    regress.import_targets(
        cohort / "expression.csv", store=store, name=TARGETS, transform="log1p", overwrite=True
    )
    return cohort, store


def gene_kinds(truth: dict) -> dict[str, str]:
    return {g: v["kind"] for g, v in truth["genes"].items()}


def seed_model_genes(kinds: dict[str, str]) -> list[str]:
    out = []
    for kind, n in SEED_MODEL_GENES.items():
        genes = [g for g, k in kinds.items() if k == kind]
        out += genes if n is None else genes[:n]
    return out


def tile_truth_table(cohort_dir: Path, store: Path, c) -> pd.DataFrame:
    """Per tile of the cohort (its row order): every compartment's share (``frac_*``) and every gene's driver share
    (``driver_frac_*``), from the synthetic ground truth."""
    from slide2expr import sql
    from slide2expr.synth import tile_truth

    slide_ids, tile_ids = np.asarray(c.slide_ids).astype(str), np.asarray(c.tile_ids)
    parts = []
    for sid in pd.unique(slide_ids):
        rows = np.flatnonzero(slide_ids == sid)
        boxes = sql.read_tiles(store, c.tiling, sid).set_index("tile_id").loc[tile_ids[rows]]
        t = tile_truth(cohort_dir, slide_id=sid, x=boxes["x"], y=boxes["y"], w=boxes["w"], h=boxes["h"])
        t.index = rows
        parts.append(t)
    return pd.concat(parts).sort_index()


def oracle_r(c, truth: dict, tiles: pd.DataFrame) -> dict[str, float]:
    """Per gene, the Pearson r of the perfect driver detector: Σ coefficient × the bag's share of driver tiles."""
    out = {}
    for j, gene in enumerate(c.genes):
        coefs = truth["genes"][gene]["coefficients"]
        if not coefs:
            out[gene] = float("nan")
            continue
        score = sum(tiles[f"frac_{comp}"].to_numpy() * b for comp, b in coefs.items())
        per_bag = np.array([score[c.bag_slice(i)].mean() for i in range(c.n_bags)])
        out[gene] = float(np.corrcoef(per_bag, np.asarray(c.y_true)[:, j])[0, 1])
    return out


def localisation(attention: pd.DataFrame, tiles: pd.DataFrame, c, kinds: dict[str, str]) -> dict:
    """Per gene with drivers: the mean over slides of the AUROC of held-out attention and tile predictions against
    the driver tiles (slides with both classes only)."""
    from sklearn.metrics import roc_auc_score

    key = pd.DataFrame({"slide_id": np.asarray(c.slide_ids).astype(str), "tile_id": np.asarray(c.tile_ids)})
    out = {}
    for gene, g in attention.groupby("gene"):
        if kinds.get(gene) == "noise":
            continue
        truth = key.assign(driver=tiles[f"driver_frac_{gene}"].to_numpy() >= DRIVER_TILE)
        g = g.merge(truth, on=["slide_id", "tile_id"])
        res = {}
        for score in ("attention", "tile_pred"):
            per = [
                roc_auc_score(s["driver"], s[score])
                for _, s in g.groupby("slide_id")
                if 0 < s["driver"].sum() < len(s) and s[score].notna().all()
            ]
            res[score] = float(np.mean(per)) if per else float("nan")
        out[gene] = res
    return out


def run_cohort(work: Path, seed: int, *, n_patients: int, seed_model: bool = True) -> dict:
    """Everything the benchmark measures on one cohort (cached in ``work/seed<seed>/result.json``)."""
    cached = work / f"seed{seed}" / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from slide2expr import regress, sql
    from slide2expr._demo import DEMO_ENCODER
    from slide2expr.synth import read_truth

    t0 = time.perf_counter()
    cohort_dir, store = build_cohort(work, seed, n_patients=n_patients)
    t_build = time.perf_counter() - t0
    truth = read_truth(cohort_dir)
    kinds = gene_kinds(truth)
    c = sql.load_cohort(store, encoder=DEMO_ENCODER, targets=TARGETS)
    t1 = time.perf_counter()
    plan = regress.plan_compare(c, models=MODELS, n_folds=N_FOLDS, seed=CV_SEED, device="cpu")
    choices = []

    def record(name, fold, est):
        if hasattr(est, "choice_"):
            choices.append({"fold": fold, "readouts": [r for _, r in est.choice_]})

    fits = regress.cross_fit(c, plan, on_fitted=record)
    t_fit = time.perf_counter() - t1
    null = regress.null_fits(c, plan, skip=("mean",))
    t_null = time.perf_counter() - t1 - t_fit
    res = regress.summarise(plan, fits, config={}, null=null)
    tiles = tile_truth_table(cohort_dir, store, c)
    att = fits.attention.to_pandas()
    t2 = time.perf_counter()
    seed_metrics = run_seed_model(store, kinds) if seed_model else []
    t_seed = time.perf_counter() - t2
    pooled = res.metrics[res.metrics["fold"] == -1]
    out = {
        "seed": seed,
        "n_patients": int(c.n_bags),
        "n_tiles": int(len(c.features)),
        "kinds": kinds,
        "metrics": _pooled_records(pooled),
        "seed_model": seed_metrics,
        "oracle_r": oracle_r(c, truth, tiles),
        "localisation": localisation(att[att["model"] == "mil"], tiles, c, kinds),
        "readout_choices": choices,
        "gene_comparisons": res.gene_comparisons.replace({np.nan: None}).to_dict("records"),
        "seconds": {"build": t_build, "fit": t_fit, "null": t_null, "seed_model": t_seed, **res.seconds},
    }
    cached.write_text(json.dumps(out, indent=1, default=_json_default))
    return out


def run_seed_model(store: Path, kinds: dict[str, str]) -> list[dict]:
    """The seed paper's model on :func:`seed_model_genes`, same folds (its null is not fitted: CPU)."""
    from slide2expr import regress, sql
    from slide2expr._demo import DEMO_ENCODER
    from slide2expr.regress._stats import metrics_table

    genes = seed_model_genes(kinds)
    c = sql.load_cohort(store, encoder=DEMO_ENCODER, targets=TARGETS, genes=genes)
    params = {"mil": {"preset": SEED_MODEL, "device": "cpu"}}
    plan = regress.plan_compare(c, models=("mil",), n_folds=N_FOLDS, seed=CV_SEED, model_params=params)
    fits = regress.cross_fit(c, plan)
    m = metrics_table(fits.predictions, genes=genes, models=list(plan.models))
    pooled = m[(m["fold"] == -1) & (m["model"] == "mil")].assign(model=SEED_MODEL)
    return _pooled_records(pooled)


def _pooled_records(pooled: pd.DataFrame) -> list[dict]:
    cols = ["model", "gene", "pearson_r", "pearson_p", "fdr", "rmse", "rmse_baseline", "well_predicted"]
    cols += [c for c in ("null_r", "null_p", "null_fdr", "beats_null") if c in pooled]
    return pooled[cols].astype(object).where(pooled[cols].notna(), None).to_dict("records")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


# ---- across cohorts --------------------------------------------------------------------------------------------


def _boot_ci(values: np.ndarray, stat, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile 95 % CI of ``stat`` over cohorts resampled with replacement (``values``: one entry per cohort)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    idx = rng.integers(0, len(values), size=(N_BOOT, len(values)))
    boot = np.array([stat(values[i]) for i in idx])
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def aggregate(results: list[dict]) -> dict:
    """The validity table and the targets' verdicts over cohorts."""
    rng = np.random.default_rng(0)
    rows = []
    for res in results:
        kinds = res["kinds"]
        for rec in res["metrics"] + res["seed_model"]:
            rows.append({"seed": res["seed"], "kind": kinds[rec["gene"]], **rec})
        for gene, r in res["oracle_r"].items():
            rows.append(
                {"seed": res["seed"], "kind": kinds[gene], "model": "oracle", "gene": gene, "pearson_r": r}
            )
    df = pd.DataFrame(rows)
    per_cohort = df.groupby(["model", "kind", "seed"])["pearson_r"].median().reset_index()
    table = []
    for (model, kind), g in per_cohort.groupby(["model", "kind"]):
        lo, hi = _boot_ci(g["pearson_r"].to_numpy(), np.median, rng)
        cells = df[(df.model == model) & (df.kind == kind)]
        wp = cells["well_predicted"].dropna() if "well_predicted" in cells else pd.Series(dtype=bool)
        table.append(
            {
                "model": model,
                "kind": kind,
                "median_r": float(np.median(g["pearson_r"])),
                "ci_low": lo,
                "ci_high": hi,
                "per_cohort": [round(float(v), 4) for v in g["pearson_r"]],
                "n_cells": int(len(cells)),
                "well_predicted_share": float(wp.astype(bool).mean()) if len(wp) else float("nan"),
            }
        )
    diffs = _mil_minus_best(df, rng)
    loc = _localisation_table(results)
    return {
        "table": table,
        "mil_minus_best_baseline": diffs,
        "localisation": loc,
        "seed_model_genes": _seed_model_table(df),
        "verdicts": _verdicts(table, diffs),
    }


def _seed_model_table(df: pd.DataFrame) -> list[dict]:
    """On the seed model's genes and cohorts: each model's r per gene, median over those cohorts."""
    cells = df[df.model == SEED_MODEL][["seed", "gene"]].drop_duplicates()
    if cells.empty:
        return []
    sub = df.merge(cells, on=["seed", "gene"])
    wide = sub.pivot_table(index=["kind", "gene"], columns="model", values="pearson_r", aggfunc="median")
    wide["n_cohorts"] = cells.groupby("gene").size().reindex(wide.index.get_level_values("gene")).to_numpy()
    return wide.reset_index().to_dict("records")


def _mil_minus_best(df: pd.DataFrame, rng) -> list[dict]:
    """Per kind: MIL's r minus the best baseline's on each gene, mean over genes per cohort, then over cohorts."""
    wide = df[df.model.isin(("mil", *BASELINES))].pivot_table(
        index=["seed", "kind", "gene"], columns="model", values="pearson_r"
    )
    wide["diff"] = wide["mil"] - wide[list(BASELINES)].max(axis=1)
    out = []
    for kind, g in wide.reset_index().groupby("kind"):
        per = g.groupby("seed")["diff"].mean().to_numpy()
        lo, hi = _boot_ci(per, np.mean, rng)
        out.append(
            {
                "kind": kind,
                "mean_diff": float(per.mean()),
                "median_cell_diff": float(g["diff"].median()),
                "ci_low": lo,
                "ci_high": hi,
                "per_cohort": [round(float(v), 4) for v in per],
            }
        )
    return out


def _localisation_table(results: list[dict]) -> list[dict]:
    rows = []
    for res in results:
        for gene, scores in res["localisation"].items():
            rows.append({"seed": res["seed"], "kind": res["kinds"][gene], "gene": gene, **scores})
    df = pd.DataFrame(rows)
    out = []
    for kind, g in df.groupby("kind"):
        per = g.groupby("seed")[["attention", "tile_pred"]].median()
        out.append({"kind": kind, **{k: float(per[k].median()) for k in ("attention", "tile_pred")}})
    return out


def _verdicts(table: list[dict], diffs: list[dict]) -> dict:
    get = {(r["model"], r["kind"]): r for r in table}
    diff = {d["kind"]: d for d in diffs}
    best_comp = max(get[(b, "compartment")]["median_r"] for b in BASELINES)
    noise = [r for r in table if r["kind"] == "noise" and r["model"] in MODELS]
    return {
        "mil_hotspot_r_at_least_0.80": get[("mil", "hotspot")]["median_r"] >= 0.80,
        "mil_hotspot_beats_best_baseline_by_0.05_ci_above_0": diff["hotspot"]["mean_diff"] >= 0.05
        and diff["hotspot"]["ci_low"] > 0,
        "mil_compartment_within_0.03_of_best_baseline": get[("mil", "compartment")]["median_r"]
        >= best_comp - 0.03,
        "controls_called_in_at_most_5_percent": all(r["well_predicted_share"] <= 0.05 for r in noise),
    }


# ---- the page --------------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_page(report: dict, path: Path) -> None:
    """The generated Markdown page of a report (``report`` as written to the JSON)."""
    s = report["summary"]
    fmt = lambda v: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
    cohort_s = [
        sum(v for k, v in sec.items() if k in STAGES) for sec in report.get("cohort_seconds", {}).values()
    ]
    lines = [
        "# Validity: attention-MIL against tuned baselines, out of sample",
        "",
        f"Generated by `benchmarks/validity.py` on {report['date']} · machine: {report['machine']} · "
        f"commit {report['commit']} · computed in {sum(cohort_s) / 60:.0f} min over the cohorts "
        f"({', '.join(f'{v / 60:.0f}' for v in cohort_s)} min each: synthesis and featurize, the models on 5 folds, "
        f"their nulls, the seed's model), this run {report['wall_seconds'] / 60:.0f} min.",
        "",
        f"Validation cohorts (seeds {', '.join(map(str, report['seeds']))}; settings were chosen on tuning seeds "
        f"{', '.join(map(str, TUNING_SEEDS))} only): {report['n_patients']} patients each, the demo's slides, "
        "efficientnet-lite0 at 1 µm/px and 112 px, 5 patient-grouped folds, every model at its pre-registered "
        f"settings. `{SEED_MODEL}` is the seed paper's model (one network per gene) on "
        f"{', '.join(report['seed_model_genes'])}; the oracle reads the true driver tiles.",
        "",
        "## Pooled held-out Pearson r per gene kind",
        "",
        "Median over the kind's genes per cohort, then the median over cohorts with a bootstrap 95 % CI over "
        "cohorts; *well predicted*: share of cohort × gene cells called well predicted (r > 0, BH-FDR < 0.05, "
        "RMSE below the training mean's, beats the model's null).",
        "",
        "| kind | model | median r | 95 % CI | per cohort | well predicted |",
        "|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate((*MODELS, SEED_MODEL, "oracle"))}
    for r in sorted(s["table"], key=lambda r: (KINDS.index(r["kind"]), order.get(r["model"], 9))):
        lines.append(
            f"| {r['kind']} | {r['model']} | {fmt(r['median_r'])} | {fmt(r['ci_low'])} – {fmt(r['ci_high'])} | "
            f"{', '.join(f'{v:.2f}' for v in r['per_cohort'])} | {fmt(r['well_predicted_share'])} |"
        )
    lines += [
        "",
        "## MIL minus the best baseline (per gene, the better of lgbm and ridge)",
        "",
        "| kind | mean over cohorts | 95 % CI (cohorts) | per cohort | median over cells |",
        "|---|---|---|---|---|",
    ]
    for d in s["mil_minus_best_baseline"]:
        lines.append(
            f"| {d['kind']} | {fmt(d['mean_diff'])} | {fmt(d['ci_low'])} – {fmt(d['ci_high'])} | "
            f"{', '.join(f'{v:+.3f}' for v in d['per_cohort'])} | {fmt(d['median_cell_diff'])} |"
        )
    rows = s.get("seed_model_genes") or []
    if rows:
        models = [m for m in (SEED_MODEL, *MODELS, "oracle") if m in rows[0]]
        lines += [
            "",
            f"## The seed paper's model beside the others, on its genes (median over the {rows[0]['n_cohorts']} "
            "cohorts that ran it)",
            "",
            "`graziani2022` is the seed's `MIL_model` with its optimiser and early stopping, one network per gene "
            "(`tests/regress/test_seed_model.py` shows equal outputs to the seed's forward pass with identical "
            "weights); `mil` the pre-registered MIL, `ridge` and `lgbm` the tuned baselines, on the same bags and "
            "folds.",
            "",
            "| kind | gene | " + " | ".join(models) + " |",
            "|---|---|" + "---|" * len(models),
        ]
        for r in rows:
            lines.append(f"| {r['kind']} | {r['gene']} | " + " | ".join(fmt(r.get(m)) for m in models) + " |")
    lines += ["", "## Localisation (MIL, held-out tiles): median AUROC against the driver tiles", ""]
    lines += ["| kind | attention | tile prediction |", "|---|---|---|"]
    for d in s["localisation"]:
        lines.append(f"| {d['kind']} | {fmt(d['attention'])} | {fmt(d['tile_pred'])} |")
    lines += ["", "## Targets", ""]
    for k, v in s["verdicts"].items():
        lines.append(f"- {k.replace('_', ' ')}: **{'met' if v else 'not met'}**")
    lines += ["", "## Pre-registered settings", "", report["settings"], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def settings_text() -> str:
    """The pre-registered settings, as the library documents them."""
    from slide2expr.regress import _models

    return _models.PRE_REGISTERED.strip()


# ---- main ------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="validation", help="validation, tuning, or comma-separated seeds")
    ap.add_argument("--n-patients", type=int, default=40)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of validity.json and validity.md")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (cohorts, stores, results)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--seed-model-cohorts",
        type=int,
        default=len(VALIDATION_SEEDS),
        help="cohorts that run the seed's model",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    named = {"validation": VALIDATION_SEEDS, "tuning": TUNING_SEEDS}
    seeds = named.get(args.seeds) or tuple(int(s) for s in args.seeds.split(","))
    if args.out == RESULTS and set(seeds) & set(TUNING_SEEDS):
        raise SystemExit("tuning seeds are not reported on the results page: give --out elsewhere")
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for i, seed in enumerate(seeds):
        print(f"cohort seed {seed} …", file=sys.stderr, flush=True)
        seed_model = i < args.seed_model_cohorts
        results.append(run_cohort(args.work, seed, n_patients=args.n_patients, seed_model=seed_model))
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "commit": _commit(),
        "seeds": list(seeds),
        "n_patients": args.n_patients,
        "seed_model_genes": seed_model_genes(results[0]["kinds"]),
        "settings": settings_text(),
        "wall_seconds": time.perf_counter() - t0,
        "cohort_seconds": {str(r["seed"]): r["seconds"] for r in results},
        "summary": aggregate(results),
        "cohorts": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validity.json").write_text(json.dumps(report, indent=1, default=_json_default))
    write_page(report, args.out / "validity.md")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(report["summary"]["verdicts"], indent=2))
    return report


if __name__ == "__main__":
    main()
