"""The targets sets of a store (read side): what ``targets/<name>.parquet`` files hold.

Importing targets (matrices, GDC STAR-counts) is ``slide2expr.regress.import_targets``.
"""

from __future__ import annotations

import os

import pandas as pd

from slide2expr.contract import TARGETS_DIR, read_metadata, read_parquet_table, store_path

#: The columns of :func:`list_targets`.
LIST_COLUMNS = ("name", "samples", "patients", "genes", "transform")


def list_targets(store: str | os.PathLike) -> pd.DataFrame:
    """One row per targets set: name, samples, patients, genes, transform (from the files' footers and data)."""
    rows = []
    for p in sorted((store_path(store) / TARGETS_DIR).glob("*.parquet")):
        if p.name.startswith("."):
            continue
        t = read_parquet_table(p, columns=["sample_id", "patient_id", "gene"])
        rows.append(
            {
                "name": p.stem,
                "samples": len(set(t["sample_id"].to_pylist())),
                "patients": len(set(t["patient_id"].to_pylist())),
                "genes": len(set(t["gene"].to_pylist())),
                "transform": read_metadata(p).get("transform", "?"),
            }
        )
    return pd.DataFrame(rows, columns=list(LIST_COLUMNS))
