"""Per-gene metrics, Benjamini–Hochberg FDR, the null-model rule and model-vs-model statistics on both axes.

Two axes, as the field reports them: *across patients* for one gene (Pearson r with its p-value; a model against
another or against its null by Steiger's test for dependent correlations, since both are computed on the same
patients) and *across genes* (paired per-gene differences, Wilcoxon signed-rank, bootstrap CI). p-values are kept
as numbers; how to print them is the reader's business.
"""

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


#: Two predictions (or two metric values) closer than this, relative to their scale, are the same number: a test
#: between them is a tie, never a significant difference.
TIE_RTOL = 1e-9


def _tied(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: ``a`` and ``b`` equal up to :data:`TIE_RTOL` of their magnitude (floating-point noise)."""
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1.0)
    return np.abs(a - b) <= TIE_RTOL * scale


def paired_comparison(a, b, *, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired per-gene comparison of metric values ``a`` vs ``b`` (``(n_genes,)`` each; NaN pairs dropped): the
    across-genes axis.

    Returns ``n_genes``, ``median_diff`` (median of ``a - b``), a percentile bootstrap CI of the median difference
    (``ci_low``, ``ci_high``; genes resampled with replacement) and the Wilcoxon signed-rank test of the
    differences (``wilcoxon_stat``, two-sided ``wilcoxon_p``). Differences within floating-point noise
    (:data:`TIE_RTOL`) count as zero: two identical models tie (``wilcoxon_p`` 1, difference 0). NaN where fewer
    than 2 genes.

    >>> paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7 + 1e-15])["wilcoxon_p"]
    1.0
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    d = np.where(_tied(a, b), 0.0, a - b)
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
    else:
        out["wilcoxon_stat"], out["wilcoxon_p"] = 0.0, 1.0
    return out


def steiger_test(y, a, b, *, alternative: str = "two-sided", confidence: float = 0.95) -> dict:
    """Steiger's (1980) test of two dependent correlations sharing ``y``: is ``corr(y, a)`` different from
    ``corr(y, b)`` when ``a`` and ``b`` predict the same patients? The across-patients axis of a model-vs-model
    comparison on one gene.

    Parameters
    ----------
    y, a, b
        ``(n,)`` arrays: the truth and two predictions of it (NaN rows dropped).
    alternative
        ``"two-sided"``, or ``"greater"`` (``corr(y, a) > corr(y, b)``).
    confidence
        Level of Zou's (2007) interval for ``r_a - r_b``.

    Returns
    -------
    dict: ``n``, ``r_a``, ``r_b``, ``r_ab`` (``corr(a, b)``), ``diff`` (``r_a - r_b``), ``ci_low``/``ci_high``
    (Zou's interval of ``diff``), ``z`` (Steiger's Z on Fisher-transformed correlations with the pooled
    correlation in the covariance term), ``p``, and ``tie``: true when ``a`` and ``b`` are the same predictions
    up to floating-point noise, or an affine map of each other (``r_ab`` = 1), for which ``z`` is 0 and ``p`` is 1.
    NaN when n < 4 or a correlation is undefined.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(size=200)
    >>> good, poor = y + rng.normal(size=200), y + 3 * rng.normal(size=200)
    >>> steiger_test(y, good, poor)["p"] < 1e-3, steiger_test(y, good, good + 1e-13)["tie"]
    (True, True)
    """
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater'; got {alternative!r}")
    y, a, b = (np.asarray(v, dtype=np.float64) for v in (y, a, b))
    ok = ~(np.isnan(y) | np.isnan(a) | np.isnan(b))
    y, a, b = y[ok], a[ok], b[ok]
    n = int(len(y))
    keys = ("r_a", "r_b", "r_ab", "diff", "ci_low", "ci_high", "z", "p")
    out = {"n": n, **dict.fromkeys(keys, float("nan")), "tie": False}
    if n < 4 or np.ptp(y) == 0:
        return out
    if _tied(a, b).all():
        r = _pearson(y, a)
        return {**out, "r_a": r, "r_b": r, "r_ab": 1.0, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                "z": 0.0, "p": 1.0, "tie": True}  # fmt: skip
    ra, rb, rab = _pearson(y, a), _pearson(y, b), _pearson(a, b)
    out.update(r_a=ra, r_b=rb, r_ab=rab, diff=ra - rb)
    if not np.isfinite([ra, rb, rab]).all():
        return out
    if rab >= 1.0 - TIE_RTOL:
        return {**out, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "z": 0.0, "p": 1.0, "tie": True}
    ra, rb = (float(np.clip(r, -1 + 1e-12, 1 - 1e-12)) for r in (ra, rb))
    rbar2 = ((ra + rb) / 2) ** 2
    cov = (rab * (1 - 2 * rbar2) - 0.5 * rbar2 * (1 - 2 * rbar2 - rab**2)) / (1 - rbar2) ** 2
    z = (np.arctanh(ra) - np.arctanh(rb)) * np.sqrt(n - 3) / np.sqrt(max(2 - 2 * cov, 1e-300))
    p = stats.norm.sf(z) if alternative == "greater" else 2 * stats.norm.sf(abs(z))
    lo, hi = _zou_interval(ra, rb, rab, n, confidence)
    return {**out, "ci_low": lo, "ci_high": hi, "z": float(z), "p": float(p)}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _zou_interval(ra: float, rb: float, rab: float, n: int, confidence: float) -> tuple[float, float]:
    """Zou's (2007) interval for ``ra - rb``, two correlations that share a variable (``rab`` between the others)."""
    q = stats.norm.ppf(0.5 + confidence / 2) / np.sqrt(n - 3)
    (la, ua), (lb, ub) = ((np.tanh(np.arctanh(r) - q), np.tanh(np.arctanh(r) + q)) for r in (ra, rb))
    c = ((rab - 0.5 * ra * rb) * (1 - ra**2 - rb**2 - rab**2) + rab**3) / ((1 - ra**2) * (1 - rb**2))
    low = ra - rb - np.sqrt(max((ra - la) ** 2 + (ub - rb) ** 2 - 2 * c * (ra - la) * (ub - rb), 0.0))
    high = ra - rb + np.sqrt(max((ua - ra) ** 2 + (rb - lb) ** 2 - 2 * c * (ua - ra) * (rb - lb), 0.0))
    return float(low), float(high)


#: The well-predicted rule's thresholds: BH-FDR of the correlation, and BH-FDR of beating the null model.
FDR_LEVEL = 0.05
#: The columns :func:`metrics_table` adds from the null model's predictions (pooled rows only).
NULL_COLUMNS = ("null_r", "null_rmse", "null_p", "null_fdr")


def metrics_table(
    pred: pd.DataFrame, *, genes, models=None, null: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per model × gene × fold metrics, plus pooled rows (``fold = -1``) with BH-FDR and ``well_predicted``.

    ``pred`` has the columns of ``predictions.parquet`` plus ``y_baseline`` (the fold's training mean). ``null``
    holds the same columns for each model's *null*: the same model fitted on the same folds with the training
    targets permuted among the training patients.

    A pooled row of a model with a null gets ``null_r`` and ``null_rmse`` (the null's pooled r and RMSE),
    ``null_p`` (Steiger's one-sided test that the model's r exceeds its null's on the same patients) and
    ``null_fdr`` (its BH adjustment across the model's genes), and ``beats_null``: r above the null's, ``null_fdr``
    below :data:`FDR_LEVEL` and RMSE below the null's. ``well_predicted``: r > 0, BH-FDR of r below
    :data:`FDR_LEVEL`, RMSE below the training-mean predictor's and, where the model has a null, ``beats_null``.
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
    beats = _null_columns(m, pred, null)
    well = pooled & (m["pearson_r"] > 0) & (m["fdr"] < FDR_LEVEL) & (m["rmse"] < m["rmse_baseline"])
    well &= beats.fillna(True).astype(bool)
    m["well_predicted"] = pd.array(
        np.where(pooled, well.fillna(False).astype(bool), None), dtype="boolean"
    )  # null in fold rows
    m["beats_null"] = pd.array(np.where(pooled & beats.notna(), beats, None), dtype="boolean")
    models = list(dict.fromkeys(pred["model"])) if models is None else list(models)
    m["_m"] = m["model"].map({x: i for i, x in enumerate(models)})
    m["_g"] = m["gene"].map({g: i for i, g in enumerate(genes)})
    m = m.sort_values(["_m", "fold", "_g"], kind="stable").drop(columns=["_m", "_g"]).reset_index(drop=True)
    m["n"] = m["n"].astype("int64")
    m["fold"] = m["fold"].astype("int32")
    return m


def _null_columns(m: pd.DataFrame, pred: pd.DataFrame, null: pd.DataFrame | None) -> pd.Series:
    """Fill :data:`NULL_COLUMNS` of ``m``'s pooled rows from ``null``; return ``beats_null`` (NaN: no null)."""
    for c in NULL_COLUMNS:
        m[c] = np.nan
    beats = pd.Series(np.nan, index=m.index, dtype=object)
    if null is None or null.empty:
        return beats
    keys = ["model", "gene", "bag_id"]
    both = pred[[*keys, "y_true", "y_pred"]].merge(
        null[[*keys, "y_pred"]].rename(columns={"y_pred": "y_null"}), on=keys, how="inner"
    )
    index = {(r.model, r.gene): i for i, r in m[m["fold"] == -1][["model", "gene"]].iterrows()}
    for (model, gene), g in both.groupby(["model", "gene"], sort=False):
        i = index[(model, gene)]
        t = steiger_test(g["y_true"], g["y_pred"], g["y_null"], alternative="greater")
        nm = regression_metrics(g["y_true"], g["y_null"])
        m.loc[i, ["null_r", "null_rmse", "null_p"]] = (nm["pearson_r"], nm["rmse"], t["p"])
    for model in m.loc[m["null_p"].notna(), "model"].unique():
        sel = (m["model"] == model) & m["null_p"].notna()
        m.loc[sel, "null_fdr"] = bh_fdr(m.loc[sel, "null_p"].to_numpy())
        above = m.loc[sel, "pearson_r"].fillna(-np.inf) > m.loc[sel, "null_r"].fillna(-np.inf)
        rmse = m.loc[sel, "rmse"] < m.loc[sel, "null_rmse"]
        beats.loc[sel] = (above & (m.loc[sel, "null_fdr"] < FDR_LEVEL) & rmse).to_numpy()
    return beats


def gene_comparisons(pred: pd.DataFrame, *, models, genes) -> pd.DataFrame:
    """Model vs model on each gene, across patients: :func:`steiger_test` of every pair of ``models`` on the
    bags both predicted (pooled held-out predictions, ``pred`` as in :func:`metrics_table`).

    Returns one row per pair × gene: ``model_a``, ``model_b``, ``gene`` and the test's fields (``n``, ``r_a``,
    ``r_b``, ``r_ab``, ``diff``, ``ci_low``, ``ci_high``, ``z``, two-sided ``p``, ``tie``).
    """
    wide = pred.pivot_table(index=["gene", "bag_id"], columns="model", values="y_pred", aggfunc="first")
    truth = pred.groupby(["gene", "bag_id"])["y_true"].first()
    rows = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            for gene in genes:
                w = wide.loc[gene]
                t = steiger_test(truth.loc[gene].reindex(w.index), w[a], w[b])
                rows.append({"model_a": a, "model_b": b, "gene": gene, **t})
    return pd.DataFrame(rows)
