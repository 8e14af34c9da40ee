"""Tile grid geometry, tissue detection and the QC image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from slide2expr.featurize import open_slide, tile_grid, tissue_mask
from slide2expr.featurize._svs import he_tile, write_svs
from slide2expr.featurize._tissue import qc_image


def test_grid_counts_coordinates_and_overlap():
    g = tile_grid((1000, 700), slide_mpp=(0.25, 0.25), mpp=0.5, tile_px=100)
    assert (g.w0, g.h0) == (200, 200)
    assert (g.n_cols, g.n_rows, len(g)) == (5, 3, 15)
    assert g.x[:5].tolist() == [0, 200, 400, 600, 800] and g.y[::5].tolist() == [0, 200, 400]
    assert (g.x + g.w0 <= 1000).all() and (g.y + g.h0 <= 700).all()
    # overlap of 50 px at 0.5 µm/px = 100 level-0 px: stride 100
    o = tile_grid((1000, 700), slide_mpp=(0.25, 0.25), mpp=0.5, tile_px=100, overlap_px=50)
    assert (o.n_cols, o.n_rows) == (9, 6)
    assert np.diff(o.x[: o.n_cols]).tolist() == [100] * 8
    # tile ids are row-major: neighbours differ by one column
    assert o.col[:3].tolist() == [0, 1, 2] and o.row[o.n_cols] == 1
    # non-integer scale: 224 px at 0.5 µm/px on a 0.499 µm/px slide is 224 level-0 px, stride kept in floats
    c = tile_grid((2220, 2967), slide_mpp=(0.499, 0.499), mpp=0.5, tile_px=224)
    assert (c.w0, c.n_cols, c.n_rows) == (224, 9, 13)
    # a slide smaller than a tile has no tiles
    assert len(tile_grid((100, 100), slide_mpp=(0.5, 0.5), mpp=0.5, tile_px=224)) == 0
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((1000, 700), slide_mpp=(0.25, 0.25), mpp=0.5, tile_px=100, overlap_px=100)


def test_tissue_fraction_is_area_weighted():
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True  # left half at 8 µm/px
    g = tile_grid((1600, 1600), slide_mpp=(0.5, 0.5), mpp=0.5, tile_px=400, mask=mask, mask_mpp=8.0)
    # 400 level-0 px = 25 mask px; columns 0,1 inside, column 2 straddles (x 800..1200 → mask 50..75)
    assert g.tissue_frac.reshape(4, 4)[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    half = tile_grid(
        (1600, 1600), slide_mpp=(0.5, 0.5), mpp=0.5, tile_px=400, overlap_px=200, mask=mask, mask_mpp=8.0
    )
    assert half.tissue_frac[3] == pytest.approx(0.5)  # x 600..1000 → mask 37.5..62.5: half tissue


def test_tissue_mask_finds_tissue_and_ignores_glass_and_pen():
    size = (1600, 1200)
    img = he_tile(0, 0, *size, size=size)  # two ellipses of tissue on glass (1 µm/px)
    truth = img[..., 1] < 200
    thumb = np.asarray(Image.fromarray(img).resize((200, 150), Image.Resampling.BOX))
    t_small = np.asarray(Image.fromarray(truth).resize((200, 150), Image.Resampling.NEAREST))
    mask = tissue_mask(thumb, mpp=8.0)
    iou = (mask & t_small).sum() / (mask | t_small).sum()
    assert iou > 0.9
    # a blue pen stroke and a black mark on glass are not tissue
    pen = thumb.copy()
    pen[140:146, 5:60] = (40, 60, 200)
    pen[5:12, 170:190] = (20, 20, 20)
    pm = tissue_mask(pen, mpp=8.0)
    assert not pm[140:146, 5:60].any() and not pm[5:12, 170:190].any()
    # blank glass with scanner noise: nothing
    rng = np.random.default_rng(0)
    blank = np.clip(240 + rng.normal(0, 3, (150, 200, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(blank, mpp=8.0).any()


GLASS = (245, 247, 244)


def _ellipse(cy: float, cx: float, ry: float, rx: float, shape=(150, 200)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 / ry**2 + (xx - cx) ** 2 / rx**2 < 1


def _thumbnail(
    regions: list[tuple[np.ndarray, tuple[int, int, int]]], *, seed: int, noise: float
) -> np.ndarray:
    """A (150, 200) glass thumbnail with each ``(mask, rgb)`` region painted in turn, plus Gaussian noise."""
    thumb = np.empty((150, 200, 3), np.float64)
    thumb[:] = GLASS
    for mask, rgb in regions:
        thumb[mask] = rgb
    thumb += np.random.default_rng(seed).normal(0, noise, thumb.shape)
    return np.clip(thumb, 0, 255).astype(np.uint8)


def test_pale_mucin_is_tissue_and_grey_smudges_are_not():
    """Colours of the synthetic cohort's thumbnails at 8 µm/px: mostly stroma and tumour, whose saturation sets Otsu's
    split above pale blue-grey mucin's (≈ 0.1), a mucin pool, and a grey smudge on the glass."""
    stroma = _ellipse(75, 80, 65, 75)
    tumour = _ellipse(75, 60, 30, 35)
    mucin = _ellipse(75, 165, 25, 22)
    smudge = _ellipse(15, 180, 8, 15)
    paint = [
        (stroma, (227, 179, 211)),
        (tumour, (150, 90, 160)),
        (mucin, (222, 202, 224)),
        (smudge, (222, 222, 222)),
    ]
    mask = tissue_mask(_thumbnail(paint, seed=0, noise=4), mpp=8.0)
    assert mask[mucin].mean() > 0.95 and mask[stroma].mean() > 0.95
    assert not mask[smudge].any()
    glass = ~(stroma | mucin | smudge)
    assert mask[glass].mean() < 0.03  # a rim a few px wide around the tissue at most


