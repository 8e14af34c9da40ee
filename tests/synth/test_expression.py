"""The expression model: drivers explain most of the variance, negative controls explain nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slide2expr.synth import (
    GENE_DRIVERS,
    GENES,
    HOTSPOT_COMPARTMENTS,
    TISSUE_COMPARTMENTS,
    make_cohort,
    patient_truth,
)
from slide2expr.synth._expression import expression_model, prior_fractions, simulate_expression

_COL = {c: i for i, c in enumerate(TISSUE_COMPARTMENTS)}


def _driver(fracs: np.ndarray, spec: dict) -> np.ndarray:
    return sum(fracs[:, _COL[c]] * b for c, b in spec["coefficients"].items())


def _r(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_panel():
    assert len(GENES) == len(set(GENES)) == 35 and set(GENE_DRIVERS) == set(GENES)
    model = expression_model(np.random.default_rng(0))
    kinds = pd.Series({g: model[g]["kind"] for g in GENES})
    assert (kinds == "hotspot").sum() >= 4 and (kinds == "noise").sum() >= 4
    for g in ("GNLY", "CXCR4", "LYZ"):
        assert "lymphocytes" in model[g]["drivers"]
    for g in ("FBN1", "MGP", "TIMP3", "CCDC80"):
        assert model[g]["drivers"] == ["stroma"]
    for g in ("SPINK4", "B3GNT6"):
        assert model[g]["drivers"] == ["mucin"]
    for g in GENES:
        assert set(model[g]["drivers"]) <= set(TISSUE_COMPARTMENTS)
        assert model[g]["noise_sd"] > 0
        if kinds[g] == "hotspot":
            assert set(model[g]["drivers"]) <= set(HOTSPOT_COMPARTMENTS)


def test_model_on_many_patients():
    """With 3,000 patients from the prior the designed r² holds and noise genes correlate with nothing."""
    rng = np.random.default_rng(1)
    model = expression_model(rng)
    fracs = prior_fractions(np.random.default_rng(2), n=3000)
    assert fracs[:, [_COL[c] for c in HOTSPOT_COMPARTMENTS]].max() <= 0.1
    np.testing.assert_allclose(fracs.sum(axis=1), 1.0)
    log_expr = simulate_expression(fracs, model, np.random.default_rng(3))
    assert log_expr.shape == (3000, 35) and (log_expr >= 0).all()
    for j, g in enumerate(GENES):
        spec = model[g]
        if spec["kind"] == "noise":
            for c in TISSUE_COMPARTMENTS:
                assert abs(_r(fracs[:, _COL[c]], log_expr[:, j])) < 0.08, (g, c)
        else:
            r2 = _r(_driver(fracs, spec), log_expr[:, j]) ** 2
            assert r2 == pytest.approx(spec["r2_design"], abs=0.04), g
            assert 0.78 <= r2 <= 0.93


@pytest.fixture(scope="module")
def cohort60(tmp_path_factory):
    """60 patients with tiny slides: the expression model on the realised label maps."""
    return make_cohort(tmp_path_factory.mktemp("c60") / "c", n_patients=60, seed=11, size=(1000, 1300))


def test_realised_cohort(cohort60):
    root = cohort60.root
    expr = pd.read_csv(root / "expression.csv", index_col="sample_id")
    assert list(expr.columns) == list(GENES) and len(expr) == 60
    assert expr.index.str.fullmatch(r"TCGA-S2-\d{4}-01A").all()
    assert np.isfinite(expr.to_numpy()).all() and (expr.to_numpy() >= 0).all()
    log_expr = np.log1p(expr)
    pt = patient_truth(root).set_index("sample_id").loc[expr.index]
    fracs = pt[[f"frac_{c}" for c in TISSUE_COMPARTMENTS]].to_numpy()
    hot = pt[["frac_tls", "frac_high_grade"]].to_numpy()
    assert (hot == 0).any() and hot.max() > 0.06 and hot.max() <= 0.13  # from none to about a tenth
    for g in GENES:
        spec = cohort60.truth["genes"][g]
        if spec["kind"] == "noise":
            # |r| below the Bonferroni bound for 60 patients and 7 compartments x 4 genes (p < 0.05 / 28)
            for c in TISSUE_COMPARTMENTS:
                assert abs(_r(fracs[:, _COL[c]], log_expr[g])) < 0.42, (g, c)
        elif spec["kind"] == "hotspot":
            (c,) = spec["drivers"]
            assert _r(pt[f"frac_{c}"], log_expr[g]) > 0.8, g
        else:
            assert _r(_driver(fracs, spec), log_expr[g]) > 0.85, g
