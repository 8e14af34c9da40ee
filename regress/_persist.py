"""``train`` a model on a whole cohort into a model directory; ``predict`` another cohort with it.

A model directory holds ``model.joblib`` (the fitted estimator) and ``config.json`` (model name and parameters,
genes, the targets' transform, and the encoder identity the model was trained on: encoder name, tiling, dim,
weights sha256).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contract import (
    Cohort,
    ModelLayout,
    RunLayout,
    check_output_dir,
    describe_output,
    package_version,
    prepare_output_dir,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.regress._harness import (
    CompareError,
    check_cohort_targets,
    complete_bags,
    fit_model,
    jsonable,
    target_transform,
)
from slide2expr.regress._models import make_model

#: Bags a model needs to be fitted on.
MIN_TRAINING_BAGS = 2


class EncoderMismatchError(ValueError):
    """The cohort's features come from another encoder (name, weights, dimension) or tiling than the model's."""


class TransformMismatchError(ValueError):
    """The cohort's targets are stored under another transform (log1p, log10p, none) than the model's."""


def _encoder_identity(cohort: Cohort) -> dict:
    meta = dict(cohort.meta or {})
    return {
        "encoder": cohort.encoder,
        "tiling": cohort.tiling,
        "dim": int(cohort.dim),
        "weights_sha256": meta.get("weights_sha256"),
    }


@dataclass(frozen=True)
class TrainPlan:
    """What :func:`train` will fit, every argument checked (:func:`plan_train`)."""

    model: str
    model_params: dict
    seed: int
    genes: tuple[str, ...]
    keep: np.ndarray
    dropped: tuple[str, ...]
    out: Path | None = None

    def describe(self) -> str:
        """The plan in a few lines (what ``--dry-run`` prints)."""
        params = f" with {self.model_params}" if self.model_params else ""
        where = "nothing (out=None)" if self.out is None else f"{self.out}/ (model.joblib, config.json)"
        return (
            f"train {self.model}{params} (seed {self.seed}) on {len(self.keep)} bags × {len(self.genes)} genes"
            + (f"; {len(self.dropped)} bag(s) without complete targets left out" if self.dropped else "")
            + f"\nwould write {where}"
        )


def plan_train(
    cohort: Cohort,
    *,
    model: str = "mil",
    model_params: Mapping | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> TrainPlan:
    """Check everything :func:`train` checks and return its plan; writes nothing.

    Raises :class:`CompareError` (no targets, repeated genes, fewer than two complete bags),
    :class:`UnknownModelError` (unknown model or parameters) and :class:`OutputExistsError` (``out`` not
    replaceable); warns :class:`LeftOutBagsWarning`.
    """
    genes = check_cohort_targets(cohort)
    make_model(model, params=model_params, random_state=seed)
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    keep, dropped = complete_bags(cohort, what="training")
    if len(keep) < MIN_TRAINING_BAGS:
        raise CompareError(
            f"only {len(keep)} bags have complete targets; training needs at least {MIN_TRAINING_BAGS}"
        )
    out = None if out is None else Path(out)
    return TrainPlan(model, dict(model_params or {}), int(seed), tuple(genes), keep, tuple(dropped), out)


def train(
    cohort: Cohort,
    *,
    model: str = "mil",
    model_params: Mapping | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
    overwrite: bool = False,
):
    """Fit ``model`` on every bag of ``cohort`` with complete targets; optionally save it to ``out``.

    Parameters
    ----------
    cohort
        Bags with targets.
    model, model_params
        A registered model name (:func:`regress.list_models`) and its parameters (:func:`regress.make_model`).
    seed
        ``random_state`` of the model.
    out
        Model directory to write: ``model.joblib`` and ``config.json`` (with the encoder identity). A folder that is
        not empty is refused (:class:`regress.OutputExistsError`) unless ``overwrite``, which replaces what
        slide2expr wrote there (an earlier model or a compare run) and refuses anything else.
    store, targets
        Recorded in ``config.json``, with the targets' transform (read from the targets file) that
        :func:`predict` checks.

    Returns
    -------
    The fitted estimator.
    """
    plan = plan_train(cohort, model=model, model_params=model_params, seed=seed, out=out, overwrite=overwrite)
    est = make_model(model, params=model_params, random_state=seed)
    t0 = time.perf_counter()
    bags = cohort.bags
    groups = np.asarray(cohort.groups, dtype=object)[plan.keep].astype(str)
    y = np.asarray(cohort.y_true, dtype=np.float64)[plan.keep]
    fit_model(est, [bags[i] for i in plan.keep], y, groups, name=model, params=model_params)
    seconds = time.perf_counter() - t0
    if plan.out is not None:
        _save_model(est, plan, cohort, seconds=seconds, store=store, targets=targets, overwrite=overwrite)
    return est


def _save_model(
    est, plan: TrainPlan, cohort: Cohort, *, seconds: float, store, targets, overwrite: bool
) -> None:
    """Write ``model.joblib`` and ``config.json`` into the model directory ``plan.out``."""
    import joblib

    layout = ModelLayout(prepare_output_dir(plan.out, overwrite=overwrite))
    config = {
        "model": plan.model,
        "model_params": jsonable(plan.model_params),
        "seed": plan.seed,
        "genes": list(plan.genes),
        "by": cohort.by,
        "store": None if store is None else str(Path(store).resolve()),
        "targets": targets,
        "transform": target_transform(store, targets),
        "n_bags": int(len(plan.keep)),
        "fit_seconds": seconds,
        "version": package_version(),
        **_encoder_identity(cohort),
        "encoder_meta": jsonable(dict(cohort.meta or {})),
    }
    tmp = layout.model.with_name(f".{layout.model.name}.tmp")
    joblib.dump(est, tmp)
    os.replace(tmp, layout.model)
    write_bytes_atomic(layout.config, json.dumps(config, indent=2).encode())


def load_model_config(model_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a model directory written by :func:`train` (the model itself is not loaded).

    Raises
    ------
    FileNotFoundError
        ``model_dir`` is not a model directory; the message says when it is a compare run instead.
    """
    root = Path(model_dir)
    layout = ModelLayout(root)
    if layout.exists():
        try:
            config = json.loads(layout.config.read_text())
        except ValueError as exc:
            raise FileNotFoundError(
                f"{layout.config} is not valid JSON ({exc}): train the model again"
            ) from exc
        if isinstance(config, dict):
            return config
    if describe_output(root).startswith("a compare run"):
        raise FileNotFoundError(
            f"{root} is a compare run (cross-validation fold models), not a model directory: train one model on "
            f"the whole cohort with `slide2expr train … --model NAME --out MODEL` and predict with MODEL"
        )
    raise FileNotFoundError(
        f"{root} is not a model directory (no {layout.model.name} / {layout.config.name}): run "
        f"`slide2expr train … --out {root}`"
    )


