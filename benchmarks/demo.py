"""The demo's table: what ``make demo`` reaches, per model, at the library's pre-registered settings.

Runs ``slide2expr demo`` (or reads a demo folder it wrote, ``--demo DIR``) and prints JSON: per model, the median
pooled held-out Pearson r over the 35 genes, the genes well predicted, and the median r per gene kind (hotspot,
compartment, noise: the planted truth of the demo's cohort). ``python benchmarks/results.py run demo`` records it
with its date, machine and commit; the results page and the docs' Benchmarks page show it, so no page carries a
hand-copied demo table. Run::

    python benchmarks/results.py run demo                    # runs the demo in benchmarks/_work/demo (deleted after)
    python benchmarks/results.py run demo -- --demo demo     # the table of a demo already run by `make demo`
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORK = ROOT / "benchmarks" / "_work" / "demo"
MODELS = ("mil", "lgbm", "ridge", "mean")
KINDS = ("hotspot", "compartment", "noise")


def table(demo: Path) -> dict:
    """The figures of the demo folder ``demo`` (its ``run/metrics.parquet`` and ``cohort/truth.json``)."""
    import pyarrow.parquet as pq

    from slide2expr.contract import RunLayout
    from slide2expr.synth import read_truth

    m = pq.read_table(RunLayout(demo / "run").metrics).to_pandas()
    m = m[m["fold"] == -1]
    kinds = {g: v["kind"] for g, v in read_truth(demo / "cohort")["genes"].items()}
    m = m.assign(kind=m["gene"].map(kinds))
    out: dict = {"genes": int(m["gene"].nunique())}
    for model in (x for x in MODELS if x in set(m["model"])):
        mm = m[m["model"] == model]
        out[f"{model}_median_r"] = round(float(mm["pearson_r"].median()), 3)
        out[f"{model}_well_predicted"] = int(mm["well_predicted"].sum())
        for kind in KINDS:
            out[f"{model}_{kind}_median_r"] = round(
                float(mm.loc[mm["kind"] == kind, "pearson_r"].median()), 3
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a demo folder already written (default: run the demo)")
    ap.add_argument("--keep", action="store_true", help="keep the demo this benchmark ran")
    ns = ap.parse_args(argv)
    seconds = None
    demo = ns.demo
    if demo is None:
        demo = WORK
        t0 = time.perf_counter()
        cli = Path(sys.executable).with_name("slide2expr")
        subprocess.run([str(cli), "demo", "--out", str(demo)], check=True, stdout=sys.stderr)
        seconds = round(time.perf_counter() - t0, 1)
    out = {**table(demo), "demo_seconds": seconds}
    if ns.demo is None and not ns.keep:
        shutil.rmtree(demo, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
