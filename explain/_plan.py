"""``plan_explain``: every check :func:`explain_run` makes before it writes, and the list of what it will write."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slide2expr.contract import StorePath
from slide2expr.explain._gallery import check_gallery_args
from slide2expr.explain._hotspots import check_hotspot_args
from slide2expr.explain._inputs import (
    ExplainError,
    Run,
    as_explain_error,
    check_store_dir,
    is_prediction_dir,
    load_run,
    read_slides,
    tile_grid_exists,
)
from slide2expr.explain._layout import ExplainLayout, check_explain_out
from slide2expr.explain._maps import check_sigma
from slide2expr.explain._shap import check_genes, tree_fits

#: The attention model drawn in maps, hotspots and the gallery when the run has it.
PREFERRED_MAP_MODEL = "mil"
#: Where hotspots, GeoJSON and QuPath detections are looked for (``hotspots_on``): every slide with attention, the
#: map slides only, or ``"auto"``: every slide up to :data:`HOTSPOTS_ALL_UP_TO` slides with attention, else the map
#: slides (a large run is then explained by reading only its chosen slides).
HOTSPOTS_ON = ("auto", "all", "maps")
HOTSPOTS_ALL_UP_TO = 200
#: The score maps written as pyramidal TIFF overlays (``overlays=True``), by their file-name suffix.
OVERLAY_SCORES = {"attention": "attention", "prediction": "tile prediction"}


class LearnedNothingWarning(UserWarning):
    """A model of the run predicts the same value for every bag (``regress.learned_nothing``): it is not
    explained with SHAP, whose values would all be zero."""


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
        The slides hotspots, GeoJSON and detections are looked for on (``hotspots_on``): every slide with
        ``map_model`` attention, or the map slides.
    map_slides
        Gene → the slides whose heatmaps are drawn.
    localisation
        Whether the run has ``truth_tiles.parquet`` (localisation is measured and written to the run).
    percentile, min_cells, sigma, n_bins, top_k, report, overwrite, detections, overlays
        As given to :func:`explain_run` (``report`` False where the report does not apply).
    fitted
        Tree model → its fitted estimators by fold.
    kind
        ``"run"`` (a compare run) or ``"predictions"`` (a prediction directory written by ``predict``).
    scatter, gallery
        Whether the scatter plot and the gallery apply (both need true expression).
    learned_nothing
        Tree models left out of SHAP because every fold model predicts the same for every bag.
    map_slides_by
        How the slides that get heatmaps were chosen, in words (``"highest true expression"``, ``"largest
        error of mil"``, ``"--slides"``).
    notes
        What is left out and why, known before anything is written.
    """

    run: Run
    store: StorePath
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
    kind: str = "run"
    overwrite: bool = False
    detections: bool = True
    overlays: bool = False
    scatter: bool = True
    gallery: bool = True
    learned_nothing: tuple[str, ...] = ()
    map_slides_by: str = "highest true expression"
    notes: tuple[str, ...] = ()

    @property
    def layout(self) -> ExplainLayout:
        return ExplainLayout(self.out)

    def outputs(self) -> list[Path]:
        """Every file the run may write, in writing order.

        Hotspot tables and GeoJSON are written only for slides where hotspots are found, tile SHAP tables only
        when held-out tiles are explained, and a heatmap only where its slide has attention for the gene.
        """
        lay = self.layout
        paths = [lay.scatter] if self.scatter else []
        for m in self.trees:
            paths += [lay.shap_global(m), lay.shap_tiles(m), lay.shap_importance(m)]
            paths += [lay.shap_summary(m, g) for g in self.genes]
        if self.map_model is not None:
            paths.append(lay.hotspots)
            paths += [lay.geojson(s) for s in self.hotspot_slides]
            if self.detections:
                paths += [lay.detections(s) for s in self.hotspot_slides]
            paths += [
                lay.heatmap(self.map_model, g, s) for g in self.genes for s in self.map_slides.get(g, [])
            ]
            if self.overlays:
                paths += [
                    lay.overlay(self.map_model, g, s, score)
                    for g in self.genes
                    for s in self.map_slides.get(g, [])
                    for score in OVERLAY_SCORES
                ]
            if self.gallery:
                paths += [lay.gallery_figure(self.map_model, g) for g in self.genes]
                paths.append(lay.gallery)
        if self.localisation:
            paths += [self.run.layout.localisation, lay.localisation_figure]
        paths.append(lay.manifest)
        if self.report:
            paths.append(lay.report)
        return paths