def load_model(model_dir: str | os.PathLike):
    """``(estimator, config)`` from a model directory written by :func:`train`."""
    import joblib

    config = load_model_config(model_dir)
    return joblib.load(ModelLayout(model_dir).model), config


def load_fold_models(run: str | os.PathLike, model: str) -> dict:
    """The estimators ``compare`` saved for ``model`` in the run directory ``run``, by fold (each fitted without
    that fold's patients).

    Raises
    ------
    FileNotFoundError
        The run has no saved models of ``model``; the message says how to get them.
    """
    import joblib

    paths = RunLayout(run).fold_models(model)
    if not paths:
        raise FileNotFoundError(
            f"no fitted models of {model!r} in {RunLayout(run).root}/models/{model}/ (fold<k>.joblib): run "
            f"`slide2expr compare` with model {model!r} and without --no-save-models"
        )
    return {fold: joblib.load(path) for fold, path in paths.items()}


def check_encoder(config: Mapping, cohort: Cohort) -> None:
    """Raise :class:`EncoderMismatchError` unless ``cohort``'s features match the model's encoder identity."""
    have = _encoder_identity(cohort)
    problems = []
    if have["encoder"] != config.get("encoder"):
        problems.append(f"encoder {have['encoder']!r} ≠ the model's {config.get('encoder')!r}")
    if have["dim"] != config.get("dim"):
        problems.append(f"dimension {have['dim']} ≠ the model's {config.get('dim')}")
    if config.get("tiling") and have["tiling"] != config["tiling"]:
        problems.append(
            f"tiling {have['tiling']!r} ≠ the model's {config['tiling']!r} (tiles at another resolution or size)"
        )
    want_sha = config.get("weights_sha256")
    if want_sha and have["weights_sha256"] and have["weights_sha256"] != want_sha:
        problems.append(
            f"weights sha256 {str(have['weights_sha256'])[:12]}… ≠ the model's {str(want_sha)[:12]}… "
            "(same encoder name, different weights)"
        )
    if problems:
        raise EncoderMismatchError(
            "cannot apply this model to the cohort: "
            + "; ".join(problems)
            + ". Featurize the slides with the model's encoder (and weights) at the model's tiling first, or train a "
            "model on these features."
        )


