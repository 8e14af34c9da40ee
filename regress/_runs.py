"""The run writer: a comparison's tables, config, fold models and plot into a run directory, in the contract's
layout and schemas (:class:`~slide2expr.contract.RunLayout`), and the partial run that lets an interrupted compare
resume its finished model × fold fits (:class:`PartialRun`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr.contract import (
    ATTENTION_ROW_GROUP_ROWS,
    COMPARISONS_SCHEMA,
    FOLDS_SCHEMA,
    METRICS_SCHEMA,
    PREDICTIONS_SCHEMA,
    Cohort,
    OutputExistsError,
    RunLayout,
    package_version,
    read_metadata,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.regress._harness import CompareInterrupted, fit_keys, jsonable, plan_targets

#: The comparison plot under ``RUN/plots/``.
COMPARE_PLOT = "compare_pearson.png"
#: Resolution of the written plots.
PLOT_DPI = 110


#: Rows of the features a run's fingerprint hashes (evenly spaced), besides the bag layout and targets.
FINGERPRINT_ROWS = 4096


def save_fold_model(layout: RunLayout, model: str, fold: int, estimator) -> None:
    """Write ``models/<model>/fold<k>.joblib`` atomically (a hidden temporary file renamed into place)."""
    import joblib

    path = layout.model(model, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        joblib.dump(estimator, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run_settings(cohort: Cohort, plan, *, save_models: bool) -> dict:
    """What a compare's outputs depend on, as JSON, with its ``fingerprint`` (sha256 of it): the models and their
    parameters, folds, seed, genes and their per-fold choice, whether models are saved, the package version, and
    the cohort (encoder, tiling, weights, bag ids, folds, and a hash of the targets, the bags' tile counts and an
    even sample of :data:`FINGERPRINT_ROWS` feature rows)."""
    h = hashlib.sha256()
    y = np.ascontiguousarray(plan_targets(cohort, plan))
    step = max(1, len(cohort.features) // FINGERPRINT_ROWS)
    for arr in (y, np.asarray(cohort.offsets), np.ascontiguousarray(cohort.features[::step])):
        h.update(arr.tobytes())
    settings = {
        "models": list(plan.models),
        "model_params": jsonable(plan.model_params),
        "n_folds": plan.n_folds,
        "seed": plan.seed,
        "genes": list(plan.genes),
        "fold_genes": [np.asarray(c).tolist() for c in plan.fold_genes],
        "save_models": bool(save_models),
        "version": package_version(),
        "cohort": {
            "encoder": cohort.encoder,
            "tiling": cohort.tiling,
            "by": cohort.by,
            "weights_sha256": cohort.meta.get("weights_sha256"),
            "bags": list(map(str, plan.bag_ids)),
            "folds": np.asarray(plan.folds).tolist(),
            "data_sha256": h.hexdigest(),
        },
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, "settings": settings}


class PartialRun:
    """A compare run's finished model × fold outputs under ``RUN/partial/``, written atomically as each finishes.

    ``settings.json`` holds the run's settings and their fingerprint (:func:`run_settings`); each finished fit
    writes ``<model>/fold<k>.attention.parquet`` (attention models) and then ``<model>/fold<k>.predictions.parquet``
    (its held-out predictions with the training mean, the fitting time in its metadata), which marks it done; a
    model's null fits are kept the same way under ``<model>.null/`` (:func:`~slide2expr.regress._harness.null_key`). A
    rerun with the same settings loads those instead of fitting again; :meth:`remove` deletes the folder once the
    run directory is written.
    """

    def __init__(self, layout: RunLayout, record: dict) -> None:
        self.layout, self.record = layout, record
        self.loaded = 0
        self.saved = 0

    @staticmethod
    def read(out) -> dict | None:
        """The ``settings.json`` of the partial run in ``out``, or None when there is none (or it is unreadable)."""
        try:
            record = json.loads(RunLayout(out).partial_settings.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "fingerprint" in record else None

    @classmethod
    def start(cls, layout: RunLayout, record: dict) -> PartialRun:
        """Write ``settings.json`` unless the partial run is there already (a resume)."""
        if cls.read(layout.root) is None:
            write_bytes_atomic(layout.partial_settings, json.dumps(record, indent=1).encode())
        return cls(layout, record)

    def finished(self, models, n_folds: int) -> list[tuple[str, int]]:
        """The (model, fold) fits whose outputs are written."""
        return [(m, k) for m in models for k in range(n_folds) if self.layout.partial_fold(m, k).is_file()]

    def load(self, model: str, fold: int) -> tuple[pd.DataFrame, pa.Table | None, float] | None:
        """``(predictions, attention or None, seconds)`` of a finished fit, or None."""
        path = self.layout.partial_fold(model, fold)
        if not path.is_file():
            return None
        pred = pq.read_table(path).to_pandas()
        att_path = self.layout.partial_fold(model, fold, "attention")
        attention = pq.read_table(att_path).replace_schema_metadata(None) if att_path.is_file() else None
        self.loaded += 1
        return pred, attention, float(read_metadata(path).get("seconds", 0.0))

    def save(self, model: str, fold: int, pred: pd.DataFrame, attention: pa.Table | None, seconds: float):
        """Write one finished fit's outputs (attention first, predictions last)."""
        if attention is not None:
            write_table_atomic(
                attention, self.layout.partial_fold(model, fold, "attention"), compression="zstd"
            )
        table = pa.Table.from_pandas(pred, preserve_index=False)
        write_table_atomic(
            table.replace_schema_metadata(None),
            self.layout.partial_fold(model, fold),
            metadata={"kind": "partial", "seconds": float(seconds)},
        )
        self.saved += 1

    def remove(self) -> None:
        """Delete ``partial/`` (the run directory is complete)."""
        shutil.rmtree(self.layout.partial, ignore_errors=True)


