"""SHAP for the tree baselines: global importance of pooled features, and tile-level values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from slide2expr.explain._inputs import (
    ExplainError,
    Run,
    fold_models,
    load_run,
    read_embeddings,
    read_tiles,
    slide_bag_ids,
)

if TYPE_CHECKING:
    from slide2expr.regress import PooledParts

#: Where the regressors that ``shap.TreeExplainer`` explains are defined (a model is a tree model when all of its
#: per-gene regressors come from one of these).
_TREE_MODULES = ("lightgbm", "xgboost", "catboost", "sklearn.ensemble", "sklearn.tree")
#: Columns of :attr:`ShapResult.tiles`, in order.
TILE_COLUMNS = (
    "model",
    "gene",
    "fold",
    "slide_id",
    "tile_id",
    "x",
    "y",
    "shap_value",
    "pred",
    "top_feature",
    "top_feature_shap",
)


@dataclass
class ShapResult:
    """SHAP values of a tree baseline.

    Attributes
    ----------
    global_importance
        One row per gene and pooled feature: ``model, gene, feature, mean_abs_shap, rank`` (1 = most important),
        over the held-out bags of every fold (each bag explained by the model of the fold that held it out).
    tiles
        One row per gene and tile: ``model, gene, fold, slide_id, tile_id, x, y, shap_value, pred,
        top_feature, top_feature_shap``. A tile is explained as a bag of one tile through the pooler;
        ``shap_value`` is the sum of its SHAP values (the single-tile prediction ``pred`` minus the explainer's
        expected value), ``top_feature`` the pooled feature with the largest absolute SHAP value.
    values, features
        gene → ``(n_bags, n_features)`` SHAP values and pooled feature values of the held-out bags (for plots).
    feature_names
        ``(n_features,)`` names from the pooler's ``get_feature_names_out()``.
    """

    model: str
    global_importance: pd.DataFrame
    tiles: pd.DataFrame
    values: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    base_values: dict[str, np.ndarray] = field(default_factory=dict)
    feature_names: tuple[str, ...] = ()


def _tree_parts(est, *, path: str, n_genes: int) -> PooledParts:
    """The pooled features and per-gene tree regressors of a fitted ``BagPooler → … → per-gene regressor`` model."""
    from slide2expr import regress

    try:
        parts = regress.pooled_parts(est)
    except TypeError as exc:
        raise ExplainError(
            f"{path}: expected a scikit-learn Pipeline (pooler → regressor), got {type(est).__name__}"
        ) from exc
    if len(parts.regressors) != n_genes:
        raise ExplainError(
            f"{path}: the last step has {len(parts.regressors)} fitted regressors but the run has {n_genes} genes"
        )
    for r in parts.regressors:
        if not type(r).__module__.startswith(_TREE_MODULES):
            raise ExplainError(
                f"{path}: {type(r).__name__} is not a tree model; SHAP's TreeExplainer explains LightGBM, XGBoost "
                "and scikit-learn tree ensembles (use it on the 'lgbm' model)"
            )
    return parts


def tree_fits(run: Run, *, models=None) -> dict[str, dict[int, object]]:
    """Model → its fitted fold estimators, for the models (default all of the run's) that end in tree regressors."""
    out = {}
    for m in run.models:
        if models is not None and m not in models:
            continue
        try:
            fitted = fold_models(run, m)
            first = min(fitted)
            _tree_parts(fitted[first], path=str(run.layout.model(m, first)), n_genes=len(run.genes))
        except ExplainError:
            continue
        out[m] = fitted
    return out


def tree_models(run: str | os.PathLike | Run) -> list[str]:
    """Models of the run whose fitted pipelines end in tree regressors (explainable with TreeExplainer)."""
    return list(tree_fits(load_run(run)))


def check_genes(run: Run, genes) -> list[str]:
    """``genes`` (default all of the run's) as a list; :class:`ExplainError` for a gene the run does not have."""
    genes = list(run.genes if genes is None else genes)
    unknown = [g for g in genes if g not in run.genes]
    if unknown:
        raise ExplainError(f"genes {unknown} are not in the run (it has {list(run.genes)})")
    return genes


def shap_tree(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    model: str = "lgbm",
    genes=None,
    slides=None,
) -> ShapResult:
    """Explain a tree baseline with ``shap.TreeExplainer``, globally and per tile.

    Each fold's model explains the bags that fold held out (so values are out-of-sample), gene by gene.

    Parameters
    ----------
    run
        Run directory with ``models/<model>/fold<k>.joblib`` and ``folds.parquet``.
    store
        The store the run was trained on (embeddings).
    model
        A tree-baseline model name of the run.
    genes
        Genes to explain (default all of the run's).
    slides
        Slides to explain per tile (default every slide of the held-out bags).

    Returns
    -------
    ShapResult
    """
    run = load_run(run)
    genes = check_genes(run, genes)
    return explain_folds(
        run, store=store, model=model, fitted=fold_models(run, model), genes=genes, slides=slides
    )


def _held_out_slides(run: Run, store, slides) -> tuple[dict[str, list[str]], set[str] | None]:
    """(bag id → its ok slides, the slides to explain per tile or None for all)."""
    bag_of = slide_bag_ids(run, store)
    slides_of: dict[str, list[str]] = {}
    for sid, bag in sorted(bag_of.items()):
        slides_of.setdefault(bag, []).append(sid)
    wanted = None if slides is None else set(slides)
    if wanted is not None:
        missing = wanted - set(bag_of)
        if missing:
            raise ExplainError(f"slides {sorted(missing)} are not ok slides of the store {store}")
    return slides_of, wanted


def _tile_frames(svt, base, meta, *, model: str, gene: str, fold: int, names) -> list[pd.DataFrame]:
    """Rows of :attr:`ShapResult.tiles` from single-tile SHAP values ``svt`` (tiles of ``meta``'s slides in order)."""
    total = svt.sum(axis=1)
    pred = base + total
    top = np.abs(svt).argmax(axis=1)
    frames, k = [], 0
    for s, tid in meta:
        n = len(tid)
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "gene": gene,
                    "fold": np.int32(fold),
                    "slide_id": s,
                    "tile_id": tid,
                    "shap_value": total[k : k + n],
                    "pred": pred[k : k + n],
                    "top_feature": np.asarray(names, dtype=object)[top[k : k + n]],
                    "top_feature_shap": svt[np.arange(k, k + n), top[k : k + n]],
                }
            )
        )
        k += n
    return frames


