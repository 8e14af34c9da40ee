"""Significance the way the field reports it: Steiger's test of dependent correlations per gene (model vs model,
model vs its null), ties for identical predictions, the null in the well-predicted rule, both axes in compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from slide2expr.regress import gene_comparisons, metrics_table, permute_by_group, steiger_test


def _steiger_by_hand(r_a, r_b, r_ab, n):
    """Steiger (1980), equations 14–15, written out: Z of z(r_a) − z(r_b) with the pooled correlation."""
    rm = (r_a + r_b) / 2
    psi = r_ab * (1 - 2 * rm**2) - 0.5 * rm**2 * (1 - 2 * rm**2 - r_ab**2)
    c = psi / (1 - rm**2) ** 2
    return (np.arctanh(r_a) - np.arctanh(r_b)) * np.sqrt(n - 3) / np.sqrt(2 - 2 * c)


def test_steiger_matches_the_formula_and_is_symmetric():
    rng = np.random.default_rng(0)
    y = rng.normal(size=60)
    a, b = y + rng.normal(size=60), y + 2 * rng.normal(size=60)
    t = steiger_test(y, a, b)
    r_a, r_b, r_ab = (np.corrcoef(u, v)[0, 1] for u, v in ((y, a), (y, b), (a, b)))
    assert (t["r_a"], t["r_b"], t["r_ab"], t["n"]) == pytest.approx((r_a, r_b, r_ab, 60))
    z = _steiger_by_hand(r_a, r_b, r_ab, 60)
    assert t["z"] == pytest.approx(z) and t["p"] == pytest.approx(2 * stats.norm.sf(abs(z)))
    back = steiger_test(y, b, a)
    assert back["z"] == pytest.approx(-t["z"]) and back["p"] == pytest.approx(t["p"])
    one = steiger_test(y, a, b, alternative="greater")
    assert one["p"] == pytest.approx(stats.norm.sf(z))
    assert t["ci_low"] < t["diff"] < t["ci_high"] and t["diff"] == pytest.approx(r_a - r_b)


def test_steiger_p_values_are_uniform_when_two_models_are_equally_good():
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(400):
        y = rng.normal(size=40)
        shared = rng.normal(size=40)  # the two predictions are correlated, as two models of one gene are
        a = y + shared + rng.normal(size=40)
        b = y + shared + rng.normal(size=40)
        ps.append(steiger_test(y, a, b)["p"])
    ps = np.array(ps)
    assert 0.02 < (ps < 0.05).mean() < 0.09  # the test holds its level
    assert stats.kstest(ps, "uniform").pvalue > 0.01


def test_identical_or_affine_predictions_tie():
    rng = np.random.default_rng(2)
    y = rng.normal(size=50)
    a = y + rng.normal(size=50)
    for b in (a.copy(), a + 1e-12, 3 * a + 2):
        t = steiger_test(y, a, b)
        assert t["tie"] and t["p"] == 1.0 and t["z"] == 0.0 and t["diff"] == 0.0
    assert not steiger_test(y, a, a + 0.3 * rng.normal(size=50))["tie"]
    assert np.isnan(steiger_test(y[:3], a[:3], a[:3] + 1)["p"])  # too few patients


def _predictions(rng, n=40, folds=4, models=("good", "twin", "weak")):
    rows = []
    truth = {g: rng.normal(size=n) for g in ("G1", "G2", "NOISE")}
    noise = {m: {g: rng.normal(size=n) for g in truth} for m in models}
    for m in models:
        for g, t in truth.items():
            signal = 0.0 if g == "NOISE" else 1.0
            scale = {"good": 0.3, "twin": 0.3, "weak": 1.5}[m]
            base = noise["good" if m == "twin" else m][g]
            pred = signal * t + scale * base
            for i in range(n):
                rows.append(
                    dict(
                        model=m, fold=i % folds, bag_id=f"b{i}", patient_id=f"p{i}", gene=g,
                        y_true=t[i], y_pred=pred[i], y_baseline=0.0,
                    )
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_gene_comparisons_are_steiger_per_gene_with_ties_for_twins():
    pred = _predictions(np.random.default_rng(3))
    out = gene_comparisons(pred, models=["good", "twin", "weak"], genes=["G1", "G2", "NOISE"])
    assert len(out) == 3 * 3
    twins = out[(out.model_a == "good") & (out.model_b == "twin")]
    assert twins["tie"].all() and (twins["p"] == 1.0).all()  # identical models are never different
    strong = out[(out.model_a == "good") & (out.model_b == "weak") & (out.gene != "NOISE")]
    assert (strong["p"] < 1e-3).all() and (strong["diff"] > 0).all()
    g = pred[(pred.gene == "G1")].pivot(index="bag_id", columns="model", values="y_pred")
    y = pred[(pred.gene == "G1") & (pred.model == "good")].set_index("bag_id")["y_true"].loc[g.index]
    row = out[(out.model_a == "good") & (out.model_b == "weak") & (out.gene == "G1")].iloc[0]
    assert row["p"] == pytest.approx(steiger_test(y, g["good"], g["weak"])["p"])


def test_the_null_enters_the_well_predicted_rule():
    rng = np.random.default_rng(4)
    pred = _predictions(rng, models=("good", "weak"))
    # the null of each model: predictions unrelated to the truth
    null = pred.copy()
    null["y_pred"] = rng.normal(size=len(null))
    m = metrics_table(pred, genes=["G1", "G2", "NOISE"], null=null)
    pooled = m[m.fold == -1].set_index(["model", "gene"])
    assert pooled.loc[("good", "G1"), "beats_null"] and pooled.loc[("good", "G1"), "well_predicted"]
    assert not pooled.loc[("good", "NOISE"), "well_predicted"]
    assert pooled["null_p"].notna().all() and pooled["null_fdr"].notna().all()
    # a model that does no better than its null is not well predicted, whatever its own p-value
    same = metrics_table(pred, genes=["G1", "G2", "NOISE"], null=pred)
    sp = same[same.fold == -1]
    assert (sp["null_p"] == 1.0).all() and not sp["beats_null"].any() and not sp["well_predicted"].any()
    # fold rows carry no null; without a null the rule is the three criteria
    assert m.loc[m.fold >= 0, "null_r"].isna().all() and m.loc[m.fold >= 0, "beats_null"].isna().all()
    plain = metrics_table(pred, genes=["G1", "G2", "NOISE"])
    assert plain["beats_null"].isna().all() and plain.loc[plain.fold == -1, "well_predicted"].sum() == 2


def test_permutation_keeps_a_patients_bags_together():
    Y = np.arange(12.0).reshape(6, 2)
    groups = np.array(["a", "a", "b", "c", "c", "d"])
    P = permute_by_group(Y, groups, seed=1)
    assert (P[0] == P[1]).all() and (P[3] == P[4]).all()
    firsts = {tuple(Y[i]) for i in (0, 2, 3, 5)}
    assert {tuple(r) for r in P} == firsts
