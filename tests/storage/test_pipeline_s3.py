"""The whole pipeline on an ``s3://`` store of the S3 server process (``tests/_s3server.py``) against a local folder:
featurize → targets import → compare → explain. The store's files, the comparison's summary and metrics equal the
local run's; explain draws its maps from the object store. Featurize and targets import on the bucket go through
the command line (``--store s3://…``), the rest through the library."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from slide2expr.contract import StoreError, read_parquet_table, store_path
from slide2expr.featurize import FeaturizeOptions, featurize_cohort
from slide2expr.synth import GENES, gene_kind, make_cohort

pytestmark = pytest.mark.slow

FAST = {
    "encoder": "stain-texture",
    "mpp": 1.0,
    "tile_px": 112,
    "input_px": 112,
    "workers": 0,
    "batch_size": 8,
}
MIL = {"max_epochs": 3, "device": "cpu", "hidden_dim": 16, "attention_dim": 8, "nested": False}
#: two hotspot genes, one compartment gene and one negative control
GENES_COMPARED = [g for g in GENES if gene_kind(g) == "hotspot"][:2] + [
    next(g for g in GENES if gene_kind(g) == "compartment"),
    next(g for g in GENES if gene_kind(g) == "noise"),
]
#: columns that time a fit: the only ones allowed to differ between the two runs
TIMES = ["fit_seconds"]


def _cli(*args: str) -> None:
    from slide2expr.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output


def _compare(store, run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        cohort = sql.load_cohort(store, encoder=FAST["encoder"], targets="expr", genes=GENES_COMPARED)
    return regress.compare(
        cohort, models=("mil", "ridge"), n_folds=2, seed=0, out=run, store=store, targets="expr",
        model_params={"mil": MIL}, progress=False,
    )  # fmt: skip


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pipeline_on_s3_equals_the_local_folder(s3_env, tmp_path):
    import torch

    torch.set_num_threads(1)
    cohort = tmp_path / "cohort"
    make_cohort(cohort, n_patients=6, seed=0, size=(1500, 2000))
    local, remote = tmp_path / "store", f"{s3_env}/store"

    featurize_cohort(cohort / "slides.csv", store=local, options=FeaturizeOptions(**FAST), progress=False)
    _cli("featurize", cohort / "slides.csv", "--store", remote, "--encoder", FAST["encoder"], "--mpp", "1",
         "--tile-px", "112", "--input-px", "112", "--workers", "0", "--batch-size", "8", "--no-progress")  # fmt: skip
    regress.import_targets(cohort / "expression.csv", store=local, name="expr", transform="log1p")
    _cli("targets", "import", cohort / "expression.csv", "--store", remote, "--name", "expr")

    # the same files: embeddings, tile grids, QC images and targets byte for byte; slide rows up to their timings
    on_s3, on_disk = _files(store_path(remote)), _files(local)
    assert sorted(on_s3) == sorted(on_disk) and any(k.startswith("embeddings/") for k in on_s3)
    for name, data in on_disk.items():
        if name.startswith("slides/"):
            a, b = (read_parquet_table(r / name).to_pandas() for r in (local, store_path(remote)))
            timed = ["seconds_read", "seconds_total", "featurized_at"]
            pd.testing.assert_frame_equal(a.drop(columns=timed), b.drop(columns=timed))
        else:
            assert on_s3[name] == data, name

    res_local, res_s3 = _compare(local, tmp_path / "run_local"), _compare(remote, tmp_path / "run_s3")
    pd.testing.assert_frame_equal(res_local.summary.drop(columns=TIMES), res_s3.summary.drop(columns=TIMES))
    for table in ("metrics", "predictions"):
        a, b = (pq.read_table(tmp_path / r / f"{table}.parquet").to_pandas() for r in ("run_local", "run_s3"))
        pd.testing.assert_frame_equal(a, b, obj=table)

    # the command reads an s3:// store whole (a cohort read on access needs local files) and records the URI
    _cli("compare", "--store", remote, "--targets", "expr", "--encoder", FAST["encoder"], "--models", "ridge",
         "--n-folds", "2", "--genes", ",".join(GENES_COMPARED), "--out", tmp_path / "run_cli")  # fmt: skip
    assert json.loads((tmp_path / "run_cli" / "config.json").read_text())["store"] == remote
    with pytest.raises(StoreError, match="local files only"):
        sql.lazy_cohort(remote, encoder=FAST["encoder"])

    from slide2expr import explain

    exr = explain.explain_run(tmp_path / "run_s3", store=remote, genes=GENES_COMPARED[:1], report=False)
    heatmaps = exr.figures.get("heatmaps") or []
    assert heatmaps and all(png.stat().st_size > 1000 for _, png in heatmaps)
    assert exr.detections and all(p.stat().st_size > 0 for p in exr.detections)
