from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slide2expr.explain import ExplainError, ScoreMap, plot_heatmap, tile_score_map


def _grid(n_cols: int, n_rows: int, *, stride: int, size: int) -> pd.DataFrame:
    gx, gy = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
    return pd.DataFrame(
        {"x": gx.ravel() * stride, "y": gy.ravel() * stride, "w": size, "h": size}, dtype=np.int64
    )


def test_regular_grid_recovers_tile_scores_exactly():
    tiles = _grid(7, 5, stride=448, size=448)
    scores = np.random.default_rng(0).random(len(tiles))
    m = tile_score_map(tiles, scores, slide_size=(7 * 448 + 100, 5 * 448 + 50), mpp=(0.25, 0.25))
    assert m.cell_px == 448
    assert m.values.shape == (6, 8)  # the slide extends past the last tile: one empty row and column
    np.testing.assert_allclose(m.values[:5, :7], scores.reshape(5, 7))
    assert np.isnan(m.values[5]).all() and np.isnan(m.values[:, 7]).all()
    assert m.counts[:5, :7].min() == 1
    assert m.cell_area_mm2 == pytest.approx((448 * 0.25 / 1000) ** 2)
    assert m.extent == (0.0, 8 * 448.0, 6 * 448.0, 0.0)


def test_overlapping_tiles_are_averaged_per_cell():
    stride, size = 96, 128  # 32 px overlap: cells of gcd(96, 128) = 32 px, every tile covers 4 x 4 cells
    tiles = _grid(4, 3, stride=stride, size=size)
    scores = np.arange(len(tiles), dtype=float)
    m = tile_score_map(tiles, scores, slide_size=(3 * 96 + 128, 2 * 96 + 128), mpp=(0.5, 0.5))
    assert m.cell_px == 32
    # brute force: every cell's mean over the tiles that contain the cell's centre
    for r in range(m.values.shape[0]):
        for c in range(m.values.shape[1]):
            cx, cy = (c + 0.5) * 32, (r + 0.5) * 32
            inside = (tiles.x <= cx) & (cx < tiles.x + tiles.w) & (tiles.y <= cy) & (cy < tiles.y + tiles.h)
            assert m.counts[r, c] == inside.sum()
            if inside.any():
                assert m.values[r, c] == pytest.approx(scores[inside.to_numpy()].mean())
            else:
                assert np.isnan(m.values[r, c])
    assert m.counts.max() == 4  # the overlap of four tiles


def test_smoothing_keeps_constant_fields_and_the_tissue_outline():
    tiles = _grid(6, 6, stride=100, size=100)
    tiles = tiles[(tiles.x + tiles.y) < 800]  # a triangle of tissue
    const = tile_score_map(tiles, np.full(len(tiles), 3.0), slide_size=(600, 600), mpp=(1, 1), sigma=1.5)
    assert np.nanmax(np.abs(const.values - 3.0)) < 1e-9  # normalised convolution: no edge darkening
    rng = np.random.default_rng(1)
    raw = tile_score_map(tiles, rng.random(len(tiles)), slide_size=(600, 600), mpp=(1, 1))
    smooth = tile_score_map(tiles, rng.random(len(tiles)), slide_size=(600, 600), mpp=(1, 1), sigma=1.0)
    np.testing.assert_array_equal(np.isnan(raw.values), np.isnan(smooth.values))
    assert np.nanstd(smooth.values) < np.nanstd(raw.values)


def test_percentile_scale_ranks_tiles_within_the_slide():
    tiles = _grid(5, 4, stride=10, size=10)
    scores = np.random.default_rng(2).normal(size=len(tiles)) ** 3
    m = tile_score_map(tiles, scores, slide_size=(50, 40), mpp=(1, 1))
    pct = m.percentile()
    assert np.nanmin(pct) > 0 and np.nanmax(pct) < 100
    order = np.argsort(scores)
    assert (np.diff(pct.ravel()[order]) > 0).all()  # strictly monotonic in the score
    assert np.nanmax(pct) == pytest.approx(100 * (len(scores) - 0.5) / len(scores))


def test_nan_scores_and_bad_input():
    tiles = _grid(3, 1, stride=10, size=10)
    m = tile_score_map(tiles, np.array([1.0, np.nan, 3.0]), slide_size=(30, 10), mpp=(1, 1))
    assert np.isnan(m.values[0, 1]) and m.counts[0, 1] == 0
    with pytest.raises(ExplainError, match="one score per tile"):
        tile_score_map(tiles, np.ones(4), slide_size=(30, 10), mpp=(1, 1))
    with pytest.raises(ExplainError, match="empty tile grid"):
        tile_score_map(tiles.iloc[:0], np.ones(0), slide_size=(30, 10), mpp=(1, 1))


@pytest.mark.parametrize(
    ("scale", "label"), [("raw", "attention (raw values)"), ("percentile", "percentile")]
)
def test_plot_heatmap_states_its_colour_scale(scale, label):
    tiles = _grid(4, 3, stride=50, size=50)
    m = tile_score_map(tiles, np.linspace(0, 1, 12), slide_size=(200, 150), mpp=(0.5, 0.5), label="attention")
    thumb = np.full((30, 40, 3), 230, np.uint8)
    fig = plot_heatmap(m, thumbnail=thumb, scale=scale, title="t")
    ax, cax = fig.axes
    assert label in cax.get_ylabel()
    images = ax.get_images()
    assert len(images) == 2  # thumbnail underneath, scores on top
    lo, hi = images[1].get_clim()
    assert (lo, hi) == ((0.0, 100.0) if scale == "percentile" else (0.0, 1.0))
    assert ax.get_xlim() == (0.0, 200.0) and ax.get_ylim() == (150.0, 0.0)
    with pytest.raises(ExplainError, match="scale must be one of"):
        plot_heatmap(m, scale="log")


def test_scoremap_is_a_frozen_record():
    m = tile_score_map(_grid(2, 2, stride=5, size=5), np.ones(4), slide_size=(10, 10), mpp=(1, 1))
    assert isinstance(m, ScoreMap)
    with pytest.raises(AttributeError):
        m.cell_px = 3.0