def explain_folds(
    run: Run, *, store, model: str, fitted: dict[int, object], genes: list[str], slides=None
) -> ShapResult:
    """:func:`shap_tree` on the already loaded fold estimators ``fitted`` of ``model``."""
    import shap

    gi = {g: run.genes.index(g) for g in genes}
    folds = run.table("folds")
    slides_of, wanted = _held_out_slides(run, store, slides)
    vals: dict[str, list] = {g: [] for g in genes}
    feats: dict[str, list] = {g: [] for g in genes}
    bases: dict[str, list] = {g: [] for g in genes}
    tile_rows = []
    names: tuple[str, ...] = ()
    emb_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def emb(sid: str):
        if sid not in emb_cache:
            emb_cache[sid] = read_embeddings(store, run.tiling, run.encoder, sid)
        return emb_cache[sid]

    for fold, est in sorted(fitted.items()):
        parts = _tree_parts(est, path=str(run.layout.model(model, fold)), n_genes=len(run.genes))
        names = parts.feature_names
        held = [b for b in folds.loc[folds["fold"] == fold, "bag_id"] if b in slides_of]
        if not held:
            continue
        X = parts.features([np.concatenate([emb(s)[1] for s in slides_of[b]]) for b in held])
        tile_slides = [s for b in held for s in slides_of[b] if wanted is None or s in wanted]
        single = [tile[None] for s in tile_slides for tile in emb(s)[1]]
        meta = [(s, emb(s)[0]) for s in tile_slides]
        Xt = parts.features(single) if single else None
        for g in genes:
            explainer = shap.TreeExplainer(parts.regressors[gi[g]])
            vals[g].append(np.asarray(explainer.shap_values(X)))
            feats[g].append(X)
            # shap_values sets expected_value: read it after each call, for the rows of that call
            bases[g].append(np.broadcast_to(np.ravel(explainer.expected_value)[0], (len(X),)))
            if Xt is not None:
                svt = np.asarray(explainer.shap_values(Xt))
                base = np.ravel(explainer.expected_value)[0]
                tile_rows += _tile_frames(svt, base, meta, model=model, gene=g, fold=fold, names=names)
    if not any(vals[g] for g in genes):
        raise ExplainError(f"no held-out bag of {run.layout.folds} has embeddings in the store {store}")
    values = {g: np.concatenate(vals[g]) for g in genes}
    tiles = pd.concat(tile_rows, ignore_index=True) if tile_rows else pd.DataFrame()
    return ShapResult(
        model=model,
        global_importance=_global_importance(values, names, model=model),
        tiles=_with_xy(tiles, store=store, tiling=run.tiling),
        values=values,
        features={g: np.concatenate(feats[g]) for g in genes},
        base_values={g: np.concatenate(bases[g]) for g in genes},
        feature_names=names,
    )


