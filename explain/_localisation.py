"""Localisation against known truth: do high tile scores fall on the planted driver tiles?"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from slide2expr.explain._inputs import ExplainError, Run, load_run

LOCALISATION_COLUMNS = ("model", "gene", "score", "auroc", "n_pos", "n_neg", "auroc_slide_mean", "n_slides")
SCORE_COLUMNS = ("model", "score", "gene", "slide_id", "tile_id", "value")


def attention_scores(run: str | os.PathLike | Run, *, models=None, slides=None, genes=None) -> pd.DataFrame:
    """Tile scores of the run's MIL models in long form (:data:`SCORE_COLUMNS`), of the given models, slides and
    genes (each None: all); only their rows of the attention table are read.

    ``score`` is ``"attention"`` (attention × tiles in the bag, so 1 is uniform weight and values compare across
    bags of different sizes; rankings within a bag are those of the softmax attention) and ``"tile_pred"`` (the
    per-tile prediction, where the model has one).
    """
    run = load_run(run)
    if run.attention_index() is None:
        return pd.DataFrame({c: [] for c in SCORE_COLUMNS})
    att = run.attention_rows(models=models, slides=slides, genes=genes)
    if att.empty:
        return pd.DataFrame({c: [] for c in SCORE_COLUMNS})
    att = att.groupby(["model", "gene", "slide_id", "tile_id"], as_index=False, sort=False).agg(
        bag_id=("bag_id", "first"), attention=("attention", "mean"), tile_pred=("tile_pred", "mean")
    )
    n_in_bag = bag_sizes(run).reindex(pd.MultiIndex.from_frame(att[["model", "gene", "bag_id"]])).to_numpy()
    base = att[["model", "gene", "slide_id", "tile_id"]]
    parts = [base.assign(score="attention", value=att["attention"].to_numpy() * n_in_bag)]
    has_pred = att["tile_pred"].notna()
    if has_pred.any():
        parts.append(
            base[has_pred].assign(score="tile_pred", value=att.loc[has_pred, "tile_pred"].to_numpy())
        )
    return pd.concat(parts, ignore_index=True)[list(SCORE_COLUMNS)]


def bag_sizes(run: Run) -> pd.Series:
    """Tiles with attention per model, gene and bag (a bag's slides together), from the run's attention index."""
    return run.attention_index().groupby(["model", "gene", "bag_id"])["n_tiles"].sum()


def bag_tiles(run: Run, *, model: str, gene: str, bag_id: str) -> int:
    """Tiles of one bag with ``model``'s attention for ``gene`` (0 when none); a lookup in the run's attention
    index, without grouping it (called for every slide and gene a map is drawn of)."""
    i = run.attention_index()
    return int(i.loc[(i["model"] == model) & (i["gene"] == gene) & (i["bag_id"] == bag_id), "n_tiles"].sum())


def shap_scores(shap_tiles: pd.DataFrame) -> pd.DataFrame:
    """Tile SHAP values (``ShapResult.tiles``) in the long form of :data:`SCORE_COLUMNS` (score ``"shap"``)."""
    if shap_tiles is None or shap_tiles.empty:
        return pd.DataFrame({c: [] for c in SCORE_COLUMNS})
    return shap_tiles.assign(score="shap", value=shap_tiles["shap_value"])[list(SCORE_COLUMNS)]


def localisation_auroc(
    scores: pd.DataFrame,
    *,
    truth: pd.DataFrame,
    driver_threshold: float = 0.5,
) -> pd.DataFrame:
    """AUROC of tile scores against driver tiles, per model, score and gene.

    Parameters
    ----------
    scores
        Long-form tile scores with columns ``model, score, gene, slide_id, tile_id, value`` (see
        :func:`attention_scores`, :func:`shap_scores`).
    truth
        ``slide_id, tile_id, gene, driver_frac`` (``RUN/truth_tiles.parquet``); a tile is a driver of a gene when
        ``driver_frac >= driver_threshold``.

    Returns
    -------
    pandas.DataFrame
        One row per model, gene and score: ``auroc`` over all scored tiles with truth (null when a class is empty),
        ``n_pos``, ``n_neg``, and ``auroc_slide_mean`` (mean of per-slide AUROCs over the ``n_slides`` slides that
        have both classes). Genes without driver tiles (negative controls) get ``n_pos = 0`` and a null AUROC.
    """
    from sklearn.metrics import roc_auc_score

    need = {"slide_id", "tile_id", "gene", "driver_frac"}
    if not need <= set(truth.columns):
        raise ExplainError(f"truth needs columns {sorted(need)}, has {sorted(truth.columns)}")
    missing = set(SCORE_COLUMNS) - set(scores.columns)
    if missing:
        raise ExplainError(f"scores lacks columns {sorted(missing)}")
    t = truth[["slide_id", "tile_id", "gene", "driver_frac"]].copy()
    t["tile_id"] = t["tile_id"].astype(np.int64)
    s = scores.copy()
    s["tile_id"] = s["tile_id"].astype(np.int64)
    merged = s.merge(t, on=["slide_id", "tile_id", "gene"], how="inner")
    merged = merged[np.isfinite(merged["value"].to_numpy(dtype=np.float64))]
    rows = []
    for (model, score, gene), grp in merged.groupby(["model", "score", "gene"], sort=True):
        pos = (grp["driver_frac"].to_numpy() >= driver_threshold).astype(int)
        n_pos, n_neg = int(pos.sum()), int((1 - pos).sum())
        auroc = float(roc_auc_score(pos, grp["value"])) if n_pos and n_neg else np.nan
        per_slide = []
        for _, sg in grp.groupby("slide_id", sort=False):
            p = (sg["driver_frac"].to_numpy() >= driver_threshold).astype(int)
            if 0 < p.sum() < len(p):
                per_slide.append(roc_auc_score(p, sg["value"]))
        rows.append(
            {
                "model": model,
                "gene": gene,
                "score": score,
                "auroc": auroc,
                "n_pos": n_pos,
                "n_neg": n_neg,
                "auroc_slide_mean": float(np.mean(per_slide)) if per_slide else np.nan,
                "n_slides": len(per_slide),
            }
        )
    out = pd.DataFrame(rows, columns=list(LOCALISATION_COLUMNS))
    return out.astype({"n_pos": "int64", "n_neg": "int64", "n_slides": "int64"})


def plot_localisation(table: pd.DataFrame) -> Figure:
    """Grouped bars of localisation AUROC per gene, one bar per model × score; 0.5 (chance) marked."""
    d = table.dropna(subset=["auroc"])
    fig = Figure(figsize=(max(5.0, 0.9 * max(d["gene"].nunique(), 1) + 3), 3.4), layout="constrained")
    ax = fig.add_subplot()
    if d.empty:
        ax.text(0.5, 0.5, "no gene has driver tiles in the truth table", ha="center", va="center")
        ax.set_axis_off()
        return fig
    genes = sorted(d["gene"].unique())
    keys = sorted({(m, s) for m, s in zip(d["model"], d["score"], strict=True)})
    width = 0.8 / len(keys)
    for k, (m, s) in enumerate(keys):
        sub = d[(d["model"] == m) & (d["score"] == s)].set_index("gene").reindex(genes)
        ax.bar(
            np.arange(len(genes)) + (k - (len(keys) - 1) / 2) * width, sub["auroc"], width, label=f"{m}: {s}"
        )
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(np.arange(len(genes)), genes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC vs driver tiles")
    ax.set_title("Localisation: tile scores against planted driver tiles (driver_frac ≥ 0.5)", fontsize=9)
    ax.legend(fontsize=7, ncols=2, loc="lower right")
    return fig
