"""The run writer: a comparison's tables, config, fold models and plot into a run directory, in the contract's
layout and schemas (:class:`~slide2expr.contract.RunLayout`)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa

from slide2expr.contract import (
    COMPARISONS_SCHEMA,
    FOLDS_SCHEMA,
    METRICS_SCHEMA,
    PREDICTIONS_SCHEMA,
    RunLayout,
    write_bytes_atomic,
    write_table_atomic,
)

#: The comparison plot under ``RUN/plots/``.
COMPARE_PLOT = "compare_pearson.png"
#: Resolution of the written plots.
PLOT_DPI = 110


def save_fold_model(layout: RunLayout, model: str, fold: int, estimator) -> None:
    """Write ``models/<model>/fold<k>.joblib``."""
    import joblib

    path = layout.model(model, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, path)


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
    write_table_atomic(attention, layout.attention, compression="zstd")
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
