"""tile_truth and patient_truth agree with the label maps they are computed from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slide2expr.synth import (
    COMPARTMENTS,
    GENES,
    TISSUE_COMPARTMENTS,
    CohortError,
    load_label_map,
    patient_truth,
    read_truth,
    tile_truth,
)


def _brute_force(labels: np.ndarray, ds: int, x, y, w, h) -> np.ndarray:
    """Compartment shares per box by counting level-0 pixels of the upsampled label map (outside = glass)."""
    full = np.repeat(np.repeat(labels, ds, axis=0), ds, axis=1)
    out = np.zeros((len(x), len(COMPARTMENTS)))
    for i, (x0, y0, w0, h0) in enumerate(zip(x, y, w, h, strict=True)):
        win = full[max(y0, 0) : max(y0 + h0, 0), max(x0, 0) : max(x0 + w0, 0)]
        counts = np.bincount(win.ravel(), minlength=len(COMPARTMENTS)).astype(float)
        counts[0] += w0 * h0 - win.size
        out[i] = counts / (w0 * h0)
    return out


@pytest.mark.parametrize("which", [0, -1])
def test_tile_truth_matches_label_map(small_cohort, which):
    slide = small_cohort.slides.iloc[which]
    labels, meta = load_label_map(small_cohort.root, slide_id=slide.slide_id)
    ds = meta["ds"]
    assert labels.shape == (-(-slide.height // ds), -(-slide.width // ds))
    rng = np.random.default_rng(0)
    n = 300
    w = rng.integers(1, 600, n)
    h = rng.integers(1, 600, n)
    x = rng.integers(-200, slide.width, n)
    y = rng.integers(-200, slide.height, n)
    got = tile_truth(small_cohort.root, slide_id=slide.slide_id, x=x, y=y, w=w, h=h)
    want = _brute_force(labels, ds, x, y, w, h)
    fr = got[[f"frac_{c}" for c in COMPARTMENTS]].to_numpy()
    np.testing.assert_allclose(fr, want, atol=1e-9)
    np.testing.assert_allclose(got["tissue_frac"], 1 - want[:, 0], atol=1e-9)
    assert list(got["x"]) == list(x) and (got["slide_id"] == slide.slide_id).all()


def test_driver_frac_is_the_drivers_share(small_cohort):
    truth = read_truth(small_cohort.root)
    found_hotspot_tiles = 0
    for slide in small_cohort.slides.itertuples():
        step = 224
        yy, xx = np.mgrid[0 : slide.height - step : step, 0 : slide.width - step : step]
        t = tile_truth(small_cohort.root, slide_id=slide.slide_id, x=xx.ravel(), y=yy.ravel(), w=step, h=step)
        for gene in GENES:
            spec = truth["genes"][gene]
            want = sum((t[f"frac_{c}"] for c in spec["drivers"]), pd.Series(0.0, index=t.index))
            np.testing.assert_allclose(t[f"driver_frac_{gene}"], want, atol=1e-12)
            if spec["kind"] == "noise":
                assert (t[f"driver_frac_{gene}"] == 0).all()
        found_hotspot_tiles += int(
            (t["driver_frac_FSCN1"] >= 0.5).sum() + (t["driver_frac_WARS"] >= 0.5).sum()
        )
    assert found_hotspot_tiles > 0


def test_patient_truth_is_area_weighted(small_cohort):
    pt = patient_truth(small_cohort.root)
    assert list(pt["patient_id"]) == sorted(small_cohort.patients["patient_id"].unique())
    assert list(pt["sample_id"]) == list(small_cohort.expression.index)
    fr = pt[[f"frac_{c}" for c in TISSUE_COMPARTMENTS]].to_numpy()
    np.testing.assert_allclose(fr.sum(axis=1), 1.0)
    for row in pt.itertuples():
        slides = small_cohort.slides.query("patient_id == @row.patient_id")
        assert row.n_slides == len(slides)
        area = np.zeros(len(COMPARTMENTS))
        for sid in slides["slide_id"]:
            labels, meta = load_label_map(small_cohort.root, slide_id=sid)
            area += np.bincount(labels.ravel(), minlength=len(COMPARTMENTS)) * meta["label_mpp"] ** 2
        np.testing.assert_allclose(fr[row.Index], area[1:] / area[1:].sum(), rtol=1e-9)
        assert row.tissue_mm2 == pytest.approx(area[1:].sum() / 1e6)
    # planted hotspots stay small
    assert pt[["frac_tls", "frac_high_grade"]].to_numpy().max() <= 0.13


def test_truth_errors_name_the_problem(small_cohort, tmp_path):
    with pytest.raises(CohortError, match="TCGA-S2-9999"):
        tile_truth(small_cohort.root, slide_id="TCGA-S2-9999-01Z-00-DX1", x=[0], y=[0], w=[1], h=[1])
    sid = small_cohort.slides["slide_id"].iloc[0]
    with pytest.raises(CohortError, match="same length"):
        tile_truth(small_cohort.root, slide_id=sid, x=[0, 1], y=[0, 1, 2], w=1, h=1)
    with pytest.raises(CohortError, match="positive"):
        tile_truth(small_cohort.root, slide_id=sid, x=[0], y=[0], w=[0], h=[1])
    with pytest.raises(CohortError, match="slide2expr synth"):
        patient_truth(tmp_path)