def interrupted_run(out) -> CompareInterrupted:
    """The :class:`CompareInterrupted` of a compare stopped by Ctrl-C, counting the fits finished in ``out``."""
    record = None if out is None else PartialRun.read(out)
    if record is None:
        return CompareInterrupted(0, None, None if out is None else Path(out))
    keys, n_folds = fit_keys(record["settings"]["models"]), record["settings"]["n_folds"]
    done = PartialRun(RunLayout(out), record).finished(keys, n_folds)
    return CompareInterrupted(len(done), len(keys) * n_folds, Path(out))


def check_resume(out, record: dict) -> None:
    """:class:`OutputExistsError` when ``out`` holds a partial compare run with other settings than ``record``'s,
    naming what differs."""
    found = PartialRun.read(out)
    if found is None or found["fingerprint"] == record["fingerprint"]:
        return
    old, new = found.get("settings", {}), record["settings"]
    words = {"fold_genes": "genes per fold", "cohort": "the cohort (bags, folds, targets or features)"}
    differ = [words.get(k, k) for k in new if old.get(k) != new[k]]
    raise OutputExistsError(
        f"out {out} holds an interrupted compare run with other settings ({', '.join(differ)} differ): rerun it "
        "with the same settings to resume its finished folds, choose another out, or restart it with overwrite "
        "(--overwrite)"
    )


def write_run(
    layout: RunLayout,
    *,
    config: dict,
    folds: pd.DataFrame,
    predictions: pd.DataFrame,
    metrics: pd.DataFrame,
    comparisons: pd.DataFrame,
    attention: pa.Table,
    models: list[str],
) -> None:
    """Write ``config.json``, ``folds``, ``predictions``, ``metrics``, ``comparisons`` and ``attention`` (Parquet,
    each atomically) and ``plots/compare_pearson.png``."""
    from slide2expr.regress._plots import plot_compare_pearson

    write_bytes_atomic(layout.config, json.dumps(config, indent=2).encode())
    write_table_atomic(as_table(folds, FOLDS_SCHEMA), layout.folds)
    write_table_atomic(as_table(predictions, PREDICTIONS_SCHEMA), layout.predictions, compression="zstd")
    write_table_atomic(as_table(metrics, METRICS_SCHEMA), layout.metrics)
    write_table_atomic(as_table(comparisons, COMPARISONS_SCHEMA), layout.comparisons)
    write_table_atomic(
        attention, layout.attention, compression="zstd", row_group_size=ATTENTION_ROW_GROUP_ROWS
    )
    fig = plot_compare_pearson(metrics, models=models)
    layout.plots.mkdir(exist_ok=True)
    fig.savefig(layout.plots / COMPARE_PLOT, dpi=PLOT_DPI)


def as_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """The columns of ``schema`` from ``df`` as an Arrow table of exactly that schema.

    >>> as_table(pd.DataFrame({"fold": [0], "bag_id": ["b"], "patient_id": ["p"]}), FOLDS_SCHEMA).schema.names
    ['bag_id', 'patient_id', 'fold']
    """
    return pa.table(
        {
            f.name: pa.array(
                df[f.name].to_numpy(
                    dtype=object if pa.types.is_string(f.type) or pa.types.is_boolean(f.type) else None
                ),
                type=f.type,
                from_pandas=True,
            )
            for f in schema
        },
        schema=schema,
    )