def check_transform(config: Mapping, *, store: str | os.PathLike | None, targets: str | None) -> None:
    """Raise :class:`TransformMismatchError` when targets ``targets`` of ``store`` are stored under another
    transform than the one the model was trained on (its ``config.json``); no check when either is unknown."""
    want = config.get("transform")
    have = target_transform(store, targets)
    if want and have and want != have:
        raise TransformMismatchError(
            f"targets {targets!r} are stored with transform {have!r} but the model was trained on {want!r} targets, "
            "so its predictions and these values are on different scales: import the expression again with "
            f"`slide2expr targets import … --transform {want}` under another name and pass that, or predict "
            "without targets"
        )


def check_predict(
    cohort: Cohort,
    *,
    model: str | os.PathLike,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
) -> dict:
    """Check everything :func:`predict` checks (the model directory, the encoder identity, the targets'
    transform) and return the model's config; writes nothing and loads no model."""
    config = load_model_config(model)
    check_encoder(config, cohort)
    if cohort.y_true is not None:
        check_transform(config, store=store, targets=targets)
    return config


def predict(
    cohort: Cohort,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
) -> pd.DataFrame:
    """Predict every bag of ``cohort`` with the model directory ``model``; optionally write ``out`` (Parquet).

    Refuses (:class:`EncoderMismatchError`) a cohort featurized with another encoder name, weights, dimension or
    tiling, and (:class:`TransformMismatchError`) targets stored under another transform than the model's
    (:func:`check_predict`).

    Parameters
    ----------
    cohort
        Bags to predict, with or without targets.
    model
        Model directory written by :func:`train`.
    out
        Predictions Parquet file to write.
    store, targets
        Where the cohort's targets come from (``targets/<NAME>.parquet`` of ``store``); with both, their transform
        (log1p, log10p, none) must be the model's.

    Returns
    -------
    DataFrame with one row per bag × gene: ``bag_id``, ``patient_id``, ``gene``, ``y_pred`` (and ``y_true`` when
    the cohort has targets for the model's genes, else null).
    """
    import joblib
    import pyarrow as pa

    config = check_predict(cohort, model=model, store=store, targets=targets)
    est = joblib.load(ModelLayout(model).model)
    genes = list(config["genes"])
    pred = np.asarray(est.predict(cohort.bags), dtype=np.float64).reshape(cohort.n_bags, len(genes))
    y_true = np.full_like(pred, np.nan)
    if cohort.y_true is not None:
        col = {g: j for j, g in enumerate(cohort.genes)}
        for j, g in enumerate(genes):
            if g in col:
                y_true[:, j] = np.asarray(cohort.y_true, dtype=np.float64)[:, col[g]]
    df = pd.DataFrame(
        {
            "bag_id": np.repeat(np.asarray(cohort.bag_ids, dtype=object).astype(str), len(genes)),
            "patient_id": np.repeat(np.asarray(cohort.groups, dtype=object).astype(str), len(genes)),
            "gene": np.tile(genes, cohort.n_bags),
            "y_pred": pred.ravel(),
            "y_true": y_true.ravel(),
        }
    )
    if out is not None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        write_table_atomic(
            table,
            out,
            metadata={
                "kind": "predictions",
                "model": str(Path(model).resolve()),
                "encoder": config.get("encoder"),
                "transform": config.get("transform"),
            },
        )
    return df
