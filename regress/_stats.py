"""Per-gene metrics, Benjamini–Hochberg FDR and paired model-vs-model statistics (scipy / scikit-learn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

METRIC_COLUMNS = (
    "n",
    "pearson_r",
    "pearson_p",
    "spearman_rho",
    "spearman_p",
    "r2",
    "mae",
    "rmse",
    "rmse_baseline",
)


def regression_metrics(y_true, y_pred, *, y_baseline=None) -> dict[str, float]:
    """Pearson r (+ two-sided p), Spearman ρ (+ p), R², MAE, RMSE of one gene; NaN pairs dropped.

    Parameters
    ----------
    y_true, y_pred
        ``(n,)`` arrays.
    y_baseline
        ``(n,)`` predictions of the training-mean predictor; gives ``rmse_baseline`` (NaN when None).

    Returns
    -------
    dict with the keys of :data:`METRIC_COLUMNS`. Correlations are NaN when either side is constant or n < 3.

    Examples
    --------
    >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.1, 1.9, 3.2, 3.9])
    >>> round(m["pearson_r"], 3), m["n"]
    (0.993, 4)
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    ok = ~(np.isnan(t) | np.isnan(p))
    b = None if y_baseline is None else np.asarray(y_baseline, dtype=np.float64)
    if b is not None:
        ok &= ~np.isnan(b)
        b = b[ok]
    t, p = t[ok], p[ok]
    n = int(len(t))
    out = dict.fromkeys(METRIC_COLUMNS, float("nan"))
    out["n"] = n
    if n == 0:
        return out
    err = p - t
    out["mae"] = float(mean_absolute_error(t, p))
    out["rmse"] = float(np.sqrt(mean_squared_error(t, p)))
    if b is not None:
        out["rmse_baseline"] = float(np.sqrt(np.mean((b - t) ** 2)))
    if n >= 2 and np.ptp(t) > 0:
        out["r2"] = float(r2_score(t, p))
    elif n >= 2:
        out["r2"] = float("nan") if np.any(err) else 1.0
    if n >= 3 and np.ptp(t) > 0 and np.ptp(p) > 0:
        pr = stats.pearsonr(t, p)
        out["pearson_r"], out["pearson_p"] = float(pr.statistic), float(pr.pvalue)
        # Spearman is undefined when ranks are constant (all ties) even if values differ
        if len(np.unique(t)) > 1 and len(np.unique(p)) > 1:
            sr = stats.spearmanr(t, p)
            out["spearman_rho"], out["spearman_p"] = float(sr.statistic), float(sr.pvalue)
    return out


def bh_fdr(pvalues) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (``scipy.stats.false_discovery_control``), NaN entries kept as NaN.

    Examples
    --------
    >>> bh_fdr([0.01, 0.04, np.nan, 0.03]).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def paired_comparison(a, b, *, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired per-gene comparison of metric values ``a`` vs ``b`` (``(n_genes,)`` each; NaN pairs dropped).

    Returns ``n_genes``, ``median_diff`` (median of ``a - b``), a percentile bootstrap CI of the median difference
    (``ci_low``, ``ci_high``; genes resampled with replacement) and the Wilcoxon signed-rank test of the
    differences (``wilcoxon_stat``, two-sided ``wilcoxon_p``). NaN where fewer than 2 genes or all differences are 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    out = {
        "n_genes": int(len(d)),
        "median_diff": float(np.median(d)) if len(d) else float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "wilcoxon_stat": float("nan"),
        "wilcoxon_p": float("nan"),
    }
    if len(d) < 2:
        return out
    rng = np.random.default_rng(seed)
    boot = np.median(d[rng.integers(0, len(d), size=(n_resamples, len(d)))], axis=1)
    alpha = (1 - confidence) / 2
    out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(boot, [alpha, 1 - alpha]))
    if np.any(d != 0):
        w = stats.wilcoxon(d, zero_method="wilcox")
        out["wilcoxon_stat"], out["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    return out


def metrics_table(pred: pd.DataFrame, *, genes, models=None) -> pd.DataFrame:
    """Per model × gene × fold metrics, plus pooled rows (``fold = -1``) with BH-FDR and ``well_predicted``.

    ``pred`` has the columns of ``predictions.parquet`` plus ``y_baseline`` (the fold's training mean).
    """
    rows = []
    for (model, gene, fold), g in pred.groupby(["model", "gene", "fold"], sort=False):
        rows.append(
            {
                "model": model,
                "gene": gene,
                "fold": int(fold),
                **regression_metrics(g["y_true"], g["y_pred"], y_baseline=g["y_baseline"]),
            }
        )
    for (model, gene), g in pred.groupby(["model", "gene"], sort=False):
        rows.append(
            {
                "model": model,
                "gene": gene,
                "fold": -1,
                **regression_metrics(g["y_true"], g["y_pred"], y_baseline=g["y_baseline"]),
            }
        )
    m = pd.DataFrame(rows)
    m["fdr"] = np.nan
    pooled = m["fold"] == -1
    for model in m["model"].unique():
        sel = pooled & (m["model"] == model)
        m.loc[sel, "fdr"] = bh_fdr(m.loc[sel, "pearson_p"].to_numpy())
    well = pooled & (m["pearson_r"] > 0) & (m["fdr"] < 0.05) & (m["rmse"] < m["rmse_baseline"])
    m["well_predicted"] = pd.array(
        np.where(pooled, well.fillna(False).astype(bool), None), dtype="boolean"
    )  # null in fold rows
    models = list(dict.fromkeys(pred["model"])) if models is None else list(models)
    m["_m"] = m["model"].map({x: i for i, x in enumerate(models)})
    m["_g"] = m["gene"].map({g: i for i, g in enumerate(genes)})
    m = m.sort_values(["_m", "fold", "_g"], kind="stable").drop(columns=["_m", "_g"]).reset_index(drop=True)
    m["n"] = m["n"].astype("int64")
    m["fold"] = m["fold"].astype("int32")
    return m
