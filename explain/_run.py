"""``explain_run``: every explain output of a run directory, then the HTML report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from slide2expr.contract import write_bytes_atomic, write_table_atomic
from slide2expr.explain._figures import plot_scatter, save_figure
from slide2expr.explain._gallery import gallery, plot_gallery
from slide2expr.explain._hotspots import find_hotspots, gene_colors, hotspots_to_geojson, write_geojson
from slide2expr.explain._io import ExplainError, Run, load_run, read_tiles, slide_row
from slide2expr.explain._localisation import (
    attention_scores,
    localisation_auroc,
    plot_localisation,
    shap_scores,
)
from slide2expr.explain._maps import ScoreMap, plot_slide_maps, tile_score_map
from slide2expr.explain._shap import (
    ShapResult,
    plot_shap_importance,
    plot_shap_summary,
    shap_tree,
    tree_models,
)
from slide2expr.explain._slides import slide_thumbnail

MANIFEST = "manifest.json"


@dataclass
class ExplainResult:
    """What :func:`explain_run` wrote.

    Attributes
    ----------
    out
        The output folder.
    report
        ``out/report.html`` (None when not written).
    figures
        Section → list of ``(caption, png path)``; sections ``scatter``, ``heatmaps``, ``gallery``, ``shap``,
        ``localisation``.
    hotspots
        All hotspots (``out/hotspots.parquet``): model, score, gene, slide_id + :func:`find_hotspots` columns.
    geojson
        ``out/geojson/<slide_id>.geojson`` files, one per slide with hotspots.
    shap
        Tree-model name → :class:`ShapResult`.
    localisation
        ``RUN/localisation.parquet`` rows, or None when the run has no ``truth_tiles.parquet``.
    notes
        Things left out and why (e.g. a slide file that could not be opened).
    """

    out: Path
    report: Path | None = None
    figures: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    hotspots: pd.DataFrame | None = None
    geojson: list[Path] = field(default_factory=list)
    shap: dict[str, ShapResult] = field(default_factory=dict)
    localisation: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def add_figure(self, section: str, caption: str, path: Path) -> None:
        self.figures.setdefault(section, []).append((caption, Path(path)))

    def manifest(self) -> dict:
        return {
            "figures": {
                s: [[c, str(p.relative_to(self.out))] for c, p in v] for s, v in self.figures.items()
            },
            "geojson": [str(p.relative_to(self.out)) for p in self.geojson],
            "notes": list(self.notes),
        }


def _slide_geometry(store, slide_id: str) -> tuple[tuple[int, int], tuple[float, float]]:
    row = slide_row(store, slide_id)
    size = (int(row["width"]), int(row["height"]))
    mpp = (float(row["mpp_x"]), float(row["mpp_y"] or row["mpp_x"]))
    if min(size) <= 0 or not np.isfinite(mpp).all():
        raise ExplainError(
            f"slide {slide_id!r}: its slides/ row has no usable width/height/mpp; re-featurize it"
        )
    return size, mpp


def slide_score_maps(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    slide_id: str,
    gene: str,
    model: str = "mil",
    sigma: float = 0.0,
    shap_tiles: pd.DataFrame | None = None,
) -> dict[str, ScoreMap]:
    """Score maps of one slide and gene: ``"<model> attention"``, ``"<model> tile prediction"`` (when the model has
    per-tile predictions) and, given tile SHAP rows, ``"<tree model> SHAP"``."""
    run = load_run(run)
    tiles = read_tiles(store, run.tiling, slide_id)
    size, mpp = _slide_geometry(store, slide_id)
    att = run.table("attention")
    a = att[(att["model"] == model) & (att["gene"] == gene) & (att["slide_id"] == slide_id)]
    maps: dict[str, ScoreMap] = {}
    if not a.empty:
        a = a.groupby("tile_id").agg(
            attention=("attention", "mean"), tile_pred=("tile_pred", "mean"), bag_id=("bag_id", "first")
        )
        n_bag = int(
            ((att["model"] == model) & (att["gene"] == gene) & (att["bag_id"] == a["bag_id"].iloc[0])).sum()
        )
        a = a.reindex(tiles["tile_id"])
        maps[f"{model} attention"] = tile_score_map(
            tiles,
            a["attention"].to_numpy() * n_bag,
            slide_size=size,
            mpp=mpp,
            sigma=sigma,
            label="attention × bag size",
        )
        if a["tile_pred"].notna().any():
            maps[f"{model} tile prediction"] = tile_score_map(
                tiles,
                a["tile_pred"].to_numpy(dtype=np.float64),
                slide_size=size,
                mpp=mpp,
                sigma=sigma,
                label="tile prediction",
            )
    if shap_tiles is not None and not shap_tiles.empty:
        s = shap_tiles[(shap_tiles["gene"] == gene) & (shap_tiles["slide_id"] == slide_id)]
        for m, d in s.groupby("model"):
            v = d.set_index("tile_id")["shap_value"].reindex(tiles["tile_id"]).to_numpy(dtype=np.float64)
            maps[f"{m} SHAP"] = tile_score_map(
                tiles, v, slide_size=size, mpp=mpp, sigma=sigma, label="tile SHAP"
            )
    return maps


def _choose_slides(run: Run, *, genes, model: str, top_slides: int) -> dict[str, list[str]]:
    """gene → the slides (with attention) of the ``top_slides`` bags with the highest true expression."""
    att = run.table("attention")
    att = att[att["model"] == model]
    slides_of_bag = att.groupby("bag_id")["slide_id"].unique()
    preds = run.table("predictions")
    out = {}
    for g in genes:
        truth = preds[preds["gene"] == g].groupby("bag_id")["y_true"].first()
        truth = truth[truth.index.isin(slides_of_bag.index)].dropna()
        top = truth.sort_values(ascending=False, kind="stable").head(top_slides).index
        out[g] = [sorted(slides_of_bag[b])[0] for b in top]
    return out


def write_maps(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    out: str | os.PathLike,
    slides,
    genes=None,
    model: str = "mil",
    scales=("percentile", "raw"),
    raw_first: bool = False,
    sigma: float = 0.0,
    hotspots: pd.DataFrame | None = None,
    shap_tiles: pd.DataFrame | None = None,
    thumbnail_size: int = 1024,
    notes: list[str] | None = None,
) -> list[tuple[str, Path]]:
    """Write heatmap PNGs: ``out/<model>/<gene>/<slide_id>_<scale>.png`` for each gene, slide and colour scale.

    Each figure shows the H&E thumbnail and the slide's maps side by side (attention, tile prediction, and tile
    SHAP when ``shap_tiles`` is given), with ``hotspots`` outlined on the attention panel.

    Parameters
    ----------
    slides
        Slide ids for every gene, or a dict gene → slide ids.
    scales
        Colour scales to write (``"percentile"``: rank within the slide; ``"raw"``: the score itself).
    raw_first
        Add the attention map on the raw scale as an extra panel of every figure.
    notes
        Collects what was left out (a slide file that cannot be opened is drawn without its thumbnail).

    Returns
    -------
    list of (caption, path)
    """
    run = load_run(run)
    genes = list(run.genes if genes is None else genes)
    per_gene = slides if isinstance(slides, dict) else {g: list(slides) for g in genes}
    notes = notes if notes is not None else []
    out = Path(out)
    thumbs: dict[str, np.ndarray | None] = {}
    written = []
    for g in genes:
        for sid in per_gene.get(g, []):
            if sid not in thumbs:
                try:
                    thumbs[sid] = slide_thumbnail(store, sid, max_size=thumbnail_size)
                except ExplainError as exc:
                    thumbs[sid] = None
                    notes.append(f"maps of {sid} are drawn without the H&E thumbnail: {exc}")
            maps = slide_score_maps(
                run, store=store, slide_id=sid, gene=g, model=model, sigma=sigma, shap_tiles=shap_tiles
            )
            if not maps:
                notes.append(f"slide {sid} has no {model} attention or SHAP values for {g}: no map drawn")
                continue
            hs = None
            if hotspots is not None and len(hotspots):
                hs = hotspots[(hotspots["gene"] == g) & (hotspots["slide_id"] == sid)]
            n_hs = 0 if hs is None else len(hs)
            for scale in scales:
                fig = plot_slide_maps(
                    maps,
                    thumbnail=thumbs[sid],
                    scale=scale,
                    raw_first=raw_first,
                    title=f"{g} — {sid}",
                    hotspots=hs,
                    hotspots_on=f"{model} attention",
                )
                p = save_figure(fig, out / model / g / f"{sid}_{scale}.png")
                written.append((f"{g} on {sid} ({scale} colour scale): {n_hs} hotspot(s)", p))
    return written


def explain_run(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    out: str | os.PathLike | None = None,
    slides=None,
    genes=None,
    models=None,
    top_slides: int = 3,
    percentile: float = 90.0,
    min_cells: int = 2,
    sigma: float = 0.0,
    n_bins: int = 7,
    top_k: int = 5,
    report: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExplainResult:
    """Explain a run: maps, hotspots + GeoJSON, gallery, SHAP, localisation and the HTML report.

    Parameters
    ----------
    run
        Run directory written by ``regress.compare``.
    store
        The store it was trained on.
    out
        Output folder (default ``RUN/explain``).
    slides
        Slides to draw maps for (default, per gene, the slides of the ``top_slides`` bags with the highest true
        expression). Hotspots and GeoJSON cover every slide with attention either way.
    genes, models
        Subsets of the run's genes and models (default all).
    percentile, min_cells
        Hotspot threshold (percentile of the slide's tile scores) and smallest hotspot in grid cells.
    sigma
        Gaussian smoothing of the maps, in cells.
    n_bins, top_k
        Gallery: expression bins and tiles per bin.
    progress
        Called with a short message before each stage.

    Writes under ``out``: ``maps/<model>/<gene>/<slide_id>.png``, ``hotspots.parquet``,
    ``geojson/<slide_id>.geojson``, ``gallery/<model>_<gene>.png`` + ``gallery.parquet``, ``shap/global.parquet``,
    ``shap/tiles.parquet`` and figures, ``figures/*.png``, ``manifest.json``, ``report.html``; and
    ``RUN/localisation.parquet`` when ``RUN/truth_tiles.parquet`` exists.

    Returns
    -------
    ExplainResult
    """
    say = progress or (lambda msg: None)
    run = load_run(run)
    out = Path(out) if out is not None else run.path / "explain"
    out.mkdir(parents=True, exist_ok=True)
    res = ExplainResult(out=out)
    genes = list(run.genes if genes is None else genes)
    bad = [g for g in genes if g not in run.genes]
    if bad:
        raise ExplainError(f"genes {bad} are not in the run (it has {list(run.genes)})")
    models = list(run.models if models is None else models)
    bad = [m for m in models if m not in run.models]
    if bad:
        raise ExplainError(f"models {bad} are not in the run (it has {list(run.models)})")
    att = run.table("attention", required=False)
    att_models = [m for m in dict.fromkeys(att["model"]) if m in models] if att is not None else []
    map_model = "mil" if "mil" in att_models else (att_models[0] if att_models else None)
    colors = gene_colors(run.genes)

    # per-gene scatter
    say("scatter plots")
    preds = run.table("predictions")
    fig = plot_scatter(
        preds[preds["gene"].isin(genes) & preds["model"].isin(models)],
        genes=genes,
        metrics=run.table("metrics"),
    )
    res.add_figure(
        "scatter",
        "Held-out predictions vs true expression",
        save_figure(fig, out / "figures" / "scatter.png"),
    )

    # SHAP for tree baselines
    trees = [m for m in tree_models(run) if m in models]
    all_shap_tiles = []
    for m in trees:
        say(f"SHAP for {m}")
        sr = shap_tree(run, store=store, model=m, genes=genes)
        res.shap[m] = sr
        write_table_atomic(
            pa.Table.from_pandas(sr.global_importance, preserve_index=False),
            out / "shap" / f"global_{m}.parquet",
        )
        if not sr.tiles.empty:
            write_table_atomic(
                pa.Table.from_pandas(sr.tiles, preserve_index=False), out / "shap" / f"tiles_{m}.parquet"
            )
            all_shap_tiles.append(sr.tiles)
        res.add_figure(
            "shap",
            f"{m}: global importance of pooled features",
            save_figure(plot_shap_importance(sr), out / "shap" / f"importance_{m}.png"),
        )
        for g in genes:
            res.add_figure(
                "shap",
                f"{m}: SHAP summary for {g}",
                save_figure(plot_shap_summary(sr, gene=g), out / "shap" / f"summary_{m}_{g}.png"),
            )
    shap_tiles = pd.concat(all_shap_tiles, ignore_index=True) if all_shap_tiles else None

    if map_model is None:
        res.notes.append(
            "no MIL model with attention in the run: maps, hotspots and the gallery are left out"
        )
    else:
        # hotspots + GeoJSON for every slide with attention
        say(f"hotspots ({map_model} attention)")
        hs_rows = []
        att_slides = sorted(att.loc[att["model"] == map_model, "slide_id"].unique())
        for sid in att_slides:
            for g in genes:
                maps = slide_score_maps(run, store=store, slide_id=sid, gene=g, model=map_model, sigma=sigma)
                key = f"{map_model} attention"
                if key not in maps:
                    continue
                h = find_hotspots(maps[key], percentile=percentile, min_cells=min_cells)
                if not h.empty:
                    hs_rows.append(h.assign(model=map_model, score="attention", gene=g, slide_id=sid))
        cols = ["model", "score", "gene", "slide_id"]
        hotspots = pd.concat(hs_rows, ignore_index=True) if hs_rows else pd.DataFrame(columns=cols)
        if hs_rows:
            hotspots = hotspots[cols + [c for c in hotspots.columns if c not in cols]]
            write_table_atomic(pa.Table.from_pandas(hotspots, preserve_index=False), out / "hotspots.parquet")
            for sid, d in hotspots.groupby("slide_id", sort=True):
                res.geojson.append(
                    write_geojson(hotspots_to_geojson(d, colors=colors), out / "geojson" / f"{sid}.geojson")
                )
        res.hotspots = hotspots

        # maps for the chosen slides
        say("heatmaps")
        chosen = (
            {g: list(slides) for g in genes}
            if slides is not None
            else _choose_slides(run, genes=genes, model=map_model, top_slides=top_slides)
        )
        for caption, p in write_maps(
            run,
            store=store,
            out=out / "maps",
            slides=chosen,
            genes=genes,
            model=map_model,
            sigma=sigma,
            hotspots=hotspots,
            shap_tiles=shap_tiles,
            notes=res.notes,
            scales=("percentile",),
            raw_first=True,
        ):
            res.add_figure("heatmaps", caption, p)

        # gallery
        say("gallery")
        g_tables = []
        for g in genes:
            try:
                gal = gallery(run, store=store, gene=g, model=map_model, n_bins=n_bins, top_k=top_k)
            except ExplainError as exc:
                res.notes.append(f"gallery of {g} left out: {exc}")
                continue
            g_tables.append(gal.table)
            p = save_figure(plot_gallery(gal), out / "gallery" / f"{map_model}_{g}.png")
            res.add_figure("gallery", f"{g}: top-1 / top-{top_k} attention tiles per expression bin", p)
        if g_tables:
            write_table_atomic(
                pa.Table.from_pandas(pd.concat(g_tables, ignore_index=True), preserve_index=False),
                out / "gallery.parquet",
            )

    # localisation against truth
    truth_path = run.path / "truth_tiles.parquet"
    if truth_path.exists():
        say("localisation")
        truth = run.table("truth_tiles")
        scores = pd.concat(
            [attention_scores(run, models=att_models), shap_scores(shap_tiles)], ignore_index=True
        )
        scores = scores[scores["gene"].isin(genes)]
        loc = localisation_auroc(scores, truth=truth)
        write_table_atomic(pa.Table.from_pandas(loc, preserve_index=False), run.path / "localisation.parquet")
        res.localisation = loc
        res.add_figure(
            "localisation",
            "Localisation AUROC per gene",
            save_figure(plot_localisation(loc), out / "figures" / "localisation.png"),
        )
    else:
        res.notes.append(f"no {truth_path.name} in the run: localisation against truth is left out")

    write_bytes_atomic(out / MANIFEST, json.dumps(res.manifest(), indent=1).encode())
    if report:
        say("report")
        from slide2expr.explain._report import write_report

        res.report = write_report(run, explain_dir=out)
    return res
