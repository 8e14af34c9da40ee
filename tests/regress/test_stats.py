"""Metrics match scipy / scikit-learn; BH-FDR matches scipy; paired comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from slide2expr.regress import bh_fdr, metrics_table, paired_comparison, regression_metrics


def test_regression_metrics_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    t = rng.normal(size=50)
    p = t + rng.normal(scale=0.7, size=50)
    base = np.full(50, 0.3)
    m = regression_metrics(t, p, y_baseline=base)
    pr, sr = stats.pearsonr(t, p), stats.spearmanr(t, p)
    assert m["n"] == 50
    assert m["pearson_r"] == pytest.approx(pr.statistic) and m["pearson_p"] == pytest.approx(pr.pvalue)
    assert m["spearman_rho"] == pytest.approx(sr.statistic) and m["spearman_p"] == pytest.approx(sr.pvalue)
    assert m["r2"] == pytest.approx(r2_score(t, p))
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)))
    assert m["rmse_baseline"] == pytest.approx(np.sqrt(np.mean((t - 0.3) ** 2)))


def test_regression_metrics_constant_and_nan_input():
    m = regression_metrics([1.0, 2.0, 3.0, np.nan], [2.0, 2.0, 2.0, 5.0])
    assert m["n"] == 3 and np.isnan(m["pearson_r"]) and np.isnan(m["spearman_rho"])
    assert m["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert regression_metrics([], [])["n"] == 0


def test_bh_matches_scipy_and_keeps_nan():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=40) ** 3
    np.testing.assert_allclose(bh_fdr(p), stats.false_discovery_control(p, method="bh"))
    q = p.copy()
    q[[3, 17]] = np.nan
    out = bh_fdr(q)
    assert np.isnan(out[[3, 17]]).all()
    keep = ~np.isnan(q)
    np.testing.assert_allclose(out[keep], stats.false_discovery_control(q[keep], method="bh"))


def test_paired_comparison():
    rng = np.random.default_rng(2)
    b = rng.uniform(0, 0.5, size=30)
    a = b + 0.2 + rng.normal(scale=0.05, size=30)
    out = paired_comparison(a, b, seed=0)
    w = stats.wilcoxon(a - b)
    assert out["n_genes"] == 30
    assert out["median_diff"] == pytest.approx(np.median(a - b))
    assert out["ci_low"] < out["median_diff"] < out["ci_high"]
    assert out["ci_low"] > 0.1 and out["ci_high"] < 0.3
    assert out["wilcoxon_stat"] == pytest.approx(w.statistic) and out["wilcoxon_p"] == pytest.approx(w.pvalue)
    same = paired_comparison(b, b)
    assert same["median_diff"] == 0 and same["wilcoxon_p"] == 1.0  # identical models tie
    noise = paired_comparison(b, b + 1e-13)  # floating-point noise of the same predictions is no difference
    assert noise["median_diff"] == 0 and noise["wilcoxon_p"] == 1.0
    assert np.isnan(paired_comparison([1.0], [0.0])["ci_low"])


def test_metrics_table_pooled_rows_fdr_and_well_predicted():
    rng = np.random.default_rng(3)
    rows = []
    for fold in range(3):
        for bag in range(20):
            for gene, noise in (("G_GOOD", 0.1), ("G_NOISE", None)):
                t = rng.normal()
                pred = t + noise * rng.normal() if noise else rng.normal()
                rows.append(
                    dict(
                        model="m",
                        fold=fold,
                        bag_id=f"b{fold}_{bag}",
                        patient_id=f"p{fold}_{bag}",
                        gene=gene,
                        y_true=t,
                        y_pred=pred,
                        y_baseline=0.0,
                    )
                )
    pred = pd.DataFrame(rows)
    m = metrics_table(pred, genes=["G_GOOD", "G_NOISE"])
    assert len(m) == 2 * 3 + 2
    pooled = m[m["fold"] == -1].set_index("gene")
    assert pooled.loc["G_GOOD", "n"] == 60
    np.testing.assert_allclose(pooled["fdr"], stats.false_discovery_control(pooled["pearson_p"], method="bh"))
    assert bool(pooled.loc["G_GOOD", "well_predicted"]) and not bool(pooled.loc["G_NOISE", "well_predicted"])
    assert m.loc[m["fold"] >= 0, "fdr"].isna().all() and m.loc[m["fold"] >= 0, "well_predicted"].isna().all()
    g = pred[(pred.gene == "G_GOOD") & (pred.fold == 1)]
    row = m[(m.gene == "G_GOOD") & (m.fold == 1)].iloc[0]
    assert row["pearson_r"] == pytest.approx(stats.pearsonr(g.y_true, g.y_pred).statistic)
