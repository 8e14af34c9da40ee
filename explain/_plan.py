"""``plan_explain``: every check :func:`explain_run` makes before it writes, and the list of what it will write."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slide2expr.explain._gallery import check_gallery_args
from slide2expr.explain._hotspots import check_hotspot_args
from slide2expr.explain._inputs import (
    ExplainError,
    Run,
    check_store_dir,
    load_run,
    read_tiles,
    slide_row,
)
from slide2expr.explain._layout import ExplainLayout
from slide2expr.explain._maps import check_sigma
from slide2expr.explain._shap import check_genes, tree_fits

#: The attention model drawn in maps, hotspots and the gallery when the run has it.
PREFERRED_MAP_MODEL = "mil"


@dataclass(frozen=True)
class ExplainPlan:
    """What :func:`explain_run` does with a run, checked against the run, its store and its fitted models.

    Attributes
    ----------
    run, store, out
        The run, its store, and the output folder.
    genes, models
        The genes and models explained.
    trees
        The models explained with SHAP (those whose fitted pipelines end in tree regressors).
    map_model
        The attention model of the maps, hotspots and gallery; None when no model of ``models`` has attention.
    attention_models
        The models of ``models`` with rows in ``attention.parquet`` (scored for localisation).
    hotspot_slides
        Every slide with ``map_model`` attention: hotspots and GeoJSON are looked for on each.
    map_slides
        Gene → the slides whose heatmaps are drawn.
    localisation
        Whether the run has ``truth_tiles.parquet`` (localisation is measured and written to the run).
    percentile, min_cells, sigma, n_bins, top_k, report
        As given to :func:`explain_run`.
    fitted
        Tree model → its fitted estimators by fold.
    """

    run: Run
    store: Path
    out: Path
    genes: tuple[str, ...]
    models: tuple[str, ...]
    trees: tuple[str, ...]
    map_model: str | None
    attention_models: tuple[str, ...]
    hotspot_slides: tuple[str, ...]
    map_slides: dict[str, list[str]]
    localisation: bool
    percentile: float = 90.0
    min_cells: int = 2
    sigma: float = 0.0
    n_bins: int = 7
    top_k: int = 5
    report: bool = True
    fitted: dict[str, dict[int, object]] = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> ExplainLayout:
        return ExplainLayout(self.out)

    def outputs(self) -> list[Path]:
        """Every file the run may write, in writing order.

        Hotspot tables and GeoJSON are written only for slides where hotspots are found, tile SHAP tables only
        when held-out tiles are explained, and a heatmap only where its slide has attention for the gene.
        """
        lay, paths = self.layout, [self.layout.scatter]
        for m in self.trees:
            paths += [lay.shap_global(m), lay.shap_tiles(m), lay.shap_importance(m)]
            paths += [lay.shap_summary(m, g) for g in self.genes]
        if self.map_model is not None:
            paths.append(lay.hotspots)
            paths += [lay.geojson(s) for s in self.hotspot_slides]
            paths += [
                lay.heatmap(self.map_model, g, s) for g in self.genes for s in self.map_slides.get(g, [])
            ]
            paths += [lay.gallery_figure(self.map_model, g) for g in self.genes]
            paths.append(lay.gallery)
        if self.localisation:
            paths += [self.run.layout.localisation, lay.localisation_figure]
        paths.append(lay.manifest)
        if self.report:
            paths.append(lay.report)
        return paths


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


def _check_models(run: Run, models) -> list[str]:
    models = list(run.models if models is None else models)
    bad = [m for m in models if m not in run.models]
    if bad:
        raise ExplainError(f"models {bad} are not in the run (it has {list(run.models)})")
    return models


def _check_slides(run: Run, store, slides) -> None:
    """Each given slide has a slides/ row and a tile grid at the run's tiling."""
    for sid in slides:
        slide_row(store, sid)
        read_tiles(store, run.tiling, sid)


def plan_explain(
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
) -> ExplainPlan:
    """Check the arguments of :func:`explain_run` against the run, the store and the models; write nothing.

    Raises :class:`ExplainError` naming what is wrong (a run directory or store that is not one, genes or models
    the run lacks, slides without a tile grid, a missing run table, parameters out of range). The arguments are
    those of :func:`explain_run`.

    Returns
    -------
    ExplainPlan
    """
    run = load_run(run)
    check_store_dir(store)
    genes = check_genes(run, genes)
    models = _check_models(run, models)
    if top_slides < 1:
        raise ExplainError(f"top_slides must be at least 1, got {top_slides}")
    check_hotspot_args(percentile, min_cells)
    check_sigma(sigma)
    check_gallery_args(n_bins, top_k)
    if slides is not None:
        _check_slides(run, store, slides)
    run.table("predictions")
    run.table("metrics")
    att = run.table("attention", required=False)
    att_models = [m for m in dict.fromkeys(att["model"]) if m in models] if att is not None else []
    map_model = (
        PREFERRED_MAP_MODEL if PREFERRED_MAP_MODEL in att_models else (att_models[0] if att_models else None)
    )
    fitted = tree_fits(run, models=models)
    if fitted:
        run.table("folds")
    hotspot_slides, map_slides = (), {}
    if map_model is not None:
        hotspot_slides = tuple(sorted(att.loc[att["model"] == map_model, "slide_id"].unique()))
        map_slides = (
            {g: list(slides) for g in genes}
            if slides is not None
            else _choose_slides(run, genes=genes, model=map_model, top_slides=top_slides)
        )
    return ExplainPlan(
        run=run,
        store=Path(store),
        out=Path(out) if out is not None else run.layout.explain,
        genes=tuple(genes),
        models=tuple(models),
        trees=tuple(fitted),
        map_model=map_model,
        attention_models=tuple(att_models),
        hotspot_slides=hotspot_slides,
        map_slides=map_slides,
        localisation=run.layout.truth_tiles.exists(),
        percentile=percentile,
        min_cells=min_cells,
        sigma=sigma,
        n_bins=n_bins,
        top_k=top_k,
        report=report,
        fitted=fitted,
    )
