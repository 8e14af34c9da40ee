"""``train`` a model on a whole cohort into a model directory; ``predict`` another cohort with it.

A model directory holds ``model.joblib`` (the fitted estimator) and ``config.json`` (model name and parameters,
genes, the targets' transform, and the encoder identity the model was trained on: encoder name, tiling, dim,
weights sha256). A prediction directory holds what ``predict`` said about each bag and, for attention models, each
tile (``contract.PredictionLayout``); ``explain`` draws its maps as for a compare run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr.contract import (
    ATTENTION_ROW_GROUP_ROWS,
    ATTENTION_SCHEMA,
    PREDICT_FOLD,
    PREDICTION_KIND,
    PREDICTIONS_SCHEMA,
    Cohort,
    ModelLayout,
    PredictionLayout,
    RunLayout,
    check_output_dir,
    describe_output,
    package_version,
    prepare_output_dir,
    staged_output_dir,
    store_location,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.regress._batches import bag_tiles, tile_batches
from slide2expr.regress._folds import attention_rows
from slide2expr.regress._genes import MAX_ATTENTION_GENES
from slide2expr.regress._harness import (
    CompareError,
    check_cohort_targets,
    complete_bags,
    jsonable,
    target_transform,
)
from slide2expr.regress._meta import TileScores
from slide2expr.regress._models import UnknownModelError, make_model, model_info
from slide2expr.regress._streaming import fold_inputs

#: Bags a model needs to be fitted on.
MIN_TRAINING_BAGS = 2
#: The fold a model trained on the whole cohort fits in (its tile sample's seed is drawn from it).
TRAIN_FOLD = -1


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
        Bags with targets: in memory (``sql.load_cohort``) or read on access (``sql.lazy_cohort``: pooled models
        on the store's cached pooled features, an attention model's tile projection fitted on a bounded sample of
        the tiles and applied as each bag is read, as :func:`compare` does).
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
    inputs = fold_inputs(cohort, plan)  # the bags in memory, or read on access (regress._streaming)
    groups = np.asarray(cohort.groups, dtype=object)[plan.keep].astype(str)
    y = np.asarray(cohort.y_true, dtype=np.float64)[plan.keep]
    rows = np.arange(len(plan.keep))
    inputs.fit(est, TRAIN_FOLD, rows, y, groups, name=model, params=model_params)
    est = inputs.finish(est, TRAIN_FOLD)
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
        "store": None if store is None else store_location(store),
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
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    attention_genes: Sequence[str] | None = None,
) -> dict:
    """Check everything :func:`predict` checks (the model directory, the encoder identity, the targets'
    transform, the output folder, ``attention_genes``) and return the model's config; writes nothing and loads no
    model.

    Raises :class:`EncoderMismatchError`, :class:`TransformMismatchError`, ``FileNotFoundError`` (not a model
    directory) and :class:`OutputExistsError` (``out`` not empty and not ``overwrite``, or holding files
    slide2expr did not write).
    """
    config = load_model_config(model)
    check_encoder(config, cohort)
    if cohort.y_true is not None:
        check_transform(config, store=store, targets=targets)
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    _attention_genes(list(config["genes"]), attention_genes)
    return config


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict`: nothing was written to ``out`` (its previous contents are unchanged).

    Attributes ``done`` and ``total`` count the bags predicted before the interruption; ``out`` is the prediction
    directory that was not written.
    """

    def __init__(self, done: int, total: int, out: Path | None) -> None:
        self.done, self.total, self.out = int(done), int(total), out
        where = (
            f"nothing written to {out} (its previous contents are unchanged)" if out else "nothing written"
        )
        super().__init__(f"interrupted after predicting {done} of {total} bags: {where}")


