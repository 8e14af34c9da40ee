"""Planning a slide: open it, find the tissue on a thumbnail, lay out the kept tiles, draw the QC image, and cut the
kept tiles into the chunks that are read together."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slide2expr.contract import Tiling
from slide2expr.featurize._inputs import SlideInput, file_fingerprint
from slide2expr.featurize._reader import open_slide
from slide2expr.featurize._slide import LEVEL_TOLERANCE, SlideError, SlideReader
from slide2expr.featurize._tissue import (
    TISSUE_MPP,
    TISSUE_VERSION,
    TileGrid,
    qc_image,
    tile_grid,
    tissue_mask,
)

#: small thumbnails are enlarged (nearest neighbour, at most ``QC_MAX_UPSCALE`` times) towards this many pixels on
#: their longest side in the QC image, so that the tile grid stays legible
QC_TARGET_PX, QC_MAX_UPSCALE = 800, 4
#: grid rows of a block that a reader process reads together (see :func:`make_blocks`)
BLOCK_ROWS = 4


@dataclass(frozen=True)
class TilingParams:
    """A run's tile grid: the store's :class:`~slide2expr.contract.Tiling` (its folder) and which tiles are kept
    (tissue fraction at least ``min_tissue`` on a tissue mask detected at ``tissue_mpp`` µm/px)."""

    tiling: Tiling
    min_tissue: float = 0.5
    tissue_mpp: float = TISSUE_MPP

    @property
    def name(self) -> str:
        return self.tiling.name

    @property
    def mpp(self) -> float:
        return self.tiling.mpp

    @property
    def tile_px(self) -> int:
        return self.tiling.tile_px

    @property
    def overlap_px(self) -> int:
        return self.tiling.overlap_px

    def as_dict(self) -> dict:
        """What the store records (in every file's metadata and the config hash)."""
        return {
            **self.tiling.as_dict(),
            "min_tissue": self.min_tissue,
            "tissue_mpp": self.tissue_mpp,
            "tissue_version": TISSUE_VERSION,
        }


@dataclass
class SlidePlan:
    """What a slide's run needs and records; built by :func:`plan_slide`."""

    slide: SlideInput
    fingerprint: dict
    status: str = "ok"  # one of SLIDE_STATUSES: ok | no_tissue | too_small | failed
    error: str | None = None
    vendor: str | None = None
    width: int | None = None
    height: int | None = None
    mpp: tuple[float, float] | None = None
    mpp_source: str | None = None
    objective_power: float | None = None
    levels: int | None = None
    level: int = 0
    level_downsample: float = 1.0
    grid: TileGrid | None = None  # kept tiles
    tissue_area_mm2: float | None = None
    qc_png: bytes | None = None
    seconds_plan: float = 0.0
    seconds_read: float = 0.0
    note: str | None = None  # something the user should hear about a slide that did not fail


def plan_slide(
    slide: SlideInput, tiling: TilingParams, *, open_reader: Callable[[SlideInput], SlideReader] | None = None
) -> SlidePlan:
    """Open ``slide``, detect tissue on a thumbnail and lay out the kept tiles. Never raises for slide problems:
    they end up in ``status``/``error``.

    ``open_reader(slide)`` gives the handle to plan with, which its giver keeps open (the reading pool reads the
    slide's tiles through it next); by default a handle is opened for the plan and closed after it.
    """
    t0 = time.perf_counter()
    plan = SlidePlan(slide=slide, fingerprint=file_fingerprint(slide.path))
    try:
        if open_reader is None:
            with open_slide(
                slide.path, mpp_override=slide.mpp, mpp_fallback=slide.mpp_fallback, slide_id=slide.slide_id
            ) as r:
                _describe(plan, r, tiling)
        else:
            _describe(plan, open_reader(slide), tiling)
    except SlideError as exc:
        plan.status, plan.error = "failed", str(exc)
    except (
        OSError,
        ValueError,
        MemoryError,
        RuntimeError,
    ) as exc:  # an unexpected decoder or library failure
        plan.status, plan.error = "failed", f"{slide.slide_id}: {type(exc).__name__}: {exc}"
    plan.seconds_plan = time.perf_counter() - t0
    return plan


def _describe(plan: SlidePlan, r: SlideReader, tiling: TilingParams) -> None:
    """Fill in ``plan`` from the open slide ``r``: its metadata, tissue, kept tiles, QC image and status."""
    plan.vendor = r.vendor
    plan.width, plan.height = r.dimensions
    plan.mpp, plan.mpp_source = r.mpp, r.mpp_source
    plan.objective_power = r.objective_power
    plan.levels = r.level_count
    plan.level = r.best_level(tiling.mpp)
    plan.level_downsample = r.level_downsamples[plan.level]
    thumb, tmpp = r.thumbnail(mpp=tiling.tissue_mpp)
    mask = tissue_mask(thumb, mpp=tmpp)
    full = tile_grid(
        r.dimensions,
        slide_mpp=r.mpp,
        mpp=tiling.mpp,
        tile_px=tiling.tile_px,
        overlap_px=tiling.overlap_px,
        mask=mask,
        mask_mpp=tmpp,
    )
    finest = min(r.mpp)
    if tiling.mpp < finest / LEVEL_TOLERANCE:  # beyond the rounding of scanners' metadata
        plan.note = (
            f"tiles at {tiling.mpp:g} µm/px are finer than the scan's {finest:.3g} µm/px: its pixels are "
            f"enlarged {finest / tiling.mpp:.2g}×, which adds no detail (--mpp {finest:.3g} or coarser reads "
            "the scan as it is)"
        )
    grid = full.select(full.tissue_frac >= tiling.min_tissue)
    plan.grid = grid
    plan.tissue_area_mm2 = float(mask.sum()) * tmpp * tmpp / 1e6
    if len(full) == 0:
        plan.status = "too_small"
        side = tiling.tile_px * tiling.mpp
        plan.error = (
            f"the slide ({plan.width * r.mpp[0] / 1000:.2f} × {plan.height * r.mpp[1] / 1000:.2f} mm) is smaller "
            f"than one tile ({side / 1000:.2f} mm at {tiling.tile_px} px × {tiling.mpp:g} µm/px); use a smaller "
            "--tile-px or a finer --mpp"
        )
    elif len(grid) == 0:
        plan.status = "no_tissue"
        plan.error = (
            f"no tile has a tissue fraction >= {tiling.min_tissue} (tissue covers {plan.tissue_area_mm2:.3f} mm², "
            f"{len(full)} tile positions); check the QC image or lower --min-tissue"
        )
    plan.qc_png = _qc_png(
        thumb, tmpp, r.mpp, mask, grid, f"{plan.slide.slide_id} {tiling.name} n={len(grid)}"
    )


def _qc_png(thumb, tmpp, slide_mpp, mask, grid, title) -> bytes:
    k = max(1, min(QC_MAX_UPSCALE, QC_TARGET_PX // max(thumb.shape[:2])))
    if k > 1:
        thumb = np.repeat(np.repeat(thumb, k, axis=0), k, axis=1)
        mask = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    return qc_image(thumb, thumb_mpp=tmpp / k, slide_mpp=slide_mpp, mask=mask, grid=grid, title=title)


# ---- chunks: the kept tiles read together ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Chunk:
    """Kept tiles read together: ``start:stop`` of the slide's kept grid (a run of neighbours in one row), or the
    grid rows ``index`` (a block of a few rows' runs; see :func:`make_blocks`)."""

    start: int
    stop: int
    index: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        """The chunk's tiles in the grid, in the order they are read."""
        return np.arange(self.start, self.stop) if self.index is None else self.index

    def __len__(self) -> int:
        return self.stop - self.start if self.index is None else len(self.index)


def make_chunks(grid: TileGrid, *, max_tiles: int) -> list[Chunk]:
    """Split the kept tiles (row-major) into runs of neighbours in one row, at most ``max_tiles`` each."""
    n = len(grid)
    if n == 0:
        return []
    brk = np.flatnonzero((np.diff(grid.row) != 0) | (np.diff(grid.col) != 1)) + 1
    bounds = [0, *brk.tolist(), n]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        for s in range(a, b, max_tiles):
            out.append(Chunk(s, min(b, s + max_tiles)))
    return out


def make_blocks(grid: TileGrid, *, max_tiles: int, rows: int = BLOCK_ROWS) -> list[Chunk]:
    """Split the kept tiles into blocks of ``rows`` grid rows × ``max_tiles // rows`` columns, row band by row band,
    each block's tiles row-major (its runs are read one region each).

    For reader processes, which do not share decoded JPEG tiles: where a tile box's edge falls inside a JPEG tile
    (224 px boxes on a 256 px JPEG grid), the rows of boxes above and below want the same JPEG tiles, and row runs
    dealt to different processes would decode them once each; in a block they are decoded once."""
    n = len(grid)
    if n == 0:
        return []
    cols = max(1, max_tiles // rows)
    band, bcol = grid.row // rows, grid.col // cols
    order = np.lexsort((grid.col, grid.row, bcol, band))  # by band, then block, then row-major inside
    key = band[order] * (int(bcol.max()) + 1) + bcol[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    return [Chunk(0, 0, idx) for idx in np.split(order, cuts)]
