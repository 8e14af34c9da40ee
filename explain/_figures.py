"""Saving figures, and the run-level plots (true vs predicted scatter, model summary)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from slide2expr.contract import write_bytes_atomic


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_bytes_atomic(Path(path), buf.getvalue())


def plot_scatter(
    predictions: pd.DataFrame,
    *,
    genes=None,
    models=None,
    metrics: pd.DataFrame | None = None,
    title: str | None = "Held-out predictions vs true expression (targets' transformed scale)",
) -> Figure:
    """True vs predicted (held-out) expression, one panel per gene, one colour per model.

    Parameters
    ----------
    predictions
        ``RUN/predictions.parquet`` rows (model, gene, y_true, y_pred).
    metrics
        ``RUN/metrics.parquet``; pooled Pearson r per model is written into the legend when given.
    title
        The figure's title (None: none).
    """
    genes = list(dict.fromkeys(predictions["gene"])) if genes is None else list(genes)
    models = (
        [m for m in dict.fromkeys(predictions["model"]) if m != "mean"] if models is None else list(models)
    )
    cols = min(4, max(len(genes), 1))
    rows = int(np.ceil(len(genes) / cols))
    fig = Figure(figsize=(3.3 * cols, 3.1 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    pooled = None
    if metrics is not None and not metrics.empty:
        pooled = metrics[metrics["fold"] == -1].set_index(["model", "gene"])["pearson_r"]
    for ax, g in zip(axes, genes, strict=False):
        d = predictions[predictions["gene"] == g]
        lo, hi = np.inf, -np.inf
        for k, m in enumerate(models):
            dm = d[d["model"] == m]
            if dm.empty:
                continue
            r = pooled.get((m, g), np.nan) if pooled is not None else np.nan
            label = f"{m} (r={r:.2f})" if np.isfinite(r) else m
            ax.scatter(dm["y_true"], dm["y_pred"], s=9, alpha=0.7, color=f"C{k}", label=label)
            lo = min(lo, dm["y_true"].min(), dm["y_pred"].min())
            hi = max(hi, dm["y_true"].max(), dm["y_pred"].max())
        if np.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("true (held out)", fontsize=7)
        ax.set_ylabel("predicted", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[len(genes) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def model_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per model over genes (pooled rows): median Pearson r, well-predicted genes, median RMSE ÷ baseline RMSE."""
    pooled = metrics[metrics["fold"] == -1]
    rows = []
    for m, d in pooled.groupby("model", sort=False):
        ratio = d["rmse"] / d["rmse_baseline"].where(d["rmse_baseline"] > 0)
        rows.append(
            {
                "model": m,
                "n_genes": int(len(d)),
                "median_pearson_r": float(d["pearson_r"].median()),
                "n_well_predicted": int(d["well_predicted"].fillna(False).astype(bool).sum()),
                "median_rmse_over_baseline": float(ratio.median()),
            }
        )
    out = pd.DataFrame(rows)
    return out.sort_values("median_pearson_r", ascending=False, na_position="last").reset_index(drop=True)


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """``fig`` as PNG bytes (for figures drawn only for the report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


#: JPEG quality of embedded photographs (slide thumbnails, heatmaps over H&E, tile galleries).
JPEG_QUALITY = 80
#: A PNG is kept when it is at most this many times the size of the JPEG of the same picture: plots and text stay
#: sharp, photographs take a fraction of the bytes.
PNG_OVER_JPEG = 1.3


def compress_image(data: bytes, *, max_px: int, quality: int = JPEG_QUALITY) -> tuple[bytes, str]:
    """A picture made smaller for embedding: its longest side at most ``max_px``, stored as PNG or JPEG, whichever
    suits it (see :data:`PNG_OVER_JPEG`). Returns ``(bytes, mime type)``.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.fromarray(np.full((400, 1000, 3), 200, np.uint8)).save(buf, format="PNG")
    >>> data, mime = compress_image(buf.getvalue(), max_px=500)
    >>> mime, Image.open(io.BytesIO(data)).size
    ('image/png', (500, 200))
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, "white")
            im.paste(rgba, mask=rgba.getchannel("A"))
        else:
            im = im.convert("RGB")
    if max(im.size) > max_px:
        im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    png, jpeg = io.BytesIO(), io.BytesIO()
    im.save(png, format="PNG", optimize=True)
    im.save(jpeg, format="JPEG", quality=quality, optimize=True)
    if png.tell() <= PNG_OVER_JPEG * jpeg.tell():
        return png.getvalue(), "image/png"
    return jpeg.getvalue(), "image/jpeg"
