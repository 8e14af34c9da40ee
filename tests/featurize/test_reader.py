"""The slide reader: OpenSlide formats and plain images behind one interface."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import pytest
from PIL import Image

from slide2expr.featurize import MissingMPPError, SlideOpenError, _openslide, open_slide
from slide2expr.featurize._regions import resize_rgb
from slide2expr.featurize._svs import write_svs
from slide2expr.featurize._tilecache import TileCache


def test_real_cmu_slide_dimensions_and_mpp(cmu_slide):
    ref = openslide.OpenSlide(str(cmu_slide))
    with open_slide(cmu_slide) as s:
        assert s.slide_id == "cmu_small_region"
        assert s.vendor == "aperio"
        assert s.dimensions == (2220, 2967) == ref.dimensions
        assert s.mpp == (0.499, 0.499)
        assert s.mpp_source == "metadata"
        assert s.objective_power == 20.0
        assert s.level_count == 1
        # a tile at native resolution is exactly OpenSlide's pixels
        tile = s.read_tile(100, 200, 224, mpp=0.499)
        expected = np.asarray(ref.read_region((100, 200), 0, (224, 224)).convert("RGB"))
        np.testing.assert_array_equal(tile, expected)
        # at 1 µm/px the 224 px tile covers ≈ 449 level-0 px
        assert s.box_size(224, mpp=1.0) == (449, 449)
        assert s.read_tile(0, 0, 224, mpp=1.0).shape == (224, 224, 3)
        thumb, tmpp = s.thumbnail(mpp=8.0)
        assert thumb.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8), 3)
        assert tmpp == pytest.approx(8.0, rel=0.01)
    ref.close()


def test_override_mpp_and_errors(tmp_path, cmu_slide):
    with open_slide(cmu_slide, mpp_override=0.25) as s:
        assert s.mpp == (0.25, 0.25) and s.mpp_source == "override"
    with pytest.raises(MissingMPPError, match="cmu_small_region.*mpp override 50"):
        open_slide(cmu_slide, mpp_override=50)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty"):
        open_slide(empty)
    junk = tmp_path / "junk.svs"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(SlideOpenError, match="junk: cannot open"):
        open_slide(junk)
    with pytest.raises(SlideOpenError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


@pytest.mark.parametrize("keep", [300, 20_000, 600_000])
def test_a_truncated_slide_is_called_truncated_whatever_breaks_first(tmp_path, cmu_slide, keep):
    cut = tmp_path / "cut.svs"
    cut.write_bytes(cmu_slide.read_bytes()[:keep])
    with pytest.raises(SlideOpenError, match="cut.*truncated or corrupt"), open_slide(cut) as s:
        s.read_tiles([0], [0], 2000, 2000, level=0, out_px=64)


def test_mpp_fallback_fills_in_only_where_the_metadata_has_no_resolution(tmp_path, cmu_slide):
    with open_slide(
        cmu_slide, mpp_fallback=0.25
    ) as s:  # the slide says 0.499: --mpp-override leaves it alone
        assert s.mpp_source == "metadata" and s.mpp[0] == pytest.approx(0.499, abs=1e-3)
    p = tmp_path / "plain.png"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(p)
    with open_slide(p, mpp_fallback=0.5) as s:
        assert s.mpp == (0.5, 0.5) and s.mpp_source == "override"
    with open_slide(p, mpp_override=0.25, mpp_fallback=0.5) as s:  # a slide list's mpp wins
        assert s.mpp == (0.25, 0.25)


def test_png_without_mpp_is_an_error_that_says_what_to_do(tmp_path):
    p = tmp_path / "plain.png"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(p)
    with pytest.raises(MissingMPPError, match=r"plain .*pass --mpp-override or a per-slide CSV"):
        open_slide(p)
    # 72 dpi = 353 µm/px: implausible, also refused
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(p, dpi=(72, 72))
    with pytest.raises(MissingMPPError, match="implausible"):
        open_slide(p)
    # 50,800 dpi = 0.5 µm/px: accepted from metadata
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(p, dpi=(50800, 50800))
    with open_slide(p) as s:
        assert s.vendor == "image" and s.mpp == pytest.approx((0.5, 0.5), rel=1e-3)


def test_pyramid_level_nearest_below_and_antialiased_resize(tmp_path):
    p = write_svs(tmp_path / "pyr.svs", size=(2048, 1536), mpp=0.25, levels=3, tile=128)
    with open_slide(p) as s:
        assert s.level_downsamples == (1.0, 4.0, 16.0)
        assert s.best_level(0.25) == 0
        assert s.best_level(0.5) == 0  # 1.0 µm/px level is coarser than 0.5: not usable
        assert s.best_level(1.0) == 1
        assert s.best_level(3.0) == 1
        assert s.best_level(4.0) == 2
        t = s.read_tile(512, 512, 128, mpp=1.0)  # read from level 1 (1 µm/px), no resize
        np.testing.assert_array_equal(t, s.read_region(512, 512, 512, 512, level=1))
        # the same tile resized from level 0 agrees with level 1 up to JPEG/resampling differences
        full = s.read_region(512, 512, 512, 512, level=0)
        via0 = resize_rgb(full, 128, 128)

        def blocks(a):  # 16×16 block means: compares content, not JPEG noise
            return a.reshape(8, 16, 8, 16, 3).mean(axis=(1, 3))

        assert np.abs(blocks(via0.astype(float)) - blocks(t.astype(float))).max() < 6
        # outside the slide is white
        edge = s.read_tile(2000, 1500, 64, mpp=0.25)
        assert (edge[-10:, -10:] == 255).all()


def test_resize_is_antialiased():
    # a one-pixel checkerboard must average to grey, not alias to black or white
    checker = ((np.indices((300, 300)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(checker[..., None], 3, axis=2)
    small = resize_rgb(img, 100, 100)
    assert small.shape == (100, 100, 3)
    assert abs(small.astype(float).mean() - 127.5) < 3 and small.std() < 20
    odd = resize_rgb(img, 77, 77)
    assert abs(odd.astype(float).mean() - 127.5) < 3 and odd.std() < 20


@pytest.mark.parametrize("photometric", ["rgb", "ycbcr"])
def test_jpeg_levels_decode_at_reduced_size_with_the_right_colours(tmp_path, cmu_slide, photometric):
    # Aperio stores RGB-coded JPEG tiles (Photometric RGB; the CMU slide); our synthetic SVS stores YCbCr ones.
    # Decoding at 1/2, 1/4, 1/8 in the DCT domain must give what a box filter over the full decode gives:
    # a colour-space mistake or a misplaced tile shows up as a mean difference of tens of grey levels.
    path = cmu_slide if photometric == "rgb" else write_svs(tmp_path / "s.svs", size=(2048, 1536), mpp=0.25)
    with open_slide(path) as s:
        assert s.native_scale(0, 1.9) == 1
        assert s.native_scale(0, 2.0) == 2 and s.native_scale(0, 5.0) == 4 and s.native_scale(0, 100) == 8
        full = s.read_region(480, 320, 960, 960, level=0)
        for scale in (2, 4, 8):
            small = s.read_region(480, 320, 960, 960, level=0, scale=scale)
            assert small.shape == (960 // scale, 960 // scale, 3)
            ref = np.asarray(Image.fromarray(full).reduce(scale)).astype(float)
            diff = np.abs(small.astype(float) - ref)
            assert diff.mean() < 2.0, (scale, diff.mean(axis=(0, 1)))
            assert np.abs(small.astype(float).mean(axis=(0, 1)) - ref.mean(axis=(0, 1))).max() < 0.5


def test_tiles_read_through_the_reduced_decode_match_the_full_decode(tmp_path):
    p = write_svs(tmp_path / "s40.svs", size=(4096, 4096), mpp=0.25, levels=3)
    with open_slide(p) as s:
        x = np.array([0, 512, 1024, 1536, 1531]) + 1024  # odd corners are off the half-size grid
        y = np.full(5, 1024 + 7)
        fast = s.read_tiles(x, y, 507, 507, level=0, out_px=224)
        # the half-size read cuts each tile at its nearest half-size pixel: at most one level-0 pixel away
        snap_x, snap_y = (np.round(x / 2) * 2).astype(np.int64), (np.round(y / 2) * 2).astype(np.int64)
        assert np.abs(snap_x - x).max() <= 1 and np.abs(snap_y - y).max() <= 1
        s.native_scale = lambda level, factor: 1  # the full-size decode and an antialiased resize
        slow = s.read_tiles(snap_x, snap_y, 507, 507, level=0, out_px=224)
        # read_tile cuts the same pixels as a row read (the full-size path here, after the patch)
        rows = s.read_tiles(x, y, 507, 507, level=0, out_px=224)
        single = [s.read_tile(int(a), int(b), 224, mpp=507 * 0.25 / 224) for a, b in zip(x, y, strict=True)]
    assert fast.shape == slow.shape == (5, 224, 224, 3)
    np.testing.assert_array_equal(np.stack(single), rows)
    fast, slow = fast.astype(float), slow.astype(float)
    # pixel noise of two resampling paths on a noisy texture: ≈ 3 grey levels; a one-pixel shift gives ≈ 11
    assert np.abs(fast - slow).mean() < 5.0
    assert np.abs(fast[:, 1:, 1:] - slow[:, :-1, :-1]).mean() > 8.0
    blocks = lambda a: a.reshape(5, 16, 14, 16, 14, 3).mean(axis=(2, 4))  # noqa: E731
    assert np.abs(blocks(fast) - blocks(slow)).mean() < 1.0


def test_readers_on_several_threads_share_one_tile_cache(tmp_path, monkeypatch):
    p = write_svs(tmp_path / "shared.svs", size=(2048, 2048), mpp=0.25, levels=2)
    decoded = []
    real = _openslide._decode_jpeg_scaled
    monkeypatch.setattr(_openslide, "_decode_jpeg_scaled", lambda *a: decoded.append(1) or real(*a))
    cache = TileCache()
    x, y = np.array([256, 768]), np.array([512, 512])
    with open_slide(p, tile_cache=cache) as a:
        first = a.read_tiles(x, y, 512, 512, level=0, out_px=224)
    n = len(decoded)
    assert (
        n == 8 and len(cache) == 8
    )  # two 512 px boxes at half size: 2 × 4 JPEG tiles … (3 columns × 2 rows)
    with ThreadPoolExecutor(1) as pool, open_slide(p, tile_cache=cache) as b:  # closing a did not empty it
        again = pool.submit(b.read_tiles, x, y, 512, 512, level=0, out_px=224).result()
    assert len(decoded) == n  # nothing decoded twice
    np.testing.assert_array_equal(first, again)

    small = TileCache(max_bytes=3200)
    for i in range(40):  # beyond its bytes the oldest go first
        small.put((9, i, 1), np.zeros(100, np.uint8))
    assert len(small) == 32 and small.nbytes == 3200
    assert small.get((9, 39, 1)) is not None and small.get((9, 7, 1)) is None


def test_openslide_handles_of_one_slide_share_one_openslide_cache(tmp_path, monkeypatch):
    p = write_svs(tmp_path / "o.svs", size=(1024, 1024), mpp=0.5, levels=1)
    given = []
    real = openslide.OpenSlide.set_cache
    monkeypatch.setattr(openslide.OpenSlide, "set_cache", lambda self, c: given.append(c) or real(self, c))
    cache = TileCache()
    with (
        open_slide(p, fast_jpeg=False, tile_cache=cache) as a,
        open_slide(p, fast_jpeg=False, tile_cache=cache) as b,
    ):
        np.testing.assert_array_equal(
            a.read_region(0, 0, 512, 512, level=0), b.read_region(0, 0, 512, 512, level=0)
        )
        a.reopen()
    with open_slide(p, fast_jpeg=False, tile_cache=TileCache()):
        pass
    assert len(given) == 4 and given[0] is given[1] is given[2] and given[3] is not given[0]
    assert isinstance(given[0], openslide.OpenSlideCache)


def test_tile_cache_drops_rows_every_reading_thread_has_passed():
    cache = TileCache()
    for i in range(10):
        cache.put((0, i, 1), np.zeros(8, np.uint8))
    cache.put((1, 0, 1), np.zeros(8, np.uint8))
    kept = lambda: [i for i in range(10) if cache.get((0, i, 1)) is not None]  # noqa: E731
    with ThreadPoolExecutor(1) as other:
        other.submit(cache.passed, 0, 1, 3).result()  # a thread still reading from tile 3 on
        cache.passed(0, 1, 8)  # this one is further down
        assert kept() == list(range(3, 10))  # kept for the slower thread
        other.submit(cache.passed, 0, 1, 9).result()
        assert kept() == [8, 9] and cache.nbytes == 3 * 8
        assert cache.get((1, 0, 1)) is not None  # another level: untouched
        cache.passed(0, 1, 0)  # back at the top (the next slide of the same file): nothing goes
        assert kept() == [8, 9]


def test_a_raster_read_of_wide_tissue_decodes_each_jpeg_tile_once(tmp_path, monkeypatch):
    # 224 px boxes on a 256 px JPEG grid share JPEG tiles with the row below: a row of 128 JPEG tiles is more than a
    # cache limited to a count of tiles keeps, which would decode those tiles twice
    p = write_svs(tmp_path / "wide.svs", size=(32768, 768), mpp=0.5, levels=1, blobs=((0.5, 0.5, 0.6, 0.6),))
    puts = []
    real = TileCache.put
    monkeypatch.setattr(TileCache, "put", lambda self, k, t: puts.append(k) or real(self, k, t))
    xs = np.arange(0, 32768 - 224, 224)
    with open_slide(p) as s:
        for y in range(0, 768 - 224, 224):
            for i in range(0, len(xs), 16):  # row runs of 16, as featurize reads them
                x = xs[i : i + 16]
                s.read_tiles(x, np.full(len(x), y), 224, 224, level=0, out_px=224)
        held = s._tiles.cache.nbytes
    assert len(puts) == len(set(puts)) == 128 * 3  # every JPEG tile under the boxes, once
    assert held <= 2 * 128 * 256 * 256 * 3  # a band of two JPEG rows, not the slide
    # in blocks of 3 rows × 5 boxes (reader processes): the lower rows of a block leave the thread's mark at its
    # top, so the next block along still finds the JPEG column the two share (1,120 px blocks on a 256 px grid)
    puts.clear()
    with open_slide(p) as s:
        for i in range(0, len(xs), 5):
            x = np.tile(xs[i : i + 5], 3)
            s.read_tiles(x, np.repeat([0, 224, 448], len(x) // 3), 224, 224, level=0, out_px=224)
    assert len(puts) == len(set(puts)) == 128 * 3


def test_rgb_coded_jpeg_tiles_with_a_jfif_marker_are_not_decoded_scaled(tmp_path):
    # libjpeg lets a JFIF marker's YCbCr claim override the Adobe marker the scaled path adds for Photometric RGB,
    # so such tiles (some non-Aperio writers make them) keep the full-size decode, which tifffile colours right
    import types

    import tifffile

    p = tmp_path / "jfif.tiff"
    img = np.repeat(np.linspace(0, 255, 1024, dtype=np.uint8)[None, :, None], 1024, axis=0).repeat(3, axis=2)
    tifffile.imwrite(
        p, img, tile=(256, 256), compression="jpeg", resolution=(20000, 20000), resolutionunit="CENTIMETER"
    )
    with open_slide(p) as s:
        tiles = s._tiles
        assert tiles is not None and s.native_scale(0, 4.0) == 4  # YCbCr with JFIF: fine
        page = tiles.pages[0]
        fields = ("shape", "tilewidth", "tilelength", "jpegtables", "databytecounts", "dataoffsets")
        tiles.pages[0] = types.SimpleNamespace(photometric=2, **{f: getattr(page, f) for f in fields})
        tiles._scalable_levels.clear()
        assert s.native_scale(0, 4.0) == 1


def test_synthetic_svs_bytes_do_not_depend_on_the_thread_count(tmp_path, monkeypatch):
    out = {}
    for cores in (1, 4):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        p = write_svs(tmp_path / f"t{cores}.svs", size=(1800, 1300), mpp=0.5, levels=2, seed=3)
        out[cores] = p.read_bytes()
    assert out[1] == out[4] and len(out[1]) > 10_000
