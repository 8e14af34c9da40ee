"""Explaining slides a model never saw: predict them with a model directory, then explain the predictions."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slide2expr.contract import Cohort, ModelLayout, StorePath, store_path
from slide2expr.explain._inputs import ExplainError, as_explain_error, check_store_dir, read_slides
from slide2expr.explain._plan import check_explain_args
from slide2expr.explain._run import ExplainResult, explain_run

#: The arguments of :func:`explain_run` that :func:`check_explain_args` checks.
_NUMERIC_ARGS = ("top_slides", "top_by", "hotspots_on", "percentile", "min_cells", "sigma", "n_bins", "top_k")


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model directory written by ``regress.train`` (``model.joblib`` + ``config.json``)."""
    return ModelLayout(path).exists()


@dataclass(frozen=True)
class NewSlidesPlan:
    """What :func:`explain_model` does, checked (:func:`plan_explain_model`): predict ``cohort`` with ``model``
    into the prediction directory ``out``, then explain it into ``out/explain``."""

    model: Path
    store: StorePath
    out: Path
    config: dict
    cohort: Cohort
    targets: str | None
    overwrite: bool

    def describe(self) -> str:
        """The plan in a few lines (what ``--dry-run`` prints)."""
        return (
            f"predict {self.cohort.n_bags} bags of {self.store} × {len(self.config['genes'])} genes with "
            f"{self.config['model']} from {self.model}\n"
            f"would write {self.out}/ (config.json, predictions.parquet, attention.parquet), then explain it into "
            f"{self.out}/explain/ (maps, hotspots, QuPath detections); nothing written (--dry-run)"
        )


def plan_explain_model(
    model: str | os.PathLike,
    *,
    store: str | os.PathLike,
    out: str | os.PathLike,
    targets: str | None = None,
    overwrite: bool = False,
    slides=None,
    genes=None,
    **explain_args,
) -> NewSlidesPlan:
    """Check everything :func:`explain_model` checks before it writes; writes nothing.

    Loads the store's bags at the model's encoder and tiling (``sql.load_cohort``), checks them against the
    model (``regress.check_predict``: encoder, weights, dimension, tiling, the targets' transform, ``out``), the
    genes against the model's, the slides against the store, and ``explain_args`` (``top_slides``,
    ``percentile``, ``min_cells``, ``sigma``, ``n_bins``, ``top_k``) as :func:`plan_explain` does. Raises
    :class:`ExplainError` (same messages) or :class:`~slide2expr.contract.OutputExistsError`.
    """
    from slide2expr import regress, sql
    from slide2expr.contract import StoreError

    check_store_dir(store)
    check_explain_args(**{k: v for k, v in explain_args.items() if k in _NUMERIC_ARGS})
    with as_explain_error(FileNotFoundError):
        config = regress.load_model_config(model)
    unknown = [g for g in (genes or []) if g not in config["genes"]]
    if unknown:
        raise ExplainError(f"genes {unknown} are not the model's (it predicts {list(config['genes'])})")
    if slides is not None:
        ok = read_slides(store)
        ok = set(ok.loc[ok["status"] == "ok", "slide_id"])
        missing = [s for s in slides if s not in ok]
        if missing:
            raise ExplainError(f"slides {missing} are not ok slides of the store {store}")
    errors = (StoreError, FileNotFoundError, regress.EncoderMismatchError, regress.TransformMismatchError)
    with as_explain_error(*errors):
        cohort = sql.load_cohort(
            store,
            encoder=config["encoder"],
            tiling=config.get("tiling"),
            targets=targets,
            by=config.get("by", "patient"),
        )
        regress.check_predict(cohort, model=model, store=store, targets=targets, out=out, overwrite=overwrite)
    return NewSlidesPlan(Path(model), store_path(store), Path(out), config, cohort, targets, overwrite)


def explain_model(
    model: str | os.PathLike,
    *,
    store: str | os.PathLike,
    out: str | os.PathLike,
    targets: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    **explain_args,
) -> ExplainResult:
    """Predict the slides of ``store`` with the model directory ``model`` and explain them.

    Writes the prediction directory ``out`` (``regress.predict``: bag predictions, per-tile attention and tile
    predictions) and then ``out/explain`` (:func:`explain_run`: heatmaps, hotspots, GeoJSON, QuPath detections;
    no SHAP; a scatter plot and the gallery only with ``targets``). Everything is checked first
    (:func:`plan_explain_model`); ``overwrite`` replaces an earlier prediction directory at ``out`` as a whole.

    Parameters
    ----------
    model
        Model directory written by ``regress.train``.
    store
        A store featurized with the model's encoder at its tiling.
    targets
        Targets of ``store`` to report beside the predictions (optional).
    explain_args
        Passed to :func:`explain_run` (``genes``, ``slides``, ``percentile``, ``overlays``, …).

    Returns
    -------
    ExplainResult
        Of ``out/explain``.

    Raises
    ------
    regress.PredictInterrupted, ExplainInterrupted
        Ctrl-C while predicting (nothing written) or while explaining (the predictions are written; explain
        again with ``explain_run(out, store=store)``).
    """
    from slide2expr import regress

    plan = plan_explain_model(
        model, store=store, out=out, targets=targets, overwrite=overwrite, **explain_args
    )
    if progress is not None:
        progress(f"predict {plan.cohort.n_bags} bags")
    regress.predict(
        plan.cohort,
        model=model,
        out=out,
        store=store,
        targets=targets,
        overwrite=overwrite,
        attention_genes=explain_args.get("genes"),  # the genes explained get their tile-level outputs
    )
    return explain_run(out, store=store, progress=progress, **explain_args)
