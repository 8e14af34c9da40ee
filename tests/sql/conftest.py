from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from slide2expr.contract import ATTENTION_SCHEMA, METRICS_SCHEMA, write_table_atomic


@pytest.fixture(scope="session")
def fake_run(fake_store, tmp_path_factory):
    """A run directory in the run-directory format (folds, predictions, attention) over the fake store's bags."""
    rng = np.random.default_rng(1)
    run = tmp_path_factory.mktemp("run 'dir'") / "run"
    patients = sorted({p for _, p in fake_store.slides})
    folds = pa.table(
        {"bag_id": patients, "patient_id": patients, "fold": np.arange(len(patients), dtype=np.int32) % 3}
    )
    write_table_atomic(folds, run / "folds.parquet")
    rows = []
    fold_of = dict(zip(patients, folds["fold"].to_pylist(), strict=True))
    for model in ("mil", "mil-embedding"):
        for sid, pid in sorted(fake_store.slides, key=lambda sp: (sp[1], sp[0])):
            n = len(fake_store.embeddings[sid])
            for gene in fake_store.genes:
                logits = rng.normal(size=n).astype(np.float32)
                att = np.exp(logits) / np.exp(logits).sum()
                for t in range(n):
                    rows.append(
                        {
                            "model": model,
                            "fold": fold_of[pid],
                            "bag_id": pid,
                            "slide_id": sid,
                            "tile_id": t,
                            "x": (t % 8) * 448,
                            "y": (t // 8) * 448,
                            "gene": gene,
                            "attention": float(att[t]),
                            "attention_logit": float(logits[t]),
                            "tile_pred": float(rng.normal()),
                        }
                    )
    write_table_atomic(pa.Table.from_pylist(rows, schema=ATTENTION_SCHEMA), run / "attention.parquet")
    preds = [
        {
            "model": "mil",
            "fold": fold_of[p],
            "bag_id": p,
            "patient_id": p,
            "gene": g,
            "y_true": fake_store.targets[p][g],
            "y_pred": fake_store.targets[p][g] + rng.normal(0, 0.1),
        }
        for p in patients
        for g in fake_store.genes
    ]
    write_table_atomic(pa.Table.from_pylist(preds), run / "predictions.parquet")
    metrics = []
    for model in ("mil", "lgbm", "mean"):
        for gene in fake_store.genes:
            for fold in (-1, 0, 1, 2):
                r = float(rng.uniform(-0.3, 0.9)) if model != "mean" else 0.0
                fdr = float(rng.uniform(0, 0.2)) if fold == -1 else None
                rmse, base = float(rng.uniform(0.5, 1.5)), 1.0
                if model != "mean" and gene == fake_store.genes[0] and fold == -1:  # one sure hit per model
                    r, fdr, rmse = 0.8, 0.01, 0.5
                metrics.append(
                    {
                        "model": model, "gene": gene, "fold": fold, "n": 12 if fold == -1 else 4,
                        "pearson_r": r, "pearson_p": float(rng.uniform(0, 1)), "spearman_rho": r * 0.9,
                        "spearman_p": float(rng.uniform(0, 1)), "r2": r * r - 0.1, "mae": rmse * 0.8,
                        "rmse": rmse, "rmse_baseline": base, "fdr": fdr,
                        "well_predicted": (r > 0 and fdr < 0.05 and rmse < base) if fold == -1 else None,
                    }
                )  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(metrics, schema=METRICS_SCHEMA), run / "metrics.parquet")
    return run
