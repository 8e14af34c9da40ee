"""Comparison plots (matplotlib figures, no pyplot state)."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The gene-by-gene panel shows at most this many genes: those of highest pooled r of the first model.
MAX_PLOT_GENES = 40


def plot_compare_pearson(metrics: pd.DataFrame, *, models: list[str]):
    """Gene-by-gene pooled Pearson r of every model (left) and each model against the first (right).

    Genes are ordered by the first model's r; well-predicted genes are filled markers, the others hollow. With more
    than :data:`MAX_PLOT_GENES` genes the left panel shows the :data:`MAX_PLOT_GENES` of highest r of the first
    model (its title says so; ``metrics.parquet`` holds every gene) and the right panel every gene, so the figure's
    size does not grow with the number of genes. Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    pooled = metrics[metrics["fold"] == -1]
    r = pooled.pivot(index="gene", columns="model", values="pearson_r")
    well = pooled.pivot(index="gene", columns="model", values="well_predicted").fillna(False).astype(bool)
    ref = models[0]
    order = r[ref].sort_values(ascending=False, na_position="last").index
    n_all = len(order)
    r_all = r.loc[order]
    order = order[:MAX_PLOT_GENES]
    n_well = well.sum(axis=0)
    r, well = r.loc[order], well.loc[order]
    fig = Figure(figsize=(max(8.0, 0.28 * len(order) + 5.0), 4.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 1.3])
    x = np.arange(len(order))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for m in models:
        vals = r[m].to_numpy(dtype=float)
        filled = well[m].to_numpy()
        ax.scatter(
            x[filled], vals[filled], color=colors[m], s=26, label=f"{m} ({int(n_well[m])} well predicted)"
        )
        ax.scatter(x[~filled], vals[~filled], facecolors="none", edgecolors=colors[m], s=26)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xticks(x, order, rotation=90, fontsize=7)
    ax.set_ylabel("pooled held-out Pearson r")
    shown = f"top {len(order)} of {n_all} genes by {ref} r" if len(order) < n_all else f"genes by {ref} r"
    ax.set_title(f"{shown}; filled: well predicted (r>0, FDR<0.05, RMSE<mean)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    others = [m for m in models[1:] if m != "mean"]
    for m in others:
        ax2.scatter(r_all[m], r_all[ref], color=colors[m], s=14 if n_all <= MAX_PLOT_GENES else 4, label=m)
    values = r_all.to_numpy(dtype=float)
    lo = np.nanmin(values) if np.isfinite(values).any() else -1.0
    lo = min(lo, 0.0) - 0.05
    ax2.plot([lo, 1], [lo, 1], color="0.5", lw=0.8, ls="--")
    ax2.set_xlim(lo, 1)
    ax2.set_ylim(lo, 1)
    ax2.set_xlabel("baseline r")
    ax2.set_ylabel(f"{ref} r")
    ax2.set_title(f"all {n_all} genes; above the diagonal: {ref} better", fontsize=9)
    if others:
        ax2.legend(fontsize=7)
    return fig
