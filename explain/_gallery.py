"""The paper's gallery: patients binned by true expression, the highest-attention tiles of each bin."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from slide2expr.explain._inputs import ExplainError, Run, load_run, read_tiles
from slide2expr.explain._slides import read_tiles_full_res

GALLERY_COLUMNS = (
    "gene",
    "model",
    "bin",
    "bin_lo",
    "bin_hi",
    "n_patients",
    "rank",
    "bag_id",
    "slide_id",
    "tile_id",
    "x",
    "y",
    "w",
    "h",
    "attention",
    "relative_attention",
    "y_true",
)


@dataclass
class Gallery:
    """Top-attention tiles per expression bin for one gene and model.

    Attributes
    ----------
    table
        One row per shown tile: ``bin`` (0 = lowest expression), its bounds ``bin_lo``/``bin_hi`` and patient count,
        ``rank`` (1 = the bin's top-1 tile; ranks 1–``top_k`` are its top-k), the tile (bag, slide, tile id, level-0
        box), its attention, ``relative_attention`` (attention × tiles in the bag: 1 = uniform weight, comparable
        across bags of different sizes; tiles are ranked by it) and the bag's true expression.
    images
        ``(h, w, 3)`` uint8 full-resolution tile pixels, aligned with ``table`` rows (empty when not read).
    """

    gene: str
    model: str
    n_bins: int
    top_k: int
    table: pd.DataFrame
    images: list[np.ndarray] = field(default_factory=list)


def _bin_edges(values: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    if binning == "quantile":
        edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    elif binning == "uniform":
        edges = np.linspace(values.min(), values.max(), n_bins + 1)
    else:
        raise ExplainError(f"binning must be 'quantile' or 'uniform', got {binning!r}")
    return edges


def check_gallery_args(n_bins: int, top_k: int) -> None:
    """Raise :class:`ExplainError` unless ``n_bins`` and ``top_k`` are at least 1."""
    if n_bins < 1 or top_k < 1:
        raise ExplainError(f"n_bins and top_k must be at least 1, got n_bins={n_bins}, top_k={top_k}")


def gallery(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    gene: str,
    model: str = "mil",
    n_bins: int = 7,
    top_k: int = 5,
    binning: str = "quantile",
    read_images: bool = True,
) -> Gallery:
    """Bin patients by true expression of ``gene`` and pick each bin's highest-attention tiles.

    Parameters
    ----------
    run
        A run directory (needs ``attention.parquet`` with rows for ``model`` and ``predictions.parquet``).
    store
        The store the run was trained on (tile boxes and slide paths).
    n_bins
        Expression bins (7 in the paper); ``binning`` ``"quantile"`` gives bins of equal patient counts,
        ``"uniform"`` equal-width bins over the expression range (empty bins are then left out).
    top_k
        Tiles per bin; rank 1 is the top-1 tile.
    read_images
        Read each tile from its slide at full resolution (level 0) into :attr:`Gallery.images`.

    Returns
    -------
    Gallery
    """
    run = load_run(run)
    check_gallery_args(n_bins, top_k)
    index = run.attention_index()
    if index is None:
        run.table("attention")  # the missing file's error
    att = run.attention_rows(
        models=[model], genes=[gene], columns=["bag_id", "slide_id", "tile_id", "attention"]
    )
    if att.empty:
        have = sorted(index["model"].unique())
        raise ExplainError(
            f"no attention rows for model {model!r} and gene {gene!r} in {run.layout.attention} "
            f"(models with attention: {have}; genes: {list(run.genes)})"
        )
    preds = run.table("predictions")
    truth = preds[preds["gene"] == gene].groupby("bag_id")["y_true"].first()
    table = _top_tiles(att, truth, n_bins=n_bins, top_k=top_k, binning=binning)
    if table is None:
        raise ExplainError(f"no bag has both attention and a true value of {gene!r} in {run.path}")
    table = _with_boxes(table.assign(gene=gene, model=model), store=store, tiling=run.tiling)
    table = table[list(GALLERY_COLUMNS)]
    images = _tile_images(table, store=store) if read_images else []
    return Gallery(gene, model, n_bins, top_k, table.reset_index(drop=True), images)


def _top_tiles(att: pd.DataFrame, truth: pd.Series, *, n_bins: int, top_k: int, binning: str):
    """The ``top_k`` tiles of each expression bin by relative attention (None when no bag has both attention and a
    true value)."""
    att = att.assign(
        relative_attention=att["attention"] * att.groupby("bag_id")["attention"].transform("size")
    )
    bags = np.array(sorted(set(att["bag_id"]) & set(truth.index.dropna())))
    y = truth.loc[bags].to_numpy(dtype=np.float64)
    ok = np.isfinite(y)
    bags, y = bags[ok], y[ok]
    if bags.size == 0:
        return None
    edges = _bin_edges(y, n_bins, binning)
    bin_of = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        members = set(bags[bin_of == b])
        if not members:
            continue
        cand = att[att["bag_id"].isin(members)].sort_values(
            ["relative_attention", "bag_id", "tile_id"], ascending=[False, True, True], kind="stable"
        )
        for rank, r in enumerate(cand.head(top_k).itertuples(index=False), start=1):
            rows.append(
                {
                    "bin": b,
                    "bin_lo": float(edges[b]),
                    "bin_hi": float(edges[b + 1]),
                    "n_patients": len(members),
                    "rank": rank,
                    "bag_id": r.bag_id,
                    "slide_id": r.slide_id,
                    "tile_id": int(r.tile_id),
                    "attention": float(r.attention),
                    "relative_attention": float(r.relative_attention),
                    "y_true": float(truth.loc[r.bag_id]),
                }
            )
    return pd.DataFrame(rows)


def _with_boxes(table: pd.DataFrame, *, store, tiling: str) -> pd.DataFrame:
    """``table`` with each tile's level-0 box ``x, y, w, h`` from its slide's tile grid."""
    boxes = []
    for sid, grp in table.groupby("slide_id", sort=False):
        tiles = read_tiles(store, tiling, sid).set_index("tile_id")
        missing = set(grp["tile_id"]) - set(tiles.index)
        if missing:
            raise ExplainError(
                f"slide {sid!r}: tile ids {sorted(missing)[:5]} of the attention table are not in its tile grid; "
                "the store was re-featurized after the run — re-run `slide2expr compare`"
            )
        boxes.append(tiles.loc[grp["tile_id"], ["x", "y", "w", "h"]].set_axis(grp.index))
    return table.join(pd.concat(boxes))


def _tile_images(table: pd.DataFrame, *, store) -> list[np.ndarray]:
    """Full-resolution pixels of each row's tile, in row order."""
    by_index = {}
    for sid, grp in table.groupby("slide_id", sort=False):
        pix = read_tiles_full_res(store, sid, grp[["x", "y", "w", "h"]].to_numpy())
        by_index.update(dict(zip(grp.index, pix, strict=True)))
    return [by_index[i] for i in table.index]


