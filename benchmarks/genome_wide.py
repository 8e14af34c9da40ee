"""Genome-wide targets on the demo store: ``targets import`` and ``compare`` (ridge, LightGBM) with 20,000 genes.

A real STAR-counts file holds ~60 k genes; this benchmark gives the demo's cohort the demo's 35 genes plus random
genes up to ``--genes`` (default 20,000), imports them, and runs the CLI as a user would: ``slide2expr targets
import``, ``slide2expr compare --models ridge,lgbm`` without a gene choice (compare then takes, per fold, the
2,000 genes of highest variance on the training patients) and ``slide2expr report``. Each command runs in its own
process; the JSON gives its wall time and peak RSS, the run folder's and the report's size, and the compare
summary's stage times. Run::

    python benchmarks/results.py run genome_wide                       # synth + featurize the demo's cohort first
    python benchmarks/results.py run genome_wide -- --demo demo        # the store of a demo `make demo` wrote

Everything it writes lives under ``benchmarks/_work/genome_wide`` and is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORK = ROOT / "benchmarks" / "_work" / "genome_wide"
TARGETS = "genome"


def run_cli(*args: str, log: Path) -> dict:
    """Run ``slide2expr ARGS`` in its own process, its output in ``log`` (and on stderr after); its wall time (s),
    peak RSS (GB, from its own rusage) and the ``stages:`` line of its summary, if it printed one."""
    cli = Path(sys.executable).with_name("slide2expr")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(cli), *args], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    text = log.read_text()
    print(text, file=sys.stderr)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"slide2expr {args[0]} failed with exit code {os.waitstatus_to_exitcode(status)}")
    stages = [line.strip() for line in text.splitlines() if line.strip().startswith("stages:")]
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB on Linux
        "stages": stages[-1].removeprefix("stages:").strip() if stages else None,
    }


def genome_expression(src: Path, dst: Path, *, n_genes: int, seed: int = 0) -> int:
    """Write ``src``'s expression table (samples × genes) with random count-like genes added up to ``n_genes``
    columns: log-normal counts with a per-gene level and spread, as a STAR-counts matrix has."""
    df = pd.read_csv(src, index_col=0)
    extra = n_genes - df.shape[1]
    rng = np.random.default_rng(seed)
    level = rng.normal(2.0, 2.0, size=extra)
    spread = rng.uniform(0.1, 1.5, size=extra)
    counts = np.round(np.exp(level + spread * rng.normal(size=(len(df), extra))), 1)
    names = [f"RAND{i:05d}" for i in range(extra)]
    out = pd.concat([df, pd.DataFrame(counts, index=df.index, columns=names)], axis=1)
    out.to_csv(dst, float_format="%.1f")
    return out.shape[1]


def demo_store(work: Path) -> tuple[Path, Path]:
    """The demo's cohort and its featurized store under ``work`` (resumed when there)."""
    from slide2expr._demo import DEMO_PATIENTS, DEMO_SLIDE_PX, plan_demo
    from slide2expr.featurize import featurize_cohort
    from slide2expr.synth import make_cohort

    plan = plan_demo(work)
    if not plan.reuse_cohort:
        make_cohort(plan.cohort, n_patients=DEMO_PATIENTS, seed=0, size=DEMO_SLIDE_PX)
    featurize_cohort(plan.cohort / "slides.csv", store=plan.store, options=plan.featurize, progress=True)
    return plan.cohort, plan.store


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a demo folder (cohort/ and store/) already written")
    ap.add_argument("--genes", type=int, default=20_000, help="genes in the targets table (default 20,000)")
    ap.add_argument("--models", default="ridge,lgbm")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--keep", action="store_true", help="keep what this benchmark wrote")
    ns = ap.parse_args(argv)
    from slide2expr._demo import DEMO_ENCODER

    ns.work.mkdir(parents=True, exist_ok=True)
    if ns.demo is None:
        t0 = time.perf_counter()
        cohort, store = demo_store(ns.work / "demo")
        prep = round(time.perf_counter() - t0, 1)
    else:
        cohort, store, prep = ns.demo / "cohort", ns.demo / "store", None
        # never touch the given demo's store: import into a copy
        copy = ns.work / "store"
        if not copy.exists():
            shutil.copytree(store, copy)
        store = copy
    expr = ns.work / "expression_genome.csv"
    n_genes = genome_expression(cohort / "expression.csv", expr, n_genes=ns.genes)
    imp = run_cli(
        "targets", "import", str(expr), "--store", str(store), "--name", TARGETS, "--transform", "log1p",
        "--overwrite", log=ns.work / "import.log",
    )  # fmt: skip
    run = ns.work / "run"
    cmp = run_cli(
        "compare", "--store", str(store), "--targets", TARGETS, "--encoder", DEMO_ENCODER,
        "--models", ns.models, "--out", str(run), "--overwrite", log=ns.work / "compare.log",
    )  # fmt: skip
    rep = run_cli("report", str(run), log=ns.work / "report.log")
    report = run / "explain" / "report.html"
    import pyarrow.parquet as pq

    from slide2expr.contract import RunLayout

    layout = RunLayout(run)
    metrics = pq.read_table(layout.metrics).to_pandas()
    pooled = metrics[metrics["fold"] == -1]
    out = {
        "genes_in_targets": n_genes,
        "genes_compared": int(pooled["gene"].nunique()),
        "models": ns.models,
        "patients": int(pd.read_csv(cohort / "patients.csv")["patient_id"].nunique()),
        "bags": int(pq.read_table(layout.predictions, columns=["bag_id"]).column(0).unique().length()),
        "prepare_store_s": prep,
        "import_s": imp["seconds"],
        "import_peak_rss_gb": imp["peak_rss_gb"],
        "compare_s": cmp["seconds"],
        "compare_peak_rss_gb": cmp["peak_rss_gb"],
        "compare_stages": cmp["stages"],
        "report_s": rep["seconds"],
        "report_peak_rss_gb": rep["peak_rss_gb"],
        "run_dir_gb": round(dir_bytes(run) / 1e9, 3),
        "report_mb": round(report.stat().st_size / 1e6, 2),
        "metrics_rows": len(metrics),
        "load_average": round(os.getloadavg()[0], 2),
    }
    for model in sorted(set(pooled["model"])):
        mm = pooled[pooled["model"] == model]
        out[f"{model}_median_r"] = round(float(mm["pearson_r"].median()), 3)
        out[f"{model}_well_predicted"] = int(mm["well_predicted"].sum())
    if not ns.keep:
        shutil.rmtree(ns.work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
