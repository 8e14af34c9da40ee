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
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contract import (
    ModelLayout,
    RunLayout,
    check_output_dir,
    describe_output,
    package_version,
    prepare_output_dir,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.regress._compare import _check_genes, _fit, _jsonable, _left_out, _target_transform
from slide2expr.regress._models import make_model


class EncoderMismatchError(ValueError):
    """The cohort's features come from another encoder (name, weights, dimension) or tiling than the model's."""


class TransformMismatchError(ValueError):
    """The cohort's targets are stored under another transform (log1p, log10p, none) than the model's."""


def _encoder_identity(cohort) -> dict:
    meta = dict(cohort.meta or {})
    return {
        "encoder": cohort.encoder,
        "tiling": cohort.tiling,
        "dim": int(cohort.dim),
        "weights_sha256": meta.get("weights_sha256"),
    }


def train(
    cohort,
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
    cohort : sql.Cohort
        Bags with targets.
    model, model_params
        A name from :data:`regress.MODEL_NAMES` and its parameters (see :func:`regress.make_model`).
    seed
        ``random_state`` of the model.
    out
        Model directory to write: ``model.joblib`` and ``config.json`` (with the encoder identity). A folder that is
        not empty is refused (:class:`regress.OutputExistsError`) unless ``overwrite``.
    store, targets
        Recorded in ``config.json``, with the targets' transform (read from the targets file) that
        :func:`predict` checks.
    overwrite
        Replace the previous contents of ``out`` (an earlier model or a compare run); anything in it that slide2expr
        did not write is still refused.

    Returns
    -------
    The fitted estimator.
    """
    if cohort.y_true is None:
        raise ValueError(
            "the cohort has no targets: load it with sql.load_cohort(store, encoder=…, targets=NAME)"
        )
    genes = _check_genes(cohort.genes)
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    Y = np.asarray(cohort.y_true, dtype=np.float64)
    complete = ~np.isnan(Y).any(axis=1)
    _left_out(cohort, complete, what="training")
    keep = np.flatnonzero(complete)
    if len(keep) < 2:
        raise ValueError(f"only {len(keep)} bags have complete targets; training needs at least 2")
    bags = cohort.bags
    est = make_model(model, params=model_params, random_state=seed)
    t0 = time.perf_counter()
    groups = np.asarray(cohort.groups, dtype=object)[keep].astype(str)
    _fit(est, [bags[i] for i in keep], Y[keep], groups, name=model, params=model_params)
    seconds = time.perf_counter() - t0
    if out is not None:
        import joblib

        root = prepare_output_dir(out, overwrite=overwrite)
        config = {
            "model": model,
            "model_params": _jsonable(dict(model_params or {})),
            "seed": int(seed),
            "genes": genes,
            "by": cohort.by,
            "store": None if store is None else str(Path(store).resolve()),
            "targets": targets,
            "transform": _target_transform(store, targets),
            "n_bags": int(len(keep)),
            "fit_seconds": seconds,
            "version": package_version(),
            **_encoder_identity(cohort),
            "encoder_meta": _jsonable(dict(cohort.meta or {})),
        }
        layout = ModelLayout(root)
        tmp = layout.model.with_name(f".{layout.model.name}.tmp")
        joblib.dump(est, tmp)
        os.replace(tmp, layout.model)
        write_bytes_atomic(layout.config, json.dumps(config, indent=2).encode())
    return est


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


def check_encoder(config: Mapping, cohort) -> None:
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
    have = _target_transform(store, targets)
    if want and have and want != have:
        raise TransformMismatchError(
            f"targets {targets!r} are stored with transform {have!r} but the model was trained on {want!r} targets, "
            "so its predictions and these values are on different scales: import the expression again with "
            f"`slide2expr targets import … --transform {want}` under another name and pass that, or predict "
            "without targets"
        )


def predict(
    cohort,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
) -> pd.DataFrame:
    """Predict every bag of ``cohort`` with the model directory ``model``; optionally write ``out`` (Parquet).

    Refuses (:class:`EncoderMismatchError`) a cohort featurized with another encoder name, weights, dimension or
    tiling, and (:class:`TransformMismatchError`) targets stored under another transform than the model's.

    Parameters
    ----------
    cohort : sql.Cohort
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
    import pyarrow as pa

    est, config = load_model(model)
    check_encoder(config, cohort)
    if cohort.y_true is not None:
        check_transform(config, store=store, targets=targets)
    genes = list(config["genes"])
    pred = np.asarray(est.predict(cohort.bags), dtype=np.float64).reshape(cohort.n_bags, len(genes))
    first = list(dict.fromkeys(genes))
    if len(first) < len(genes):  # a model saved before train refused repeated genes: one column per gene
        pred = pred[:, [genes.index(g) for g in first]]
        genes = first
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
