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

Each finished cohort is saved as a small tracked file, ``benchmarks/results/validity/seed<N>.json`` (written
atomically): what :func:`run_cohort` measures (pooled metrics per model and gene, the seed model's, the oracle's,
localisation, readout choices, the model-vs-model tests per gene; no per-tile data) and its ``provenance``
(commit, date, machine, torch threads, patients, whether the seed model ran, and ``settings_sha256``, the
fingerprint of the pre-registered settings text). A cohort takes long on a CPU, so the five are computed
over several sessions; a saved file is the cohort's cache (same fingerprint and patients: skipped;
``--rerun`` computes it again), and every run ends by aggregating over all saved validation cohorts, not only the
ones it ran. The page and JSON say how many of the five are in; the targets' verdicts need all five and read *not
decided* until then. A cohort saved at other settings (another fingerprint) or another cohort size is left out,
with a line on the page saying which and why. Tuning seeds are never saved there.

Synthetic slides and stores live under ``--work`` (default ``benchmarks/_work/validity``, ignored by git), one
folder per cohort, so an interrupted cohort resumes; a cohort's folder is deleted once its result is saved,
unless ``--keep``. Run::

    python benchmarks/validity.py                    # the validation cohorts not yet saved, then the page
    python benchmarks/validity.py --seeds 3          # one cohort, then the page over all saved cohorts
    python benchmarks/validity.py --aggregate-only   # the page from the saved cohorts, computing nothing
    python benchmarks/validity.py --import-result PATH/result.json --commit SHA   # a result without provenance
    python benchmarks/validity.py --seeds tuning --keep --out /tmp/tuning   # the tuning cohorts, elsewhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
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
#: The saved cohorts' folder inside the results folder (``--out``): one ``seed<N>.json`` per finished cohort.
COHORTS = "validity"
#: What a cohort's result holds (the keys :func:`compute_cohort` writes); a saved cohort adds ``provenance``.
RESULT_KEYS = (
    "seed", "n_patients", "n_tiles", "kinds", "metrics", "seed_model", "oracle_r", "localisation",
    "readout_choices", "gene_comparisons", "seconds",
)  # fmt: skip


# ---- one cohort ------------------------------------------------------------------------------------------------


def build_cohort(work: Path, seed: int, *, n_patients: int) -> tuple[Path, Path]:
    """Synthetic cohort → store (featurized as the demo does) → targets; each step skipped when done."""
    from slide2expr import featurize, regress
    from slide2expr._demo import DEMO_ENCODER, DEMO_INPUT_PX, DEMO_MPP, DEMO_SLIDE_PX, DEMO_TILE_PX
    from slide2expr.synth import make_cohort

    cohort, store = work / f"seed{seed}" / "cohort", work / f"seed{seed}" / "store"
    (work / f"seed{seed}").mkdir(parents=True, exist_ok=True)
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


def run_cohort(
    work: Path,
    seed: int,
    *,
    n_patients: int,
    seed_model: bool = True,
    cohorts: Path = RESULTS / COHORTS,
    rerun: bool = False,
) -> dict:
    """Everything the benchmark measures on one cohort, saved with its provenance as ``cohorts/seed<seed>.json``.

    A saved file with the current settings fingerprint and ``n_patients`` is returned as it is (the cohort is not
    computed) unless ``rerun``; slides and stores go under ``work``.
    """
    path = cohort_path(cohorts, seed)
    if not rerun and path.is_file():
        try:
            saved = read_cohort(path)
        except ValueError as e:
            raise ValueError(
                f"{path}: not readable ({e}); mend it or give --rerun to compute it again"
            ) from None
        prov = saved.get("provenance", {})
        if prov.get("settings_sha256") == settings_fingerprint() and prov.get("n_patients") == n_patients:
            return saved
    import torch

    out = compute_cohort(work, seed, n_patients=n_patients, seed_model=seed_model)
    out["provenance"] = provenance(
        commit=_commit(),
        date=_utc(time.time()),
        threads=torch.get_num_threads(),
        n_patients=n_patients,
        seed_model=seed_model,
    )
    save_cohort(out, cohorts)
    return out


