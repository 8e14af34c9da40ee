"""SHAP for the tree baselines: global importance of pooled features, and tile-level values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from slide2expr.explain._io import ExplainError, Run, load_run, read_embeddings, read_tiles, slide_bag_ids

_TREE_MODULES = ("lightgbm", "xgboost", "catboost", "sklearn.ensemble", "sklearn.tree")


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


def _load_fold_models(run: Run, model: str) -> dict[int, object]:
    import joblib

    folder = run.path / "models" / model
    files = sorted(folder.glob("fold*.joblib"))
    if not files:
        raise ExplainError(
            f"no fitted models in {folder} (models/{model}/fold<k>.joblib): "
            f"run `slide2expr compare` with model {model!r}"
        )
    out = {}
    for f in files:
        try:
            out[int(f.stem[4:])] = joblib.load(f)
        except ValueError as exc:
            raise ExplainError(f"{f}: expected fold<k>.joblib with an integer k") from exc
    return out


def _split_pipeline(est, *, path: str, n_genes: int):
    """(pooler, per-gene tree regressors) of a ``Pipeline(BagPooler → per-gene regressor)``."""
    steps = getattr(est, "steps", None)
    if not steps or len(steps) < 2:
        raise ExplainError(
            f"{path}: expected a scikit-learn Pipeline (pooler → regressor), got {type(est).__name__}"
        )
    pre, last = est[:-1], est[-1]
    regs = list(getattr(last, "estimators_", None) or [last])
    if len(regs) != n_genes:
        raise ExplainError(
            f"{path}: the last step has {len(regs)} fitted regressors but the run has {n_genes} genes"
        )
    for r in regs:
        if not type(r).__module__.startswith(_TREE_MODULES):
            raise ExplainError(
                f"{path}: {type(r).__name__} is not a tree model; SHAP's TreeExplainer explains LightGBM, XGBoost "
                "and scikit-learn tree ensembles (use it on the 'lgbm' model)"
            )
    return pre, regs


def tree_models(run: str | os.PathLike | Run) -> list[str]:
    """Models of the run whose fitted pipelines end in tree regressors (explainable with TreeExplainer)."""
    import joblib

    run = load_run(run)
    out = []
    for m in run.models:
        files = sorted((run.path / "models" / m).glob("fold*.joblib"))
        if not files:
            continue
        try:
            _split_pipeline(joblib.load(files[0]), path=str(files[0]), n_genes=len(run.genes))
        except ExplainError:
            continue
        out.append(m)
    return out


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
    import shap

    run = load_run(run)
    genes = list(run.genes if genes is None else genes)
    unknown = [g for g in genes if g not in run.genes]
    if unknown:
        raise ExplainError(f"genes {unknown} are not in the run (it has {list(run.genes)})")
    gi = {g: run.genes.index(g) for g in genes}
    fitted = _load_fold_models(run, model)
    folds = run.table("folds")
    bag_of = slide_bag_ids(run, store)
    slides_of: dict[str, list[str]] = {}
    for sid, bag in sorted(bag_of.items()):
        slides_of.setdefault(bag, []).append(sid)
    wanted = None if slides is None else set(slides)
    if wanted is not None:
        missing = wanted - set(bag_of)
        if missing:
            raise ExplainError(f"slides {sorted(missing)} are not ok slides of the store {store}")

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
        path = f"{run.path}/models/{model}/fold{fold}.joblib"
        pre, regs = _split_pipeline(est, path=path, n_genes=len(run.genes))
        names = tuple(str(n) for n in pre.get_feature_names_out())
        held = [b for b in folds.loc[folds["fold"] == fold, "bag_id"] if b in slides_of]
        if not held:
            continue
        bags = [np.concatenate([emb(s)[1] for s in slides_of[b]]) for b in held]
        X = np.asarray(pre.transform(bags), dtype=np.float64)
        tile_slides = [s for b in held for s in slides_of[b] if wanted is None or s in wanted]
        single, meta = [], []
        for s in tile_slides:
            tid, e = emb(s)
            single.extend(e[i : i + 1] for i in range(len(e)))
            meta.append((s, tid))
        Xt = np.asarray(pre.transform(single), dtype=np.float64) if single else None
        for g in genes:
            explainer = shap.TreeExplainer(regs[gi[g]])
            sv = np.asarray(explainer.shap_values(X))
            vals[g].append(sv)
            feats[g].append(X)
            bases[g].append(np.broadcast_to(np.ravel(explainer.expected_value)[0], (len(X),)))
            if Xt is None:
                continue
            svt = np.asarray(explainer.shap_values(Xt))
            total = svt.sum(axis=1)
            pred = np.ravel(explainer.expected_value)[0] + total
            top = np.abs(svt).argmax(axis=1)
            k = 0
            for s, tid in meta:
                n = len(tid)
                tile_rows.append(
                    pd.DataFrame(
                        {
                            "model": model,
                            "gene": g,
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
    if not any(vals[g] for g in genes):
        raise ExplainError(f"no held-out bag of {run.path}/folds.parquet has embeddings in the store {store}")
    glob_rows = []
    values = {g: np.concatenate(vals[g]) for g in genes}
    features = {g: np.concatenate(feats[g]) for g in genes}
    base_values = {g: np.concatenate(bases[g]) for g in genes}
    for g in genes:
        imp = np.abs(values[g]).mean(axis=0)
        order = np.argsort(-imp, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(1, len(order) + 1)
        glob_rows.append(
            pd.DataFrame(
                {"model": model, "gene": g, "feature": list(names), "mean_abs_shap": imp, "rank": rank}
            )
        )
    tiles = pd.concat(tile_rows, ignore_index=True) if tile_rows else pd.DataFrame()
    if not tiles.empty:
        xy = []
        for sid in tiles["slide_id"].unique():
            t = read_tiles(store, run.tiling, sid)
            xy.append(t[["slide_id", "tile_id", "x", "y"]])
        tiles = tiles.merge(pd.concat(xy), on=["slide_id", "tile_id"], how="left")
        tiles = tiles[
            [
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
            ]
        ]
    return ShapResult(
        model=model,
        global_importance=pd.concat(glob_rows, ignore_index=True),
        tiles=tiles,
        values=values,
        features=features,
        base_values=base_values,
        feature_names=names,
    )


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