def _has_truth(run: Run) -> bool:
    """Whether the run's predictions carry any true expression (a prediction directory may have none)."""
    return bool(np.isfinite(run.table("predictions")["y_true"].to_numpy(dtype=np.float64)).any())


#: How explain picks the bags whose slides get heatmaps when no slides are given (``top_by``).
TOP_BY = ("highest", "lowest", "largest-error")


def _choose_slides(
    run: Run, *, genes, model: str, top_slides: int, by: str, top_by: str = "highest"
) -> dict[str, list[str]]:
    """gene → the slides of the ``top_slides`` bags with ``model``'s attention for the gene, ranked by ``top_by``:
    the highest or lowest ``by`` (``"y_true"`` or ``"y_pred"``) expression, or the largest absolute error of
    ``model``'s prediction (|y_pred − y_true|); a gene without attention gets none. Only the run's predictions
    and attention index are read, whatever the cohort's size."""
    att = run.attention_index()
    att = att[att["model"] == model]
    slides = {g: d.groupby("bag_id")["slide_id"].unique() for g, d in att.groupby("gene")}
    preds = run.table("predictions")
    if by == "y_pred" or top_by == "largest-error":
        preds = preds[preds["model"] == model]
    out = {}
    for g in genes:
        slides_of_bag = slides.get(g)
        if slides_of_bag is None:
            out[g] = []
            continue
        rows = preds[preds["gene"] == g].groupby("bag_id")
        if top_by == "largest-error":
            value = (
                rows["y_pred"].mean() - rows["y_true"].first()
            ).abs()  # a bag's folds: its mean prediction
        else:
            value = rows[by].first()
        value = value[value.index.isin(slides_of_bag.index)].dropna()
        top = value.sort_values(ascending=top_by == "lowest", kind="stable").head(top_slides).index
        out[g] = [sorted(slides_of_bag[b])[0] for b in top]
    return out


