"""Regenerate the pictures the README and the docs show, from an explained run (the demo's by default).

    python docs/make_screenshots.py                        # demo/run, demo/store
    python docs/make_screenshots.py --run RUN --store STORE --gene TRIB2

Writes ``docs/img/report_summary.png`` (the report's first screen), ``report_gene.png`` (one gene's section),
``heatmap.png`` (a heatmap row with its scale bar) and ``geojson_overlay.png`` (a slide's hotspot GeoJSON drawn over
its thumbnail). The report is rewritten first, so the pictures show the current code. Needs Chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMG = Path(__file__).resolve().parent / "img"
#: Browser windows (CSS px) of the screenshots: the first screen of a desktop, and a gene section.
SUMMARY_WINDOW = (1280, 860)
GENE_WINDOW = (1280, 1500)


def _pick_gene(manifest: dict, gene: str | None) -> tuple[str, str]:
    """The gene to show and one of its heatmap figures (relative path)."""
    maps = manifest.get("figures", {}).get("heatmaps", [])
    if not maps:
        raise SystemExit("the run has no heatmaps: run `slide2expr explain` on it first")
    for _, rel in maps:
        if gene is None or Path(rel).parts[-2] == gene:
            return Path(rel).parts[-2], rel
    raise SystemExit(f"no heatmap of {gene} in the run's explain output")


def geojson_overlay(store: Path, explain_dir: Path, slide_id: str, out: Path) -> Path:
    """The slide's thumbnail with its GeoJSON hotspots drawn in their own colours, as QuPath shows them."""
    import numpy as np
    import openslide
    from matplotlib.figure import Figure

    from slide2expr import sql

    row = sql.read_slide(store, slide_id)
    with openslide.OpenSlide(row["path"]) as slide:
        thumb = np.asarray(slide.get_thumbnail((1200, 1200)).convert("RGB"))
    fc = json.loads((explain_dir / "geojson" / f"{slide_id}.geojson").read_text())
    fig = Figure(figsize=(7, 7 * row["height"] / row["width"] + 0.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(thumb, extent=(0, row["width"], row["height"], 0))
    for feat in fc["features"]:
        props = feat.get("properties", {})
        colour = props.get("classification", {}).get("color")
        colour = [c / 255 for c in colour] if isinstance(colour, list) else "cyan"
        for ring in feat["geometry"]["coordinates"][:1]:
            xs, ys = zip(*ring, strict=True)
            ax.plot(xs, ys, color=colour, lw=1.2)
    ax.set_axis_off()
    ax.set_title(
        f"{slide_id}: {len(fc['features'])} hotspot annotations (geojson/{slide_id}.geojson)", fontsize=8
    )
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    from slide2expr import explain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("demo/run"))
    ap.add_argument("--store", type=Path, default=Path("demo/store"))
    ap.add_argument("--explain-dir", type=Path, default=None, help="default RUN/explain")
    ap.add_argument("--gene", default=None, help="the gene shown (default: the first with heatmaps)")
    ns = ap.parse_args(argv)
    explain_dir = ns.explain_dir or ns.run / "explain"
    manifest = json.loads((explain_dir / "manifest.json").read_text())
    gene, rel = _pick_gene(manifest, ns.gene)
    IMG.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = explain.write_report(
            ns.run, explain_dir=explain_dir, store=ns.store, out=Path(tmp) / "report.html"
        )
        w, h = SUMMARY_WINDOW
        explain.screenshot(report, out=IMG / "report_summary.png", width=w, height=h)
        w, h = GENE_WINDOW
        explain.screenshot(report, out=IMG / "report_gene.png", width=w, height=h, anchor=f"gene-{gene}")
    with Image.open(explain_dir / rel) as im:
        im.convert("RGB").save(IMG / "heatmap.png", optimize=True)
    slide_id = Path(rel).stem.rsplit("_", 1)[0]
    geojson_overlay(ns.store, explain_dir, slide_id, IMG / "geojson_overlay.png")
    for name in ("report_summary", "report_gene", "heatmap", "geojson_overlay"):
        print(IMG / f"{name}.png")


if __name__ == "__main__":
    main()