def _predict_in_batches(
    est, cohort: Cohort, *, n_genes: int, batch_bags: int, progress, out, on_scores=None
) -> np.ndarray:
    """``(n_bags, n_genes)`` float64 predictions, made batch by batch (at most ``batch_bags`` bags and
    ``TILE_BATCH`` tiles).

    With ``on_scores``, each batch's :class:`TileScores` (one per bag) go to ``on_scores(first bag, scores)`` and
    are dropped when it returns: one batch's bags and scores are held at a time.
    """
    bags = cohort.bags
    n = len(bags)
    pred = np.empty((n, n_genes), dtype=np.float64)
    done = 0
    try:
        sizes = bag_tiles(cohort, range(cohort.n_bags))
        for batch in tile_batches(sizes, max_bags=batch_bags):
            chunk = bags[batch.start : batch.stop]
            pred[batch.start : batch.stop] = np.asarray(est.predict(chunk), dtype=np.float64).reshape(
                len(chunk), n_genes
            )
            if on_scores is not None:
                on_scores(batch.start, est.predict_tiles(chunk))
            del chunk
            done = batch.stop
            if progress is not None:
                progress(done, n)
    except KeyboardInterrupt:
        raise PredictInterrupted(done, n, out) from None
    return pred


class _RowGroupWriter:
    """A Parquet file appended table by table and cut into row groups of ``rows`` rows (the last one shorter),
    with the options of :func:`~slide2expr.contract.write_table_atomic` (zstd, dictionary-coded columns,
    statistics, no ``slide2expr.*`` metadata): the file holds what one ``write_table_atomic`` of all the appended
    tables would. Holds fewer than ``rows`` rows between appends; the file is fsynced when closed."""

    def __init__(self, path: Path, schema: pa.Schema, *, rows: int):
        self.path, self.schema, self.rows = path, schema, int(rows)
        self._writer = pq.ParquetWriter(
            path, schema, compression="zstd", use_dictionary=list(schema.names), write_statistics=True
        )
        self._pending: list[pa.Table] = []
        self._n = 0

    def append(self, table: pa.Table) -> None:
        """Add ``table``'s rows (``schema``); full row groups go to the file."""
        self._pending.append(table)
        self._n += table.num_rows
        if self._n >= self.rows:
            self._flush(self._n // self.rows * self.rows)

    def _flush(self, n_rows: int) -> None:
        whole = pa.concat_tables(self._pending).combine_chunks()
        self._writer.write_table(whole.slice(0, n_rows), row_group_size=self.rows)
        rest = whole.slice(n_rows)
        # a copy, so the appended tables' buffers are freed with `whole`
        self._pending = [rest.take(np.arange(rest.num_rows))] if rest.num_rows else []
        self._n = rest.num_rows

    def close(self) -> None:
        """Write the last (short) row group and the footer; fsync the file."""
        if self._n:
            self._flush(self._n)
        self._writer.close()
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())

    def abandon(self) -> None:
        """Close the file without the rows still pending (the folder holding it is being deleted)."""
        self._pending, self._n = [], 0
        with contextlib.suppress(Exception):
            self._writer.close()


def _attention_appender(writer: _RowGroupWriter, cohort: Cohort, *, genes: list[str], recorded, name: str):
    """``on_scores`` of :func:`_predict_in_batches`: each bag's rows of ``attention.parquet`` (the ``recorded``
    genes' columns only, gene-major within a bag, bags in cohort order) appended to ``writer``, bag by bag."""
    cols = np.asarray([genes.index(g) for g in recorded], dtype=np.int64)

    def on_scores(first: int, scores: list) -> None:
        for b, s in enumerate(scores, start=first):
            kept = TileScores(*(None if f is None else f[:, cols] for f in s))
            writer.append(
                attention_rows([kept], cohort, [b], name=name, fold=PREDICT_FOLD, genes=list(recorded))
            )

    return on_scores