def test_dense_lymphocytes_are_tissue_not_blue_pen():
    """A lymphoid aggregate is H&E's bluest tissue (b - r ≈ 50 on the synthetic cohort's TLS); blue ink is far bluer."""
    stroma = _ellipse(75, 100, 50, 80)
    tls = _ellipse(75, 100, 20, 25)
    img = _thumbnail([(stroma, (227, 179, 211)), (tls, (100, 78, 150))], seed=1, noise=4)
    img[140:146, 5:60] = (40, 60, 200)  # a blue pen stroke on the glass
    mask = tissue_mask(img, mpp=8.0)
    assert mask[tls].all() and mask[stroma].mean() > 0.99
    assert not mask[140:146, 5:60].any()


def test_qc_image_is_a_png_of_the_thumbnail(tmp_path):
    p = write_svs(tmp_path / "q.svs", size=(1024, 768), mpp=0.5, levels=1)
    with open_slide(p) as s:
        thumb, tmpp = s.thumbnail(mpp=8.0)
        mask = tissue_mask(thumb, mpp=tmpp)
        g = tile_grid(s.dimensions, slide_mpp=s.mpp, mpp=1.0, tile_px=112, mask=mask, mask_mpp=tmpp)
        kept = g.select(g.tissue_frac >= 0.5)
        png = qc_image(thumb, thumb_mpp=tmpp, slide_mpp=s.mpp, mask=mask, grid=kept, title="q")
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size == (thumb.shape[1], thumb.shape[0])
    arr = np.asarray(im.convert("RGB"))
    assert ((arr == (0, 200, 0)).all(axis=-1)).any()  # the tissue outline is drawn
    assert 0 < len(kept) < len(g)


def test_default_workers_reads_in_process_on_small_cpus(monkeypatch):
    from slide2expr.featurize._executors import default_workers

    for cores, cpu, cuda in ((1, 0, 1), (2, 0, 1), (4, 1, 3), (16, 1, 8)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert (default_workers("cpu"), default_workers("cuda")) == (cpu, cuda), cores


def test_tissue_channels_are_skimages_without_its_float_images():
    """The lookup-table saturation, value and haematoxylin equal skimage's rgb2hsv / rgb2hed (to 1 ulp)."""
    from skimage.color import rgb2hed, rgb2hsv

    from slide2expr.featurize._tissue import _haematoxylin, _saturation_value

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    img[:4] = 0  # black: value 0, saturation defined as 0
    img[4:8] = 255  # white
    img[8:12] = [[[120, 120, 120]]]  # grey: saturation 0
    sat, val = _saturation_value(img)
    hsv = rgb2hsv(img)
    np.testing.assert_allclose(sat, hsv[..., 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(val, hsv[..., 2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(_haematoxylin(img), rgb2hed(img)[..., 0], rtol=0, atol=1e-14)