def plot_gallery(g: Gallery, *, tile_inches: float = 1.3) -> Figure:
    """The gallery as a grid: one row per expression bin (lowest at the bottom), columns top-1 … top-k."""
    if not g.images:
        raise ExplainError("the gallery has no images: build it with read_images=True")
    bins = sorted(g.table["bin"].unique(), reverse=True)
    fig = Figure(figsize=(tile_inches * g.top_k + 2.2, tile_inches * len(bins) + 0.8), layout="constrained")
    axes = fig.subplots(len(bins), g.top_k, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    for i, b in enumerate(bins):
        rows = g.table[g.table["bin"] == b]
        first = rows.iloc[0]
        axes[i, 0].set_ylabel(
            f"bin {b + 1}\n[{first.bin_lo:.2f}, {first.bin_hi:.2f}]\n{int(first.n_patients)} patients",
            fontsize=7,
            rotation=0,
            ha="right",
            va="center",
        )
        for idx, r in rows.iterrows():
            ax = axes[i, int(r["rank"]) - 1]
            ax.imshow(g.images[idx])
            ax.set_title(f"{r.bag_id[-9:]} a×n={r.relative_attention:.1f}", fontsize=5.5)
            if r["rank"] == 1:
                for s in ax.spines.values():
                    s.set_visible(True)
                    s.set_color("crimson")
                    s.set_linewidth(2)
    for k in range(g.top_k):
        axes[0, k].set_xlabel("")
    fig.suptitle(
        f"{g.gene} ({g.model}): top-1 (red frame) and top-{g.top_k} attention tiles per bin of true expression",
        fontsize=9,
    )
    return fig