def _predictions_frame(cohort: Cohort, pred: np.ndarray, *, genes: list[str], name: str) -> pd.DataFrame:
    """What :func:`predict` returns: one row per bag × gene, ``y_true`` NaN where the cohort has no target."""
    y_true = np.full_like(pred, np.nan)
    if cohort.y_true is not None:
        col = {g: j for j, g in enumerate(cohort.genes)}
        for j, g in enumerate(genes):
            if g in col:
                y_true[:, j] = np.asarray(cohort.y_true, dtype=np.float64)[:, col[g]]
    return pd.DataFrame(
        {
            "model": name,
            "fold": np.int32(PREDICT_FOLD),
            "bag_id": np.repeat(np.asarray(cohort.bag_ids, dtype=object).astype(str), len(genes)),
            "patient_id": np.repeat(np.asarray(cohort.groups, dtype=object).astype(str), len(genes)),
            "gene": np.tile(genes, cohort.n_bags),
            "y_true": y_true.ravel(),
            "y_pred": pred.ravel(),
        }
    )


def _prediction_config(config: Mapping, cohort: Cohort, *, model, store, targets) -> dict:
    """``config.json`` of a prediction directory: what was predicted with which model, and the model's identity."""
    return {
        "kind": PREDICTION_KIND,
        "model_dir": str(Path(model).resolve()),
        "model": config["model"],
        "models": [config["model"]],
        "model_params": config.get("model_params", {}),
        "genes": list(config["genes"]),
        "by": cohort.by,
        "store": None if store is None else store_location(store),
        "targets": targets,
        "transform": config.get("transform"),
        "n_bags": int(cohort.n_bags),
        "fold": PREDICT_FOLD,
        "trained_on": {k: config.get(k) for k in ("store", "targets", "n_bags", "seed", "version")},
        "version": package_version(),
        **_encoder_identity(cohort),
    }


def _write_prediction_dir(
    out: Path, est, cohort: Cohort, *, config: dict, recorded, batch_bags: int, progress
) -> pd.DataFrame:
    """Predict ``cohort`` into the prediction directory ``out`` and return :func:`predict`'s frame.

    The folder is staged beside ``out`` and swapped in when complete (deleted on any error, Ctrl-C included):
    ``attention.parquet`` (with ``recorded`` genes; none when ``recorded`` is None) is appended batch by batch as
    the bags are predicted, then ``predictions.parquet`` and ``config.json`` are written.
    """
    from slide2expr.regress._runs import as_table

    genes, name, n = list(config["genes"]), str(config["model"]), cohort.n_bags
    try:
        with staged_output_dir(out) as tmp:
            layout = PredictionLayout(tmp)
            on_scores, writer = None, None
            if recorded is not None:
                writer = _RowGroupWriter(layout.attention, ATTENTION_SCHEMA, rows=ATTENTION_ROW_GROUP_ROWS)
                on_scores = _attention_appender(writer, cohort, genes=genes, recorded=recorded, name=name)
            try:
                pred = _predict_in_batches(
                    est,
                    cohort,
                    n_genes=len(genes),
                    batch_bags=batch_bags,
                    progress=progress,
                    out=out,
                    on_scores=on_scores,
                )
            except BaseException:
                if writer is not None:
                    writer.abandon()
                raise
            if writer is not None:
                writer.close()
            df = _predictions_frame(cohort, pred, genes=genes, name=name)
            write_table_atomic(as_table(df, PREDICTIONS_SCHEMA), layout.predictions, compression="zstd")
            write_bytes_atomic(layout.config, json.dumps(config, indent=2).encode())
    except PredictInterrupted:
        raise
    except KeyboardInterrupt:
        raise PredictInterrupted(n, n, out) from None
    return df


