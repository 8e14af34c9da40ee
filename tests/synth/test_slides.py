"""Every synthetic slide opens in OpenSlide as declared, and its pixels follow its label map."""

from __future__ import annotations

import math

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from slide2expr.synth import COMPARTMENTS, SLIDE_KINDS, load_label_map


def test_tables_agree(small_cohort):
    root = small_cohort.root
    slides = pd.read_csv(root / "slides.csv")
    patients = pd.read_csv(root / "patients.csv")
    assert list(slides.columns[:8]) == [
        "slide_id",
        "patient_id",
        "path",
        "vendor",
        "mpp",
        "width",
        "height",
        "levels",
    ]
    assert list(patients.columns) == ["patient_id", "slide_id", "path"]
    assert set(slides["format"]) == {"svs", "tiff"}
    assert slides["slide_id"].is_unique
    assert (slides["slide_id"].str.slice(0, 12) == slides["patient_id"]).all()
    assert slides["slide_id"].str.fullmatch(r"TCGA-S2-\d{4}-01Z-00-DX[12]").all()
    per_patient = patients.groupby("patient_id").size()
    assert set(per_patient) <= {1, 2} and (per_patient == 2).any() and (per_patient == 1).any()
    assert sorted(per_patient.index) == [f"TCGA-S2-{i:04d}" for i in range(1, 7)]
    for p in slides["path"]:
        assert (root / p).is_file()


def test_every_slide_opens_as_declared(small_cohort):
    for row in small_cohort.slides.itertuples():
        kind = SLIDE_KINDS[row.format]
        with openslide.OpenSlide(str(small_cohort.root / row.path)) as s:
            props = s.properties
            assert props[openslide.PROPERTY_NAME_VENDOR] == kind["vendor"] == row.vendor
            assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(kind["mpp"])
            assert float(props[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(kind["mpp"])
            assert s.dimensions == (row.width, row.height)
            assert s.level_count == row.levels >= 3
            for k, (w, h) in enumerate(s.level_dimensions):
                assert (w, h) == (math.ceil(row.width / 4**k), math.ceil(row.height / 4**k))
                assert s.level_downsamples[k] == pytest.approx(4**k, rel=0.01)
            if row.format == "svs":
                assert props["aperio.AppMag"] == "40"
                assert float(props["aperio.MPP"]) == pytest.approx(0.25)
                assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
            else:
                assert props["tiff.ResolutionUnit"] == "centimeter"
                assert float(props["tiff.XResolution"]) == pytest.approx(1e4 / 0.5)
            assert props["openslide.level[0].tile-width"] == str(kind["tile"])


def test_tiles_are_jpeg(small_cohort):
    path = small_cohort.slide_paths[0]
    with tifffile.TiffFile(path) as tf:
        assert all(p.is_tiled and p.compression == tifffile.COMPRESSION.JPEG for p in tf.pages)


def _eroded(labels: np.ndarray, value: int, iterations: int) -> np.ndarray:
    return ndimage.binary_erosion(labels == value, iterations=iterations)


def test_pixels_follow_label_map(small_cohort):
    """Glass is near white; tissue is stained; lymphoid aggregates are darker than stroma; colours vary by slide."""
    means = []
    for row in small_cohort.slides.itertuples():
        labels, meta = load_label_map(small_cohort.root, slide_id=row.slide_id)
        with openslide.OpenSlide(str(small_cohort.root / row.path)) as s:
            img = np.asarray(s.read_region((0, 0), 2, s.level_dimensions[2]).convert("RGB")).astype(float)
        # label px -> level-2 px: nearest lookup of each level-2 pixel centre
        f = 16 / meta["ds"]
        iy = np.minimum(((np.arange(img.shape[0]) + 0.5) * f).astype(int), labels.shape[0] - 1)
        ix = np.minimum(((np.arange(img.shape[1]) + 0.5) * f).astype(int), labels.shape[1] - 1)
        grey = img.mean(axis=2)
        sat = img.max(axis=2) - img.min(axis=2)
        glass = _eroded(labels, 0, 3)[np.ix_(iy, ix)]
        tissue = ndimage.binary_erosion(labels > 0, iterations=3)[np.ix_(iy, ix)]
        assert glass.any() and tissue.any()
        assert grey[glass].mean() > 235 and sat[glass].mean() < 8
        assert grey[tissue].mean() < grey[glass].mean() - 20 and sat[tissue].mean() > 25
        region = {name: _eroded(labels, i, 3)[np.ix_(iy, ix)] for i, name in enumerate(COMPARTMENTS)}
        if region["tls"].sum() > 20 and region["stroma"].sum() > 20:
            assert grey[region["tls"]].mean() < grey[region["stroma"]].mean() - 30
        if region["stroma"].sum() > 50:
            means.append(img[region["stroma"]].mean(axis=0))
    # stain jitter: the same compartment is coloured differently on different slides
    assert len(means) >= 3
    assert np.ptp(np.array(means), axis=0).max() > 5
