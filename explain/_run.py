"""``explain_run``: every explain output of a run directory, then the HTML report."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from slide2expr.contract import staged_output_dir, write_bytes_atomic, write_table_atomic
from slide2expr.explain._figures import plot_scatter, save_figure
from slide2expr.explain._gallery import gallery, plot_gallery
from slide2expr.explain._hotspots import find_hotspots, gene_colors, hotspots_to_geojson, write_geojson
from slide2expr.explain._inputs import ExplainError, Run, load_run, read_tiles, slide_row
from slide2expr.explain._layout import check_explain_out, heatmap_path
from slide2expr.explain._localisation import (
    attention_scores,
    bag_tiles,
    localisation_auroc,
    plot_localisation,
    shap_scores,
)
from slide2expr.explain._maps import ScoreMap, plot_slide_maps, tile_score_map
from slide2expr.explain._overlay import write_overlay
from slide2expr.explain._plan import OVERLAY_SCORES, ExplainPlan, plan_explain
from slide2expr.explain._qupath import write_detections
from slide2expr.explain._report import write_report
from slide2expr.explain._shap import ShapResult, explain_folds, plot_shap_importance, plot_shap_summary
from slide2expr.explain._slides import slide_thumbnail
from slide2expr.regress import peak_rss_gb


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
    detections
        ``out/detections/<slide_id>.geojson`` files: every tile of each slide with attention, as QuPath detections.
    overlays
        ``out/overlays/<model>/<gene>/<slide_id>_<score>.tiff`` pyramidal TIFF overlays (``overlays=True``).
    shap
        Tree-model name → :class:`ShapResult`.
    localisation
        ``RUN/localisation.parquet`` rows, or None when the run has no ``truth_tiles.parquet``.
    notes
        Things left out and why (e.g. a slide file that could not be opened).
    stages
        Each stage written → ``{"seconds", "peak_rss_gb"}`` (the process's peak resident memory when it ended).
    """

    out: Path
    report: Path | None = None
    figures: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    hotspots: pd.DataFrame | None = None
    geojson: list[Path] = field(default_factory=list)
    detections: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    shap: dict[str, ShapResult] = field(default_factory=dict)
    localisation: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def add_figure(self, section: str, caption: str, path: Path) -> None:
        self.figures.setdefault(section, []).append((caption, Path(path)))

    def manifest(self) -> dict:
        def rel(paths):
            return [str(p.relative_to(self.out)) for p in paths]

        return {
            "figures": {
                s: [[c, str(p.relative_to(self.out))] for c, p in v] for s, v in self.figures.items()
            },
            "geojson": rel(self.geojson),
            "detections": rel(self.detections),
            "overlays": rel(self.overlays),
            "notes": list(self.notes),
        }

    def moved(self, to: Path) -> ExplainResult:
        """The same result with every path under ``out`` moved under ``to`` (the staged folder swapped in)."""

        def move(p: Path | None) -> Path | None:
            return None if p is None else Path(to) / Path(p).relative_to(self.out)

        return dataclasses.replace(
            self,
            out=Path(to),
            report=move(self.report),
            figures={s: [(c, move(p)) for c, p in v] for s, v in self.figures.items()},
            geojson=[move(p) for p in self.geojson],
            detections=[move(p) for p in self.detections],
            overlays=[move(p) for p in self.overlays],
        )


class ExplainInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_plan`: nothing was written to ``out`` (its previous contents, and the run's
    ``localisation.parquet``, are unchanged).

    Attributes ``done`` (the stages finished, in order), ``stage`` (the one interrupted) and ``out``.
    """

    def __init__(self, done: list[str], stage: str | None, out: Path) -> None:
        self.done, self.stage, self.out = list(done), stage, Path(out)
        finished = f" after {', '.join(done)}" if done else ""
        super().__init__(
            f"interrupted during {stage or 'the start'}{finished}: nothing written to {out} (its previous "
            "contents are unchanged)"
        )


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
    a = run.slide_attention(model, slide_id)
    a = a[a["gene"] == gene]
    maps: dict[str, ScoreMap] = {}
    if a.empty and (shap_tiles is None or shap_tiles.empty):
        return maps
    tiles = read_tiles(store, run.tiling, slide_id)
    size, mpp = _slide_geometry(store, slide_id)
    if not a.empty:
        a = a.groupby("tile_id").agg(
            attention=("attention", "mean"), tile_pred=("tile_pred", "mean"), bag_id=("bag_id", "first")
        )
        n_bag = bag_tiles(run, model=model, gene=gene, bag_id=a["bag_id"].iloc[0])
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
    pairs = list(dict.fromkeys((g, sid) for g in genes for sid in per_gene.get(g, [])))
    drawn: dict[tuple[str, str], list[tuple[str, Path]]] = {}
    # slide by slide, so that each slide's attention is read once; returned in gene order
    for g, sid in sorted(pairs, key=lambda pair: pair[1]):
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
            p = save_figure(fig, heatmap_path(out, model, g, sid, scale))
            caption = f"{g} on {sid} ({scale} colour scale): {n_hs} hotspot(s)"
            drawn.setdefault((g, sid), []).append((caption, p))
    return [w for pair in pairs for w in drawn.get(pair, [])]


def explain_run(
    run: str | os.PathLike | Run,
    *,
    store: str | os.PathLike,
    out: str | os.PathLike | None = None,
    slides=None,
    genes=None,
    models=None,
    top_slides: int = 3,
    top_by: str = "highest",
    hotspots_on: str = "auto",
    percentile: float = 90.0,
    min_cells: int = 2,
    sigma: float = 0.0,
    n_bins: int = 7,
    top_k: int = 5,
    report: bool = True,
    overwrite: bool = False,
    detections: bool = True,
    overlays: bool = False,
    gallery: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExplainResult:
    """Explain a run: maps, hotspots + GeoJSON, QuPath detections, gallery, SHAP, localisation and the HTML report.

    Everything is checked first (:func:`plan_explain`, the checks of ``--dry-run``), then written into a hidden
    folder beside ``out`` that replaces ``out`` only once complete: a failed or interrupted run leaves an earlier
    output (and the run's ``localisation.parquet``) byte for byte as it was.

    Parameters
    ----------
    run
        Run directory written by ``regress.compare``, or prediction directory written by ``regress.predict`` (new
        slides: maps, hotspots and detections as for a run; no SHAP, and no scatter plot or gallery without true
        expression; the plan's notes say what is left out).
    store
        The store the run was made from.
    out
        Output folder (default ``RUN/explain``). A folder that is not empty is refused
        (:class:`~slide2expr.contract.OutputExistsError`) unless ``overwrite``, which replaces it as a whole when
        it holds only explain's outputs.
    slides
        Slides to draw maps for (default, per gene, the slides of the ``top_slides`` bags ranked by ``top_by``).
    top_slides, top_by
        Without ``slides``: how many bags per gene, and how they are ranked: ``"highest"`` or ``"lowest"`` true
        expression (predicted expression when there is none), or ``"largest-error"`` (|predicted − true| of the
        map model; needs true expression). Only the run's tables are read to rank them.
    hotspots_on
        The slides hotspots, their GeoJSON and the QuPath detections cover: ``"all"`` slides with attention,
        the ``"maps"`` slides only, or ``"auto"`` (all up to 200 slides with attention, else the map slides, with
        a note). With the map slides only, explain reads the attention rows of those slides and no others.
    genes, models
        Subsets of the run's genes and models (default all).
    percentile, min_cells
        Hotspot threshold (percentile of the slide's tile scores) and smallest hotspot in grid cells.
    sigma
        Gaussian smoothing of the maps, in cells.
    n_bins, top_k
        Gallery: expression bins and tiles per bin.
    detections
        Write every tile of each hotspot slide (``hotspots_on``) as a QuPath detection with its measurements.
    gallery
        Write the gallery (it reads each gene's attention on every bag; needs true expression).
    overlays
        Write a pyramidal TIFF per map slide, gene and score (attention, tile prediction), aligned to the slide's
        level-0 pixels (:func:`write_overlay`).
    progress
        Called with a short message before each stage.

    Writes under ``out``: ``maps/<model>/<gene>/<slide_id>_percentile.png``, ``hotspots.parquet``,
    ``geojson/<slide_id>.geojson`` (hotspots as annotations), ``detections/<slide_id>.geojson`` (tiles as
    detections), ``overlays/<model>/<gene>/<slide_id>_<score>.tiff``, ``gallery/<model>_<gene>.png`` +
    ``gallery.parquet``, ``shap/global_<model>.parquet``, ``shap/tiles_<model>.parquet`` and figures,
    ``figures/*.png``, ``manifest.json``, ``report.html``; and ``RUN/localisation.parquet`` when
    ``RUN/truth_tiles.parquet`` exists (:meth:`ExplainPlan.outputs` lists them).

    Returns
    -------
    ExplainResult

    Raises
    ------
    ExplainInterrupted
        Ctrl-C: says which stages were done; nothing was written.
    """
    plan = plan_explain(
        run,
        store=store,
        out=out,
        slides=slides,
        genes=genes,
        models=models,
        top_slides=top_slides,
        top_by=top_by,
        hotspots_on=hotspots_on,
        percentile=percentile,
        min_cells=min_cells,
        sigma=sigma,
        n_bins=n_bins,
        top_k=top_k,
        report=report,
        overwrite=overwrite,
        detections=detections,
        overlays=overlays,
        gallery=gallery,
    )
    return run_plan(plan, progress=progress)


class _Stages:
    """The stage being written and those finished, reported to ``progress``; :attr:`table` maps each finished
    stage to its ``seconds`` and the process's ``peak_rss_gb`` when it ended."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress, self.done, self.current = progress, [], None
        self.table: dict[str, dict[str, float]] = {}
        self._t0 = time.perf_counter()

    def __call__(self, stage: str) -> None:
        self.finish()
        self.current = stage
        if self.progress is not None:
            self.progress(stage)

    def finish(self) -> None:
        """Close the current stage, if any."""
        now = time.perf_counter()
        if self.current is not None:
            self.done.append(self.current)
            self.table[self.current] = {"seconds": now - self._t0, "peak_rss_gb": peak_rss_gb()}
        self.current, self._t0 = None, now


class _KeepFile:
    """A file's bytes as they were (or its absence), to put back when a run fails after replacing it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data = self.path.read_bytes() if self.path.is_file() else None

    def restore(self) -> None:
        if self.data is not None:
            write_bytes_atomic(self.path, self.data)
        else:
            self.path.unlink(missing_ok=True)


def run_plan(plan: ExplainPlan, *, progress: Callable[[str], None] | None = None) -> ExplainResult:
    """Write what ``plan`` (from :func:`plan_explain`) lists into a staged folder swapped in at ``plan.out``;
    see :func:`explain_run`."""
    check_explain_out(plan.out, overwrite=plan.overwrite)
    stages = _Stages(progress)
    kept = _KeepFile(plan.run.layout.localisation) if plan.localisation else None
    try:
        with staged_output_dir(plan.out) as tmp:
            res = _write_all(dataclasses.replace(plan, out=tmp), stages)
    except KeyboardInterrupt:
        if kept is not None:
            kept.restore()
        raise ExplainInterrupted(stages.done, stages.current, plan.out) from None
    except BaseException:
        if kept is not None:
            kept.restore()
        raise
    return res.moved(plan.out)


def _write_all(plan: ExplainPlan, stage: _Stages) -> ExplainResult:
    """Every output of ``plan`` under ``plan.out``, then ``RUN/localisation.parquet`` and the report."""
    res = ExplainResult(out=plan.out, notes=list(plan.notes))
    if plan.scatter:
        stage("scatter plots")
        _write_scatter(plan, res)
    shap_tiles = _write_shap(plan, res, stage)
    if plan.map_model is None:
        res.notes.append("no model with attention in the run: maps, hotspots and the gallery are left out")
    else:
        stage(f"hotspots ({plan.map_model} attention)")
        res.hotspots = _write_hotspots(plan, res)
        if plan.detections:
            stage("QuPath detections")
            _write_detections(plan, res)
        stage("heatmaps")
        _write_heatmaps(plan, res, shap_tiles)
        if plan.overlays:
            stage("pyramidal TIFF overlays")
            _write_overlays(plan, res)
        if plan.gallery:
            stage("gallery")
            _write_gallery(plan, res)
    if plan.localisation:
        stage("localisation")
        _write_localisation(plan, res, shap_tiles)
    else:
        res.notes.append(
            f"no {plan.run.layout.truth_tiles.name} in the run: localisation against truth is left out"
        )
    manifest = res.manifest() | {"map_slides": {"chosen_by": plan.map_slides_by, "slides": plan.map_slides}}
    write_bytes_atomic(plan.layout.manifest, json.dumps(manifest, indent=1).encode())
    if plan.report:
        stage("report")
        res.report = write_report(plan.run, explain_dir=plan.out, store=plan.store)
    stage.finish()
    res.stages = stage.table
    return res


def _write_table(df: pd.DataFrame, path: Path) -> Path:
    return write_table_atomic(pa.Table.from_pandas(df, preserve_index=False), path)


def _write_scatter(plan: ExplainPlan, res: ExplainResult) -> None:
    """``figures/scatter.png``: held-out (or new) bags' predictions against truth, per gene."""
    preds = plan.run.table("predictions")
    fig = plot_scatter(
        preds[preds["gene"].isin(plan.genes) & preds["model"].isin(plan.models)],
        genes=plan.genes,
        metrics=plan.run.table("metrics", required=False),
    )
    caption = (
        "Predictions on new slides vs true expression"
        if plan.kind == "predictions"
        else "Held-out predictions vs true expression"
    )
    res.add_figure("scatter", caption, save_figure(fig, plan.layout.scatter))


def _write_shap(plan: ExplainPlan, res: ExplainResult, say) -> pd.DataFrame | None:
    """SHAP tables and figures of each tree model; returns the tile SHAP rows of all of them (None if none)."""
    lay, all_tiles = plan.layout, []
    for m in plan.trees:
        say(f"SHAP for {m}")
        sr = explain_folds(plan.run, store=plan.store, model=m, fitted=plan.fitted[m], genes=list(plan.genes))
        res.shap[m] = sr
        _write_table(sr.global_importance, lay.shap_global(m))
        if not sr.tiles.empty:
            _write_table(sr.tiles, lay.shap_tiles(m))
            all_tiles.append(sr.tiles)
        res.add_figure(
            "shap",
            f"{m}: global importance of pooled features",
            save_figure(plot_shap_importance(sr), lay.shap_importance(m)),
        )
        for g in plan.genes:
            fig = plot_shap_summary(sr, gene=g)
            res.add_figure("shap", f"{m}: SHAP summary for {g}", save_figure(fig, lay.shap_summary(m, g)))
    return pd.concat(all_tiles, ignore_index=True) if all_tiles else None


def _write_hotspots(plan: ExplainPlan, res: ExplainResult) -> pd.DataFrame:
    """Hotspots of ``map_model`` attention on every slide with attention: ``hotspots.parquet`` and GeoJSON."""
    model, key, rows = plan.map_model, f"{plan.map_model} attention", []
    for sid in plan.hotspot_slides:
        for g in plan.genes:
            maps = slide_score_maps(
                plan.run, store=plan.store, slide_id=sid, gene=g, model=model, sigma=plan.sigma
            )
            if key not in maps:
                continue
            h = find_hotspots(maps[key], percentile=plan.percentile, min_cells=plan.min_cells)
            if not h.empty:
                rows.append(h.assign(model=model, score="attention", gene=g, slide_id=sid))
    cols = ["model", "score", "gene", "slide_id"]
    if not rows:
        return pd.DataFrame(columns=cols)
    hotspots = pd.concat(rows, ignore_index=True)
    hotspots = hotspots[cols + [c for c in hotspots.columns if c not in cols]]
    _write_table(hotspots, plan.layout.hotspots)
    colors = gene_colors(plan.run.genes)
    for sid, d in hotspots.groupby("slide_id", sort=True):
        res.geojson.append(write_geojson(hotspots_to_geojson(d, colors=colors), plan.layout.geojson(sid)))
    return hotspots


def _write_detections(plan: ExplainPlan, res: ExplainResult) -> None:
    """``detections/<slide_id>.geojson``: every tile of each slide with attention, as QuPath detections."""
    for sid in plan.hotspot_slides:
        size, _ = _slide_geometry(plan.store, sid)
        scores = attention_scores(plan.run, models=[plan.map_model], slides=[sid], genes=list(plan.genes))
        res.detections.append(
            write_detections(
                plan.run,
                store=plan.store,
                slide_id=sid,
                path=plan.layout.detections(sid),
                model=plan.map_model,
                genes=list(plan.genes),
                scores=scores,
                slide_size=size,
            )
        )


def _write_overlays(plan: ExplainPlan, res: ExplainResult) -> None:
    """``overlays/<model>/<gene>/<slide_id>_<score>.tiff``: the heatmaps' score maps as pyramidal TIFFs."""
    model = plan.map_model
    for g in plan.genes:
        for sid in plan.map_slides.get(g, []):
            maps = slide_score_maps(
                plan.run, store=plan.store, slide_id=sid, gene=g, model=model, sigma=plan.sigma
            )
            for suffix, score in OVERLAY_SCORES.items():
                m = maps.get(f"{model} {score}")
                if m is None:
                    continue
                description = (
                    f"slide2expr overlay of {sid}: {g} {score} of {model}, percentile within the slide, inferno "
                    "colour map (dark: lowest, pale yellow: highest), white: no tile"
                )
                res.overlays.append(
                    write_overlay(m, plan.layout.overlay(model, g, sid, suffix), description=description)
                )


def _write_heatmaps(plan: ExplainPlan, res: ExplainResult, shap_tiles: pd.DataFrame | None) -> None:
    """Heatmaps of the chosen slides (percentile scale, attention also raw), hotspots outlined."""
    for caption, p in write_maps(
        plan.run,
        store=plan.store,
        out=plan.layout.maps,
        slides=plan.map_slides,
        genes=list(plan.genes),
        model=plan.map_model,
        sigma=plan.sigma,
        hotspots=res.hotspots,
        shap_tiles=shap_tiles,
        notes=res.notes,
        scales=("percentile",),
        raw_first=True,
    ):
        res.add_figure("heatmaps", caption, p)


def _write_gallery(plan: ExplainPlan, res: ExplainResult) -> None:
    """The gallery of each gene (a figure each) and ``gallery.parquet``; a gene without one gets a note."""
    tables = []
    index = plan.run.attention_index()
    with_attention = set(index.loc[index["model"] == plan.map_model, "gene"])
    for g in plan.genes:
        if g not in with_attention:
            continue  # the plan's notes name the genes without attention
        try:
            gal = gallery(
                plan.run, store=plan.store, gene=g, model=plan.map_model, n_bins=plan.n_bins, top_k=plan.top_k
            )
        except ExplainError as exc:
            res.notes.append(f"gallery of {g} left out: {exc}")
            continue
        tables.append(gal.table)
        p = save_figure(plot_gallery(gal), plan.layout.gallery_figure(plan.map_model, g))
        res.add_figure("gallery", f"{g}: top-1 / top-{plan.top_k} attention tiles per expression bin", p)
    if tables:
        _write_table(pd.concat(tables, ignore_index=True), plan.layout.gallery)


def _write_localisation(plan: ExplainPlan, res: ExplainResult, shap_tiles: pd.DataFrame | None) -> None:
    """AUROC of attention, tile predictions and tile SHAP against the truth tiles: ``RUN/localisation.parquet``."""
    truth = plan.run.table("truth_tiles")
    scores = pd.concat(
        [attention_scores(plan.run, models=plan.attention_models), shap_scores(shap_tiles)], ignore_index=True
    )
    scores = scores[scores["gene"].isin(plan.genes)]
    loc = localisation_auroc(scores, truth=truth)
    _write_table(loc, plan.run.layout.localisation)
    res.localisation = loc
    fig = plot_localisation(loc)
    res.add_figure(
        "localisation", "Localisation AUROC per gene", save_figure(fig, plan.layout.localisation_figure)
    )
