"""A synthetic store with two encoders, a failed slide and targets, and a run with attention, metrics and
hotspots: what the SQL cookbook's recipes need."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slide2expr.contract import (
    ATTENTION_SCHEMA,
    EMBEDDINGS_DIR,
    PREDICTIONS_SCHEMA,
    SLIDES_SCHEMA,
    slide_path,
    write_table_atomic,
)
from tests._fakestore import ENCODER, make_fake_store

#: The encoder names the cookbook's recipes use (the fake encoder's files copied under each name).
ENCODERS = ("uni", "efficientnet-lite0")


@dataclass
class Cookbook:
    store: Path
    run: Path


def _run(fake, run: Path) -> None:
    rng = np.random.default_rng(2)
    patients = sorted({p for _, p in fake.slides})
    fold = {p: i % 3 for i, p in enumerate(patients)}
    write_table_atomic(
        pa.table({"bag_id": patients, "patient_id": patients, "fold": [np.int32(fold[p]) for p in patients]}),
        run / "folds.parquet",
    )
    preds = [
        {"model": m, "fold": fold[p], "bag_id": p, "patient_id": p, "gene": g, "y_true": fake.targets[p][g],
         "y_pred": fake.targets[p][g] + rng.normal(0, 0.3 if m == "mil" else 0.6)}
        for m in ("mil", "ridge") for p in patients for g in fake.genes
    ]  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(preds, schema=PREDICTIONS_SCHEMA), run / "predictions.parquet")
    metrics = [
        {"model": m, "gene": g, "fold": -1, "n": len(patients), "pearson_r": r, "fdr": 0.01 if r > 0.5 else 0.4,
         "rmse": 0.5, "rmse_baseline": 1.0, "well_predicted": r > 0.5}
        for m in ("mil", "ridge") for g, r in zip(fake.genes, rng.uniform(0.1, 0.9, len(fake.genes)), strict=True)
    ]  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(metrics), run / "metrics.parquet")
    rows = []
    for sid, pid in fake.slides:
        n = len(fake.embeddings[sid])
        for g in fake.genes:
            logit = rng.normal(size=n).astype(np.float32)
            att = np.exp(logit) / np.exp(logit).sum()
            rows.append({"model": ["mil"] * n, "fold": np.full(n, fold[pid], np.int32), "bag_id": [pid] * n,
                         "slide_id": [sid] * n, "tile_id": np.arange(n, dtype=np.int32),
                         "x": (np.arange(n) % 8) * 448, "y": (np.arange(n) // 8) * 448, "gene": [g] * n,
                         "attention": att.astype(np.float32), "attention_logit": logit,
                         "tile_pred": rng.normal(size=n).astype(np.float32)})  # fmt: skip
    att = pa.concat_tables(pa.table(r, schema=ATTENTION_SCHEMA) for r in rows)
    write_table_atomic(att, run / "attention.parquet")
    hot = [
        {"model": "mil", "score": "attention", "gene": g, "slide_id": sid, "hotspot_id": 1, "area_mm2": 0.2,
         "mean_score": 1.5, "bbox_x0": 0.0, "bbox_y0": 0.0, "bbox_x1": 3 * 448.0, "bbox_y1": 2 * 448.0}
        for sid, _ in fake.slides[:4] for g in fake.genes
    ]  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(hot), run / "explain" / "hotspots.parquet")


@pytest.fixture(scope="session")
def cookbook(tmp_path_factory) -> Cookbook:
    root = tmp_path_factory.mktemp("cookbook")
    fake = make_fake_store(root / "store")
    emb = root / "store" / EMBEDDINGS_DIR / fake.tiling
    for name in ENCODERS:
        shutil.copytree(emb / ENCODER, emb / name)
    shutil.rmtree(emb / ENCODER)
    # a patient whose only slide failed: expression but nothing to train on
    sid = "TCGA-FK-0002-01Z-00-DX1"
    row = pq.read_table(slide_path(root / "store", sid)).to_pylist()[0]
    row.update(status="failed", error="OpenSlideError: Unsupported or missing image file", n_tiles=0)
    write_table_atomic(pa.Table.from_pylist([row], schema=SLIDES_SCHEMA), slide_path(root / "store", sid))
    _run(fake, root / "run")
    return Cookbook(store=root / "store", run=root / "run")