def _note_genes_without_attention(att, model: str, genes, notes: list[str]) -> None:
    """A note naming the genes the run recorded no ``model`` attention for (a run at scale records a few)."""
    have = set(att.loc[att["model"] == model, "gene"])
    missing = [g for g in genes if g not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        notes.append(
            f"{len(missing)} of {len(genes)} genes have no {model} attention in the run ({shown}): no maps, "
            "hotspots or gallery for them (compare records attention for the genes its memory bound allows)"
        )


def _hotspot_slides(with_attention, map_slides: dict, hotspots_on: str, notes: list[str]) -> tuple[str, ...]:
    """The slides of ``with_attention`` that hotspots and detections cover (``hotspots_on``, :data:`HOTSPOTS_ON`);
    a note says when ``"auto"`` leaves slides out."""
    n = len(with_attention)
    if hotspots_on == "all" or (hotspots_on == "auto" and n <= HOTSPOTS_ALL_UP_TO):
        return tuple(with_attention)
    chosen = {s for v in map_slides.values() for s in v}
    out = tuple(s for s in with_attention if s in chosen)
    if hotspots_on == "auto":
        notes.append(
            f"hotspots and QuPath detections cover the {len(out)} map slides, not all {n} slides with attention "
            f"(more than {HOTSPOTS_ALL_UP_TO}): hotspots_on='all' (--hotspots-on all) covers every slide"
        )
    return out


def _check_models(run: Run, models) -> list[str]:
    models = list(run.models if models is None else models)
    bad = [m for m in models if m not in run.models]
    if bad:
        raise ExplainError(f"models {bad} are not in the run (it has {list(run.models)})")
    return models


def _check_slides(run: Run, store, slides, *, what: str) -> None:
    """Each slide has an ok slides/ row with a usable size and resolution, and a tile grid at the run's tiling."""
    if not len(slides):
        return
    rows = read_slides(store).set_index("slide_id")
    missing = [s for s in slides if s not in rows.index]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ExplainError(
            f"{what} {shown} {'is' if len(missing) == 1 else 'are'} not in the store {store}: pass the store the "
            f"run was made from (its config.json says {run.config.get('store')})"
        )
    for sid in slides:
        row = rows.loc[sid]
        size = np.asarray([row.get("width"), row.get("height"), row.get("mpp_x")], dtype=np.float64)
        if row.get("status") != "ok" or not np.isfinite(size).all() or (size <= 0).any():
            raise ExplainError(
                f"slide {sid!r} has status {row.get('status')!r} and no usable width/height/mpp in {store}/slides: "
                "re-featurize it"
            )
        if not tile_grid_exists(store, run.tiling, sid):
            raise ExplainError(
                f"slide {sid!r} has no tile grid at tiling {run.tiling} in {store}: featurize it at that tiling"
            )


def _learned_nothing(fitted: dict[str, dict[int, object]]) -> tuple[dict, list[str], list[str]]:
    """(the tree models that learned something, the models that learned nothing, notes)."""
    from slide2expr import regress

    keep, nothing, notes = {}, [], []
    for m, folds in fitted.items():
        empty = sorted(k for k, est in folds.items() if regress.learned_nothing(est))
        if len(empty) == len(folds):
            nothing.append(m)
            continue
        keep[m] = folds
        if empty:
            notes.append(
                f"{m}: the models of folds {empty} predict the same value for every bag (no split); their "
                "held-out bags have SHAP values of 0"
            )
    return keep, nothing, notes


def _shap_models(run: Run, models, *, predicted: bool, notes: list[str]) -> tuple[dict, list[str]]:
    """(tree model → fitted fold estimators to explain with SHAP, the tree models that learned nothing); appends
    to ``notes`` what is left out and warns :class:`LearnedNothingWarning`."""
    if predicted:
        notes.append(
            "SHAP explains the cross-validation fold models of a compare run; a prediction directory holds one "
            "model applied to new slides: no SHAP"
        )
        return {}, []
    fitted, nothing, more = _learned_nothing(tree_fits(run, models=models))
    notes += more
    for m in nothing:
        message = (
            f"{m} learned nothing: every fold model predicts the same value for every bag (for LightGBM: no "
            "split, too few patients for its minimum leaf size), so it is not explained with SHAP"
        )
        warnings.warn(message, LearnedNothingWarning, stacklevel=3)
        notes.append(message)
    if fitted:
        run.table("folds")
    return fitted, nothing


def _report_applies(run: Run, out: Path, report: bool) -> tuple[bool, str | None]:
    """Whether the HTML report can be written for ``run`` (and why not)."""
    from slide2expr.explain._report import report_path

    if not report:
        return False, None
    try:
        with as_explain_error():
            report_path(run, explain_dir=out)
    except ExplainError as exc:
        if not is_prediction_dir(run):
            raise
        return False, (
            "no report.html: the report summarises a compare run's metrics, which a prediction directory has "
            f"not ({exc.__class__.__name__}: {str(exc).split(':')[0]}); the figures are listed in manifest.json"
        )
    return True, None


def _slides_rule(slides, top_by: str, by: str, model: str | None) -> str:
    if slides is not None:
        return "--slides"
    if top_by == "largest-error":
        return f"largest error of {model}"
    return f"{top_by} {'true' if by == 'y_true' else 'predicted'} expression"


def check_explain_args(
    *, top_slides: int = 3, percentile: float = 90.0, min_cells: int = 2, sigma: float = 0.0, n_bins: int = 7,
    top_k: int = 5, top_by: str = "highest", hotspots_on: str = "auto",
) -> None:  # fmt: skip
    """Raise :class:`ExplainError` unless the numeric arguments of :func:`explain_run` are in range.

    >>> try:
    ...     check_explain_args(top_slides=0)
    ... except ExplainError as exc:
    ...     print(exc)
    top_slides must be at least 1, got 0
    """
    if top_slides < 1:
        raise ExplainError(f"top_slides must be at least 1, got {top_slides}")
    if top_by not in TOP_BY:
        raise ExplainError(f"top_by={top_by!r}: rank the map slides by one of {', '.join(TOP_BY)}")
    if hotspots_on not in HOTSPOTS_ON:
        raise ExplainError(
            f"hotspots_on={hotspots_on!r}: look for hotspots on one of {', '.join(HOTSPOTS_ON)} (slides)"
        )
    check_hotspot_args(percentile, min_cells)
    check_sigma(sigma)
    check_gallery_args(n_bins, top_k)


def plan_explain(
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
) -> ExplainPlan:
    """Check the arguments of :func:`explain_run` against the run, the store and the models; write nothing.

    Raises :class:`ExplainError` naming what is wrong (a run directory or store that is not one, genes or models
    the run lacks, slides not in the store or without a tile grid, a missing run table, parameters out of range)
    and :class:`~slide2expr.contract.OutputExistsError` (``out`` not empty and not ``overwrite``, or holding files
    explain did not write); warns :class:`LearnedNothingWarning` for a tree model that learned nothing. The
    arguments are those of :func:`explain_run`.

    Returns
    -------
    ExplainPlan
    """
    run = load_run(run)
    store = check_store_dir(store)
    genes = check_genes(run, genes)
    models = _check_models(run, models)
    check_explain_args(
        top_slides=top_slides,
        top_by=top_by,
        hotspots_on=hotspots_on,
        percentile=percentile,
        min_cells=min_cells,
        sigma=sigma,
        n_bins=n_bins,
        top_k=top_k,
    )
    out = Path(out) if out is not None else run.layout.explain
    check_explain_out(out, overwrite=overwrite)
    if slides is not None:
        _check_slides(run, store, list(slides), what="slides")
    predicted = is_prediction_dir(run)
    run.table("predictions")
    if not predicted:
        run.table("metrics")
    truth = _has_truth(run)
    notes = []
    att = run.attention_index()
    att_models = [m for m in dict.fromkeys(att["model"]) if m in models] if att is not None else []
    map_model = (
        PREFERRED_MAP_MODEL if PREFERRED_MAP_MODEL in att_models else (att_models[0] if att_models else None)
    )
    fitted, nothing = _shap_models(run, models, predicted=predicted, notes=notes)
    if not truth:
        notes.append(
            "no true expression in the predictions (predict without --targets): no scatter plot and no gallery; "
            "heatmaps show the slides with the highest predicted expression"
        )
    hotspot_slides, map_slides = (), {}
    by = "y_true" if truth else "y_pred"
    if top_by == "largest-error" and slides is None and not truth:
        raise ExplainError(
            "top_by='largest-error' needs true expression, which these predictions have not: predict with "
            "--targets, or rank the map slides by highest or lowest predicted expression"
        )
    if map_model is not None:
        map_slides = (
            {g: list(slides) for g in genes}
            if slides is not None
            else _choose_slides(
                run, genes=genes, model=map_model, top_slides=top_slides, by=by, top_by=top_by
            )
        )
        with_attention = tuple(sorted(att.loc[att["model"] == map_model, "slide_id"].unique()))
        _note_genes_without_attention(att, map_model, genes, notes)
        hotspot_slides = _hotspot_slides(with_attention, map_slides, hotspots_on, notes)
        _check_slides(run, store, list(hotspot_slides), what="slides with attention")
    report, why = _report_applies(run, out, report)
    notes += [why] if why else []
    return ExplainPlan(
        run=run,
        store=store,
        out=out,
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
        kind="predictions" if predicted else "run",
        overwrite=overwrite,
        detections=detections,
        overlays=overlays,
        scatter=truth,
        gallery=truth and gallery,
        learned_nothing=tuple(nothing),
        map_slides_by=_slides_rule(slides, top_by, by, map_model),
        notes=tuple(notes),
    )