def compute_cohort(work: Path, seed: int, *, n_patients: int, seed_model: bool) -> dict:
    """What :func:`run_cohort` measures on one cohort (no provenance)."""
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
    return {
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


# ---- saved cohorts ---------------------------------------------------------------------------------------------


def cohort_path(cohorts: Path, seed: int) -> Path:
    """The saved result of cohort ``seed`` in the folder ``cohorts``."""
    return Path(cohorts) / f"seed{int(seed)}.json"


def settings_fingerprint(text: str | None = None) -> str:
    """sha256 of the pre-registered settings text (:func:`settings_text`), whitespace runs read as one space so
    that re-wrapping the text keeps the fingerprint."""
    text = settings_text() if text is None else text
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def provenance(*, commit: str, date: str, threads: int | None, n_patients: int, seed_model: bool) -> dict:
    """Where and at which settings a cohort was computed (``threads``: torch CPU threads, None when unknown)."""
    return {
        "commit": commit,
        "date": date,
        "machine": _machine(),
        "torch_threads": threads,
        "n_patients": int(n_patients),
        "seed_model": bool(seed_model),
        "settings_sha256": settings_fingerprint(),
    }


def save_cohort(result: dict, cohorts: Path) -> Path:
    """Write ``result`` (with its ``provenance``) atomically to ``cohorts/seed<seed>.json``; tuning seeds are
    refused in the results folder."""
    from slide2expr.contract import write_bytes_atomic

    seed = int(result["seed"])
    if seed in TUNING_SEEDS and Path(cohorts).resolve() == (RESULTS / COHORTS).resolve():
        raise ValueError(f"seed {seed} is a tuning seed: its result is never saved in {RESULTS / COHORTS}")
    missing = [k for k in (*RESULT_KEYS, "provenance") if k not in result]
    if missing:
        raise ValueError(f"cohort result of seed {seed} lacks {', '.join(missing)}")
    path = cohort_path(cohorts, seed)
    write_bytes_atomic(path, (json.dumps(result, indent=1, default=_json_default) + "\n").encode())
    return path


def read_cohort(path: Path) -> dict:
    """A saved cohort result."""
    return json.loads(Path(path).read_text())


def select_cohorts(
    cohorts: Path, *, expected: tuple[int, ...], n_patients: int, fingerprint: str
) -> tuple[list[dict], list[dict]]:
    """The saved cohorts of ``expected`` seeds computed at ``fingerprint`` with ``n_patients``, by seed; and the
    files left out, each ``{"file", "seed", "commit", "date", "reason"}``."""
    kept, left_out = [], []
    for path in sorted(Path(cohorts).glob("seed*.json"), key=lambda p: (len(p.name), p.name)):
        entry = {"file": f"{COHORTS}/{path.name}", "seed": None, "commit": None, "date": None}
        try:
            res = read_cohort(path)
            prov = res.get("provenance") or {}
            entry.update(seed=res.get("seed"), commit=prov.get("commit"), date=prov.get("date"))
        except (OSError, ValueError, AttributeError) as e:
            left_out.append({**entry, "reason": f"not readable ({e})"})
            continue
        reason = None
        if not prov:
            reason = "no provenance (add it with --import-result)"
        elif path.name != cohort_path(cohorts, res.get("seed", -1)).name:
            reason = f"holds seed {res.get('seed')}, not the seed of its name"
        elif res["seed"] not in expected:
            reason = f"seed {res['seed']} is not one of the seeds {', '.join(map(str, expected))}"
        elif prov.get("settings_sha256") != fingerprint:
            reason = (
                f"computed at other pre-registered settings (fingerprint {str(prov.get('settings_sha256'))[:12]}, "
                f"the current settings' {fingerprint[:12]})"
            )
        elif prov.get("n_patients") != n_patients:
            reason = f"{prov.get('n_patients')} patients, this page's cohorts have {n_patients}"
        if reason:
            left_out.append({**entry, "reason": reason})
        else:
            kept.append(res)
    return sorted(kept, key=lambda r: r["seed"]), left_out


def import_result(path: Path, *, commit: str, cohorts: Path, replace: bool = False) -> Path:
    """Save a cohort result written without provenance (a ``result.json`` of an older copy of this script) as
    ``cohorts/seed<seed>.json``: date from the file's modification time, this machine, ``commit``, the current
    settings' fingerprint, the seed model as the result records it; torch threads unknown."""
    path = Path(path)
    if not re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", commit or ""):
        raise ValueError(
            f"--commit {commit!r}: give the short or full sha of the commit that computed {path}"
        )
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable cohort result ({e})") from None
    missing = [k for k in RESULT_KEYS if k not in res]
    if missing:
        raise ValueError(f"{path}: not a cohort result of this benchmark (lacks {', '.join(missing)})")
    if "provenance" in res:
        raise ValueError(f"{path} already has its provenance: copy it into {cohorts} as it is")
    dest = cohort_path(cohorts, res["seed"])
    if dest.exists() and not replace:
        raise ValueError(f"{dest} exists: give --rerun to replace it")
    res["provenance"] = provenance(
        commit=commit,
        date=_utc(path.stat().st_mtime),
        threads=None,
        n_patients=res["n_patients"],
        seed_model=bool(res["seed_model"]),
    )
    return save_cohort(res, cohorts)


# ---- across cohorts --------------------------------------------------------------------------------------------


def _boot_ci(values: np.ndarray, stat, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile 95 % CI of ``stat`` over cohorts resampled with replacement (``values``: one entry per cohort)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    idx = rng.integers(0, len(values), size=(N_BOOT, len(values)))
    boot = np.array([stat(values[i]) for i in idx])
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def aggregate(results: list[dict], expected: tuple[int, ...] = VALIDATION_SEEDS) -> dict:
    """The validity table and the targets' verdicts over cohorts (``results``: one per cohort).

    Each verdict reads ``"met"`` or ``"not met"`` when every ``expected`` cohort is in, else ``"not decided (k of n
    cohorts)"``; the table's numbers are there either way.
    """
    rng = np.random.default_rng(0)
    seeds = sorted({int(r["seed"]) for r in results})
    k, n = len(set(seeds) & set(expected)), len(expected)
    empty = {"table": [], "mil_minus_best_baseline": [], "localisation": [], "seed_model_genes": []}
    if not results:
        return {**empty, "seeds": [], "verdicts": dict.fromkeys(VERDICTS, f"not decided (0 of {n} cohorts)")}
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
    df["pearson_r"] = df["pearson_r"].astype(np.float64)
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
                "seeds": [int(v) for v in g["seed"]],
                "n_cells": int(len(cells)),
                "well_predicted_share": float(wp.astype(bool).mean()) if len(wp) else float("nan"),
            }
        )
    diffs = _mil_minus_best(df, rng)
    if k == n:
        verdicts = {name: "met" if v else "not met" for name, v in _verdicts(table, diffs).items()}
    else:
        verdicts = dict.fromkeys(VERDICTS, f"not decided ({k} of {n} cohorts)")
    return {
        "table": table,
        "mil_minus_best_baseline": diffs,
        "localisation": _localisation_table(results),
        "seed_model_genes": _seed_model_table(df),
        "seeds": seeds,
        "verdicts": verdicts,
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
        by_seed = g.groupby("seed")["diff"].mean()
        per = by_seed.to_numpy()
        lo, hi = _boot_ci(per, np.mean, rng)
        out.append(
            {
                "kind": kind,
                "mean_diff": float(per.mean()),
                "median_cell_diff": float(g["diff"].median()),
                "ci_low": lo,
                "ci_high": hi,
                "per_cohort": [round(float(v), 4) for v in per],
                "seeds": [int(v) for v in by_seed.index],
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


#: The targets the page decides, in the order of :func:`_verdicts`.
VERDICTS = (
    "mil_hotspot_r_at_least_0.80",
    "mil_hotspot_beats_best_baseline_by_0.05_ci_above_0",
    "mil_compartment_within_0.03_of_best_baseline",
    "controls_called_in_at_most_5_percent",
)


def _verdicts(table: list[dict], diffs: list[dict]) -> dict[str, bool]:
    get = {(r["model"], r["kind"]): r for r in table}
    diff = {d["kind"]: d for d in diffs}
    best_comp = max(get[(b, "compartment")]["median_r"] for b in BASELINES)
    noise = [r for r in table if r["kind"] == "noise" and r["model"] in MODELS]
    met = (
        get[("mil", "hotspot")]["median_r"] >= 0.80,
        diff["hotspot"]["mean_diff"] >= 0.05 and diff["hotspot"]["ci_low"] > 0,
        get[("mil", "compartment")]["median_r"] >= best_comp - 0.03,
        all(r["well_predicted_share"] <= 0.05 for r in noise),
    )
    return dict(zip(VERDICTS, (bool(v) for v in met), strict=True))


# ---- the page --------------------------------------------------------------------------------------------------


def _commit() -> str:
    """HEAD's short sha, with ``+dirty`` when tracked files outside ``benchmarks/results`` have changes."""
    git = ["git", "-C", str(ROOT)]
    try:
        sha = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            [
                *git,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _seed_list(seeds) -> str:
    return ", ".join(map(str, seeds))


def cohorts_status(seeds, expected: tuple[int, ...], name: str = "validation") -> str:
    """How many of the ``expected`` cohorts are in, e.g. ``2 of 5 validation cohorts: seeds 1, 2; 3, 4, 5 not yet
    run``."""
    have = [s for s in expected if s in set(seeds)]
    todo = [s for s in expected if s not in set(seeds)]
    text = f"{len(have)} of {len(expected)} {name} cohorts"
    if have:
        text += f": seeds {_seed_list(have)}"
    if todo:
        text += f"{';' if have else ':'} {_seed_list(todo)} not yet run"
    return text


def write_page(report: dict, path: Path) -> None:
    """The generated Markdown page of a report (``report`` as written to the JSON)."""
    from slide2expr.contract import write_bytes_atomic

    s = report["summary"]
    lines = [
        "# Validity: attention-MIL against tuned baselines, out of sample",
        "",
        f"Generated by `benchmarks/validity.py` on {report['date']} · machine: {report['machine']} · "
        f"commit {report['commit']}, from the saved cohort results in `benchmarks/results/{COHORTS}/`.",
        "",
        f"**{report['status']}.**",
        "",
        f"Validation cohorts (seeds {_seed_list(report['expected_seeds'])}; settings were chosen on tuning seeds "
        f"{_seed_list(TUNING_SEEDS)} only): {report['n_patients']} patients each, the demo's slides, "
        "efficientnet-lite0 at 1 µm/px and 112 px, 5 patient-grouped folds, every model at its pre-registered "
        f"settings (fingerprint `{report['settings_sha256'][:12]}`). `{SEED_MODEL}` is the seed paper's model (one "
        f"network per gene) on {', '.join(report['seed_model_genes']) or 'no gene'}; the oracle reads the true "
        "driver tiles.",
        *_cohort_lines(report),
        *_table_lines(s),
        *_seed_model_lines(s),
    ]
    lines += ["", "## Localisation (MIL, held-out tiles): median AUROC against the driver tiles", ""]
    lines += ["| kind | attention | tile prediction |", "|---|---|---|"]
    for d in s["localisation"]:
        lines.append(f"| {d['kind']} | {_fmt(d['attention'])} | {_fmt(d['tile_pred'])} |")
    lines += ["", "## Targets", ""]
    if any(v.startswith("not decided") for v in s["verdicts"].values()):
        lines += [f"The targets are decided on all {len(report['expected_seeds'])} validation cohorts.", ""]
    for k, v in s["verdicts"].items():
        lines.append(f"- {k.replace('_', ' ')}: **{v}**")
    lines += ["", "## Pre-registered settings", "", report["settings"], ""]
    write_bytes_atomic(path, "\n".join(lines).encode())


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _ci(row: dict) -> str:
    """``low – high`` of a row's bootstrap CI, or ``–`` where there is none (fewer than 2 cohorts)."""
    lo, hi = _fmt(row["ci_low"]), _fmt(row["ci_high"])
    return "–" if lo == hi == "–" else f"{lo} – {hi}"


def _per_cohort(values, seeds, all_seeds, spec: str) -> str:
    text = ", ".join("–" if np.isnan(v) else format(v, spec) for v in values)
    return text if list(seeds) == list(all_seeds) else f"{text} (seeds {_seed_list(seeds)})"


def _cohort_lines(report: dict) -> list[str]:
    """The cohorts in (seed, commit, date, machine, threads, patients, seed model, minutes) and those left out."""
    lines = ["", "## Cohorts", ""]
    if report["cohorts"]:
        lines += [
            "| seed | commit | date | machine | torch threads | patients | seed's model | minutes |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for c in report["cohorts"]:
        minutes = sum(v for k, v in c["seconds"].items() if k in STAGES) / 60
        threads = "–" if c["torch_threads"] is None else c["torch_threads"]
        lines.append(
            f"| {c['seed']} | {c['commit']} | {c['date']} | {c['machine']} | {threads} | {c['n_patients']} | "
            f"{'yes' if c['seed_model'] else 'no'} | {minutes:.0f} |"
        )
    if report["cohorts"]:
        lines += [
            "",
            "Minutes: synthesis and featurize, the models on 5 folds, their nulls, the seed's model.",
        ]
    for d in report["left_out"]:
        what = f"seed {d['seed']}" if d["seed"] is not None else "a file"
        at = ", ".join(str(v) for v in (d["commit"], d["date"]) if v)
        lines.append(f"- Left out: {what} (`{d['file']}`{', ' + at if at else ''}): {d['reason']}.")
    return lines


def _table_lines(s: dict) -> list[str]:
    seeds = s["seeds"]
    lines = [
        "",
        "## Pooled held-out Pearson r per gene kind",
        "",
        "Median over the kind's genes per cohort, then the median over cohorts with a bootstrap 95 % CI over "
        "cohorts (– with fewer than 2); *well predicted*: share of cohort × gene cells called well predicted (r > 0, "
        "BH-FDR < 0.05, RMSE below the training mean's, beats the model's null).",
        "",
        f"| kind | model | median r | 95 % CI | per cohort (seeds {_seed_list(seeds)}) | well predicted |",
        "|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate((*MODELS, SEED_MODEL, "oracle"))}
    for r in sorted(s["table"], key=lambda r: (KINDS.index(r["kind"]), order.get(r["model"], 9))):
        lines.append(
            f"| {r['kind']} | {r['model']} | {_fmt(r['median_r'])} | {_ci(r)} | "
            f"{_per_cohort(r['per_cohort'], r.get('seeds', seeds), seeds, '.2f')} | "
            f"{_fmt(r['well_predicted_share'])} |"
        )
    lines += [
        "",
        "## MIL minus the best baseline (per gene, the better of lgbm and ridge)",
        "",
        f"| kind | mean over cohorts | 95 % CI (cohorts) | per cohort (seeds {_seed_list(seeds)}) | median over cells |",
        "|---|---|---|---|---|",
    ]
    for d in s["mil_minus_best_baseline"]:
        lines.append(
            f"| {d['kind']} | {_fmt(d['mean_diff'])} | {_ci(d)} | "
            f"{_per_cohort(d['per_cohort'], d.get('seeds', seeds), seeds, '+.3f')} | "
            f"{_fmt(d['median_cell_diff'])} |"
        )
    return lines


def _seed_model_lines(s: dict) -> list[str]:
    rows = s.get("seed_model_genes") or []
    if not rows:
        return []
    models = [m for m in (SEED_MODEL, *MODELS, "oracle") if m in rows[0]]
    lines = [
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
        lines.append(f"| {r['kind']} | {r['gene']} | " + " | ".join(_fmt(r.get(m)) for m in models) + " |")
    return lines


def settings_text() -> str:
    """The pre-registered settings, as the library documents them."""
    from slide2expr.regress import _models

    return _models.PRE_REGISTERED.strip()


# ---- main ------------------------------------------------------------------------------------------------------


def build_report(
    out: Path, *, expected: tuple[int, ...], name: str, n_patients: int, wall_seconds: float | None = None
) -> dict:
    """The report over every saved cohort of ``expected`` in ``out/validity`` (as written to ``validity.json``)."""
    fingerprint = settings_fingerprint()
    results, left_out = select_cohorts(
        out / COHORTS, expected=expected, n_patients=n_patients, fingerprint=fingerprint
    )
    seeds = [r["seed"] for r in results]
    return {
        "date": _utc(time.time()),
        "machine": _machine(),
        "commit": _commit(),
        "seed_set": name,
        "expected_seeds": list(expected),
        "seeds": seeds,
        "missing_seeds": [s for s in expected if s not in seeds],
        "status": cohorts_status(seeds, expected, name),
        "n_patients": n_patients,
        "seed_model_genes": seed_model_genes(results[0]["kinds"]) if results else [],
        "settings": settings_text(),
        "settings_sha256": fingerprint,
        "wall_seconds": wall_seconds,
        "cohorts": [
            {
                "seed": r["seed"],
                "file": f"{COHORTS}/{cohort_path(Path(), r['seed']).name}",
                "seconds": r["seconds"],
            }
            | r["provenance"]
            for r in results
        ],
        "left_out": left_out,
        "summary": aggregate(results, expected),
    }


def write_report(report: dict, out: Path) -> None:
    """``out/validity.json`` and ``out/validity.md``, each written atomically."""
    from slide2expr.contract import write_bytes_atomic

    text = json.dumps(report, indent=1, default=_json_default) + "\n"
    write_bytes_atomic(out / "validity.json", text.encode())
    write_page(report, out / "validity.md")


def seed_set(seeds: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """The named list ``seeds`` belong to (validation or tuning), else the seeds themselves as ``requested``."""
    for name, named in (("validation", VALIDATION_SEEDS), ("tuning", TUNING_SEEDS)):
        if set(seeds) <= set(named):
            return name, named
    return "requested", tuple(seeds)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="validation", help="validation, tuning, or comma-separated seeds")
    ap.add_argument("--n-patients", type=int, default=40)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument(
        "--out", type=Path, default=RESULTS, help="folder of validity.json, validity.md and the saved cohorts"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder (cohorts, stores)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--seed-model-cohorts",
        type=int,
        default=len(VALIDATION_SEEDS),
        help="cohorts that run the seed's model",
    )
    ap.add_argument("--rerun", action="store_true", help="compute cohorts again even when saved")
    ap.add_argument("--aggregate-only", action="store_true", help="the page from the saved cohorts only")
    ap.add_argument("--import-result", type=Path, help="save a result.json without provenance as a cohort")
    ap.add_argument("--commit", help="with --import-result: the commit whose script computed it")
    return ap


def run_cohorts(args: argparse.Namespace, seeds: tuple[int, ...]) -> None:
    """Run (or find saved) each of ``seeds``; a cohort's slides and store are deleted once its result is saved,
    unless ``--keep``."""
    import torch

    torch.set_num_threads(args.threads)
    for i, seed in enumerate(seeds):
        print(f"cohort seed {seed} …", file=sys.stderr, flush=True)
        try:
            run_cohort(
                args.work,
                seed,
                n_patients=args.n_patients,
                seed_model=i < args.seed_model_cohorts,
                cohorts=args.out / COHORTS,
                rerun=args.rerun,
            )
        except ValueError as e:
            raise SystemExit(str(e)) from None
        if not args.keep:
            shutil.rmtree(args.work / f"seed{seed}", ignore_errors=True)
    if not args.keep and args.work.is_dir() and not any(args.work.iterdir()):
        args.work.rmdir()


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    named = {"validation": VALIDATION_SEEDS, "tuning": TUNING_SEEDS}
    seeds = named.get(args.seeds) or tuple(int(s) for s in args.seeds.split(","))
    name, expected = seed_set(seeds)
    to_results = args.out.resolve() == RESULTS.resolve()
    if to_results and set(seeds) & set(TUNING_SEEDS):
        raise SystemExit("tuning seeds are not reported on the results page: give --out elsewhere")
    t0 = time.perf_counter()
    if args.import_result is not None:
        if not args.commit:
            raise SystemExit(
                "--import-result needs --commit SHA: the commit whose script computed the result"
            )
        try:
            path = import_result(
                args.import_result, commit=args.commit, cohorts=args.out / COHORTS, replace=args.rerun
            )
        except ValueError as e:
            raise SystemExit(str(e)) from None
        print(f"saved {path}", file=sys.stderr)
    elif not args.aggregate_only:
        run_cohorts(args, seeds)
    wall = None if args.aggregate_only or args.import_result else time.perf_counter() - t0
    report = build_report(
        args.out, expected=expected, name=name, n_patients=args.n_patients, wall_seconds=wall
    )
    write_report(report, args.out)
    print(report["status"], file=sys.stderr)
    print(json.dumps(report["summary"]["verdicts"], indent=2))
    return report


if __name__ == "__main__":
    main()
