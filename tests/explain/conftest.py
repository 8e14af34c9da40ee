"""A small real store (OpenSlide-readable Aperio .svs slides) and a run directory fabricated to the contract.

Genes: ``HOTA`` is driven by a planted disc of tiles per slide (the driver tiles of the truth table), ``STRB`` by a
band of rows, ``NOISE1`` by nothing. The embedding carries the driver flags in its first two dimensions, the MIL
attention is high on driver tiles, and the ``lgbm`` models are real LightGBM fits on the pooled bags of each
fold's training patients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from slide2expr.contract import (
    SLIDES_SCHEMA,
    TILES_SCHEMA,
    embeddings_path,
    embeddings_schema,
    init_store,
    slide_path,
    tiles_path,
    write_table_atomic,
)

TILING = "mpp1.00_px64_ov0"
ENCODER = "toy-encoder"
SIZE = (1024, 768)  # level-0 px
MPP = 0.5
TILE0 = 128  # level-0 px per tile
COLS, ROWS = SIZE[0] // TILE0, SIZE[1] // TILE0
GENES = ("HOTA", "STRB", "NOISE1")
N_PATIENTS = 9
N_FOLDS = 3


@dataclass
class ToyRun:
    store: Path
    run: Path
    slides: list[str]
    patients: list[str]
    slide_patient: dict[str, str]
    drivers: dict[str, dict[str, np.ndarray]]  # slide -> gene -> (n_tiles,) driver flag
    y_true: dict[str, dict[str, float]]  # patient -> gene -> value


def _table(rows: dict, schema: pa.Schema | None = None) -> pa.Table:
    return pa.table(rows, schema=schema) if schema is not None else pa.table(rows)


def _metrics_rows(model: str, gene: str, fold: int, yt: np.ndarray, yp: np.ndarray, base: float) -> dict:
    from scipy.stats import pearsonr, spearmanr

    r, p = pearsonr(yt, yp) if np.std(yp) > 0 else (np.nan, np.nan)
    rho, sp = spearmanr(yt, yp) if np.std(yp) > 0 else (np.nan, np.nan)
    rmse = float(np.sqrt(np.mean((yt - yp) ** 2)))
    return {
        "model": model,
        "gene": gene,
        "fold": fold,
        "n": len(yt),
        "pearson_r": float(r),
        "pearson_p": float(p),
        "spearman_rho": float(rho),
        "spearman_p": float(sp),
        "r2": float(1 - np.sum((yt - yp) ** 2) / np.sum((yt - yt.mean()) ** 2)),
        "mae": float(np.mean(np.abs(yt - yp))),
        "rmse": rmse,
        "rmse_baseline": float(np.sqrt(np.mean((yt - base) ** 2))),
    }


def make_toy_run(root: Path, *, seed: int = 0) -> ToyRun:
    import joblib
    from lightgbm import LGBMRegressor
    from matplotlib.figure import Figure
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline

    from slide2expr.featurize._svs import write_svs
    from slide2expr.regress import BagPooler

    rng = np.random.default_rng(seed)
    store = init_store(root / "store")
    run = root / "run"
    (run / "models" / "lgbm").mkdir(parents=True)
    (run / "plots").mkdir()
    slides, patients, slide_patient, drivers, emb_of = [], [], {}, {}, {}
    tid = np.arange(COLS * ROWS, dtype=np.int32)
    gx, gy = (tid % COLS), (tid // COLS)
    x0 = (gx * TILE0).astype(np.int64)
    y0 = (gy * TILE0).astype(np.int64)
    slide_file = root / "slides" / "base.svs"
    slide_file.parent.mkdir(parents=True, exist_ok=True)
    write_svs(slide_file, size=SIZE, mpp=MPP, tile=256, levels=2, seed=seed)
    for p in range(N_PATIENTS):
        pid = f"TCGA-EX-{p + 1:04d}"
        patients.append(pid)
        for s in range(2 if p == 0 else 1):
            sid = f"{pid}-01Z-00-DX{s + 1}"
            # every slide file is a copy of the same pyramid (the pixels are not what is under test)
            path = root / "slides" / f"{sid}.svs"
            path.write_bytes(slide_file.read_bytes())
            cx, cy = rng.uniform(1.5, COLS - 2.5), rng.uniform(1.5, ROWS - 2.5)
            radius = 0.6 + 2.0 * p / N_PATIENTS
            hot = ((gx - cx) ** 2 + (gy - cy) ** 2 <= radius**2).astype(np.float64)
            band = (gy < 1 + p % 4).astype(np.float64)
            drivers[sid] = {"HOTA": hot, "STRB": band, "NOISE1": np.zeros(len(tid))}
            emb = rng.normal(0, 0.3, (len(tid), 6)).astype(np.float32)
            emb[:, 0] += 3 * hot.astype(np.float32)
            emb[:, 1] += 3 * band.astype(np.float32)
            emb_of[sid] = emb
            n = len(tid)
            write_table_atomic(
                _table(
                    {
                        "slide_id": [sid] * n,
                        "tile_id": tid,
                        "x": x0,
                        "y": y0,
                        "w": np.full(n, TILE0, np.int64),
                        "h": np.full(n, TILE0, np.int64),
                        "tissue_frac": np.ones(n, np.float32),
                    },
                    TILES_SCHEMA,
                ),
                tiles_path(store, TILING, sid),
            )
            schema = embeddings_schema(6)
            col = pa.FixedSizeListArray.from_arrays(
                pa.array(emb.ravel()), type=schema.field("embedding").type
            )
            write_table_atomic(
                _table({"slide_id": [sid] * n, "tile_id": tid, "x": x0, "y": y0, "embedding": col}, schema),
                embeddings_path(store, TILING, ENCODER, sid),
            )
            row = {f.name: None for f in SLIDES_SCHEMA}
            row.update(
                slide_id=sid,
                patient_id=pid,
                path=str(path),
                vendor="aperio",
                width=SIZE[0],
                height=SIZE[1],
                mpp_x=MPP,
                mpp_y=MPP,
                mpp_source="metadata",
                levels=2,
                status="ok",
                n_tiles=n,
                tiling=TILING,
                encoder=ENCODER,
            )
            write_table_atomic(pa.Table.from_pylist([row], schema=SLIDES_SCHEMA), slide_path(store, sid))
            slides.append(sid)
            slide_patient[sid] = pid
    slides_of = {pid: [s for s in slides if slide_patient[s] == pid] for pid in patients}
    y_true = {}
    for pid in patients:
        d = {g: np.concatenate([drivers[s][g] for s in slides_of[pid]]) for g in GENES}
        y_true[pid] = {
            "HOTA": 1 + 4 * d["HOTA"].mean() + rng.normal(0, 0.05),
            "STRB": 1 + 3 * d["STRB"].mean() + rng.normal(0, 0.05),
            "NOISE1": 2 + rng.normal(0, 1.0),
        }
    fold_of = {pid: i % N_FOLDS for i, pid in enumerate(patients)}
    write_table_atomic(
        _table(
            {
                "bag_id": patients,
                "patient_id": patients,
                "fold": np.array([fold_of[p] for p in patients], np.int32),
            }
        ),
        run / "folds.parquet",
    )
    bag = {pid: np.concatenate([emb_of[s] for s in slides_of[pid]]) for pid in patients}
    Y = np.array([[y_true[p][g] for g in GENES] for p in patients])
    pred_rows, att_rows = [], []
    for k in range(N_FOLDS):
        train = [i for i, p in enumerate(patients) if fold_of[p] != k]
        test = [i for i, p in enumerate(patients) if fold_of[p] == k]
        lgbm = Pipeline(
            [
                ("pool", BagPooler(stats=("mean", "max"))),
                (
                    "reg",
                    MultiOutputRegressor(
                        LGBMRegressor(
                            n_estimators=25,
                            min_child_samples=2,
                            min_data_in_bin=1,
                            learning_rate=0.2,
                            verbose=-1,
                            random_state=0,
                        )
                    ),
                ),
            ]
        ).fit([bag[patients[i]] for i in train], Y[train])
        joblib.dump(lgbm, run / "models" / "lgbm" / f"fold{k}.joblib")
        p_lgbm = lgbm.predict([bag[patients[i]] for i in test])
        for j, i in enumerate(test):
            pid = patients[i]
            for gi, g in enumerate(GENES):
                yt = Y[i, gi]
                for model, yp in (
                    ("mil", yt + rng.normal(0, 0.1)),
                    ("lgbm", p_lgbm[j, gi]),
                    ("mean", Y[train, gi].mean()),
                ):
                    pred_rows.append(
                        {
                            "model": model,
                            "fold": k,
                            "bag_id": pid,
                            "patient_id": pid,
                            "gene": g,
                            "y_true": float(yt),
                            "y_pred": float(yp),
                        }
                    )
            for s in slides_of[pid]:
                n = len(tid)
                for g in GENES:
                    logits = 3.0 * drivers[s][g] + rng.normal(0, 0.4, n)
                    att_rows.append((s, pid, k, g, logits, 2.0 * drivers[s][g] + 1 + rng.normal(0, 0.2, n)))
    # attention: softmax within the bag (both slides of a two-slide patient), per gene
    att_tables = []
    for pid in patients:
        for g in GENES:
            parts = [r for r in att_rows if r[1] == pid and r[3] == g]
            logit = np.concatenate([r[4] for r in parts])
            a = np.exp(logit - logit.max())
            a /= a.sum()
            off = 0
            for s, _, k, _, lg, tp in parts:
                n = len(lg)
                att_tables.append(
                    {
                        "model": ["mil"] * n,
                        "fold": np.full(n, k, np.int32),
                        "bag_id": [pid] * n,
                        "slide_id": [s] * n,
                        "tile_id": tid,
                        "x": x0,
                        "y": y0,
                        "gene": [g] * n,
                        "attention": a[off : off + n].astype(np.float32),
                        "attention_logit": lg.astype(np.float32),
                        "tile_pred": tp.astype(np.float32),
                    }
                )
                off += n
    att = pa.concat_tables([pa.table(t) for t in att_tables])
    write_table_atomic(att, run / "attention.parquet")
    preds = pa.Table.from_pylist(pred_rows)
    write_table_atomic(preds, run / "predictions.parquet")
    pdf = preds.to_pandas()
    metric_rows = []
    for (m, g), d in pdf.groupby(["model", "gene"]):
        base = float(np.mean(Y[:, GENES.index(g)]))
        row = _metrics_rows(m, g, -1, d["y_true"].to_numpy(), d["y_pred"].to_numpy(), base)
        row["fdr"] = row["pearson_p"] * len(GENES) if np.isfinite(row["pearson_p"]) else np.nan
        row["well_predicted"] = bool(
            row["pearson_r"] > 0 and row["fdr"] < 0.05 and row["rmse"] < row["rmse_baseline"]
        )
        metric_rows.append(row)
        for k, dk in d.groupby("fold"):
            r = _metrics_rows(m, g, int(k), dk["y_true"].to_numpy(), dk["y_pred"].to_numpy(), base)
            r["fdr"], r["well_predicted"] = None, None
            metric_rows.append(r)
    write_table_atomic(pa.Table.from_pylist(metric_rows), run / "metrics.parquet")
    write_table_atomic(
        pa.Table.from_pylist(
            [
                {
                    "model_a": "mil",
                    "model_b": "lgbm",
                    "metric": "pearson_r",
                    "n_genes": 3,
                    "median_diff": 0.1,
                    "ci_low": -0.05,
                    "ci_high": 0.3,
                    "wilcoxon_stat": 1.0,
                    "wilcoxon_p": 0.5,
                }
            ]
        ),
        run / "comparisons.parquet",
    )
    truth = [
        {"slide_id": s, "tile_id": int(t), "gene": g, "driver_frac": float(drivers[s][g][t])}
        for s in slides
        for g in GENES
        for t in tid
    ]
    write_table_atomic(pa.Table.from_pylist(truth), run / "truth_tiles.parquet")
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().bar(["mil", "lgbm"], [0.9, 0.7])
    fig.savefig(run / "plots" / "median_r.png")
    config = {
        "store": str(store),
        "targets": "expr",
        "encoder": ENCODER,
        "tiling": TILING,
        "by": "patient",
        "models": ["mil", "lgbm", "mean"],
        "model_params": {},
        "n_folds": N_FOLDS,
        "seed": seed,
        "genes": list(GENES),
        "transform": "log1p",
        "version": "test",
        "encoder_meta": {},
    }
    (run / "config.json").write_text(json.dumps(config))
    return ToyRun(store, run, slides, patients, slide_patient, drivers, y_true)


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ToyRun:
    """A store with 10 real .svs slides (9 patients) and a run directory; treat it as read-only."""
    return make_toy_run(tmp_path_factory.mktemp("explain toy"))