def predict(
    cohort: Cohort,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
    overwrite: bool = False,
    batch_bags: int = 64,
    progress: Callable[[int, int], None] | None = None,
    attention_genes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Predict every bag of ``cohort`` with the model directory ``model``; optionally write a prediction directory.

    Refuses (:class:`EncoderMismatchError`) a cohort featurized with another encoder name, weights, dimension or
    tiling, and (:class:`TransformMismatchError`) targets stored under another transform than the model's
    (:func:`check_predict`). Memory: one batch of bags and their tile scores, one bag's ``attention.parquet`` rows
    and one row group of them, and the (n_bags, n_genes) predictions; the tile scores are not computed without
    ``out``.

    Parameters
    ----------
    cohort
        Bags to predict, with or without targets: in memory (``sql.load_cohort``) or read on access
        (``sql.lazy_cohort``, ``batch_bags`` bags at a time).
    model
        Model directory written by :func:`train`.
    out
        Prediction directory to write (:class:`~slide2expr.contract.PredictionLayout`): ``config.json`` (kind
        ``"predictions"``, the model directory and its encoder identity, genes, store), ``predictions.parquet``
        (bag × gene, ``PREDICTIONS_SCHEMA``) and, for attention models, ``attention.parquet`` (tile × gene:
        attention, attention logit, tile prediction, ``ATTENTION_SCHEMA``; bags in cohort order, gene-major within
        a bag, written as the batches are predicted). Every row has fold ``-1`` (``PREDICT_FOLD``: the model saw
        none of these bags and no fold is involved). The folder is written beside ``out`` and swapped in when
        complete; a folder that is not empty is refused (:class:`regress.OutputExistsError`) unless
        ``overwrite``, which replaces what slide2expr wrote there. ``slide2expr explain PRED --store STORE`` draws
        its maps.
    store, targets
        Where the cohort's targets come from (``targets/<NAME>.parquet`` of ``store``); with both, their transform
        (log1p, log10p, none) must be the model's. ``store`` is recorded in ``config.json``.
    overwrite
        Replace a non-empty ``out`` that slide2expr wrote.
    batch_bags
        Bags predicted per call of the model and held in memory at once (fewer where they hold more than
        ``TILE_BATCH`` tiles).
    progress
        Called with ``(bags done, bags in all)`` after each batch.
    attention_genes
        The genes whose per-tile attention and tile predictions ``attention.parquet`` records (it grows with
        tiles × genes): default every gene of the model up to ``MAX_ATTENTION_GENES`` (50), else the first 50 in
        the model's order (``config.json`` lists them under ``attention_genes``).

    Returns
    -------
    DataFrame with one row per bag × gene: ``model``, ``fold`` (-1), ``bag_id``, ``patient_id``, ``gene``,
    ``y_true`` (NaN where the cohort has no target for the gene) and ``y_pred``.

    Raises
    ------
    PredictInterrupted
        Ctrl-C: says how many bags were predicted; nothing was written.
    """
    import joblib

    config = check_predict(
        cohort,
        model=model,
        store=store,
        targets=targets,
        out=out,
        overwrite=overwrite,
        attention_genes=attention_genes,
    )
    if batch_bags < 1:
        raise ValueError(f"batch_bags must be at least 1, got {batch_bags}")
    est = joblib.load(ModelLayout(model).model)
    genes = list(config["genes"])
    name = str(config["model"])
    if out is None:
        pred = _predict_in_batches(
            est, cohort, n_genes=len(genes), batch_bags=batch_bags, progress=progress, out=None
        )
        return _predictions_frame(cohort, pred, genes=genes, name=name)
    tiles = _gives_attention(name, est)
    recorded = _attention_genes(genes, attention_genes) if tiles else None
    config = {
        **_prediction_config(config, cohort, model=model, store=store, targets=targets),
        "attention_genes": list(recorded or ()),
    }
    return _write_prediction_dir(
        Path(out), est, cohort, config=config, recorded=recorded, batch_bags=batch_bags, progress=progress
    )


def _attention_genes(genes: list[str], chosen) -> tuple[str, ...]:
    """The genes whose tile-level outputs a prediction directory records (see :func:`predict`)."""
    if chosen is None:
        return tuple(genes[:MAX_ATTENTION_GENES])
    chosen = list(dict.fromkeys(chosen))
    unknown = [g for g in chosen if g not in genes]
    if unknown or not chosen:
        raise ValueError(
            f"attention_genes {unknown or chosen} are not genes of the model (it predicts {len(genes)} genes, e.g. "
            f"{', '.join(genes[:5])})"
        )
    return tuple(chosen)


def _gives_attention(name: str, est) -> bool:
    """Whether the model gives per-tile attention (the registry says so and the estimator has ``predict_tiles``)."""
    try:
        registered = model_info(name).attention
    except UnknownModelError:
        registered = True
    return bool(registered) and hasattr(est, "predict_tiles")