def _global_importance(values: dict[str, np.ndarray], names, *, model: str) -> pd.DataFrame:
    """Mean |SHAP| per gene and feature over the held-out bags, ranked (1 = most important)."""
    rows = []
    for g, v in values.items():
        imp = np.abs(v).mean(axis=0)
        order = np.argsort(-imp, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(1, len(order) + 1)
        rows.append(
            pd.DataFrame(
                {"model": model, "gene": g, "feature": list(names), "mean_abs_shap": imp, "rank": rank}
            )
        )
    return pd.concat(rows, ignore_index=True)


def _with_xy(tiles: pd.DataFrame, *, store, tiling: str) -> pd.DataFrame:
    """The tile SHAP rows with each tile's level-0 ``x, y`` from the store's tile grids, in :attr:`ShapResult.tiles`
    column order."""
    if tiles.empty:
        return tiles
    xy = [
        read_tiles(store, tiling, sid)[["slide_id", "tile_id", "x", "y"]]
        for sid in tiles["slide_id"].unique()
    ]
    tiles = tiles.merge(pd.concat(xy), on=["slide_id", "tile_id"], how="left")
    return tiles[list(TILE_COLUMNS)]


def plot_shap_summary(result: ShapResult, *, gene: str, max_display: int = 12) -> Figure:
    """SHAP beeswarm summary of the pooled features for ``gene`` (held-out bags, one dot per bag)."""
    import shap

    if gene not in result.values:
        raise ExplainError(f"gene {gene!r} was not explained (have {sorted(result.values)})")
    exp = shap.Explanation(
        values=result.values[gene],
        base_values=result.base_values[gene],
        data=result.features[gene],
        feature_names=list(result.feature_names),
    )
    fig = Figure(figsize=(7.0, 0.35 * max_display + 1.6), layout="constrained")
    ax = fig.add_subplot()
    shap.plots.beeswarm(exp, max_display=max_display, ax=ax, show=False, plot_size=None)
    ax.set_title(f"{gene} ({result.model}): SHAP values of pooled features, held-out bags", fontsize=9)
    return fig


def plot_shap_importance(result: ShapResult, *, top: int = 10) -> Figure:
    """Mean |SHAP| of the top pooled features, one panel per gene."""
    genes = list(result.values)
    n = len(genes)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(3.6 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    gi = result.global_importance
    for ax, g in zip(axes, genes, strict=False):
        d = gi[gi["gene"] == g].nsmallest(top, "rank")[::-1]
        ax.barh(d["feature"], d["mean_abs_shap"], color="tab:blue")
        ax.set_title(g, fontsize=9)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("mean |SHAP|", fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{result.model}: global importance of pooled feature dimensions", fontsize=10)
    return fig
