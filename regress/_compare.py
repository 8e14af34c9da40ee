"""``compare``: every model on the same patient-grouped folds, metrics, statistics and a run directory."""

from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from slide2expr.contract import (
    ATTENTION_SCHEMA,
    COMPARISONS_SCHEMA,
    FOLDS_SCHEMA,
    METRICS_SCHEMA,
    PREDICTIONS_SCHEMA,
    RunLayout,
    check_output_dir,
    package_version,
    prepare_output_dir,
    read_metadata,
    targets_path,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.regress._models import MIL_MODELS, MODEL_NAMES, UnknownModelError, make_model
from slide2expr.regress._stats import metrics_table, paired_comparison


class CompareError(ValueError):
    """A cohort or argument that ``compare`` cannot run on."""


class LeftOutBagsWarning(UserWarning):
    """Bags with missing target values were left out of a comparison or a fit (their ids are in the message)."""


def _check_genes(genes: Sequence[str]) -> list[str]:
    genes = list(genes)
    dup = sorted({g for g in genes if genes.count(g) > 1})
    if dup:
        raise CompareError(
            f"the cohort lists gene(s) {', '.join(dup)} more than once: load it with each gene once "
            "(sql.load_cohort(…, genes=[…]) / --genes)"
        )
    return genes


def _left_out(cohort, complete: np.ndarray, *, what: str) -> list[str]:
    """Ids of the bags that miss a target value; warn (:class:`LeftOutBagsWarning`) when there are any."""
    dropped = [str(b) for b, c in zip(cohort.bag_ids, complete, strict=True) if not c]
    if dropped:
        warnings.warn(
            f"{len(dropped)} bag(s) have no (or incomplete) targets and are left out of {what}: "
            + ", ".join(dropped[:10])
            + (" …" if len(dropped) > 10 else ""),
            LeftOutBagsWarning,
            stacklevel=3,
        )
    return dropped


@dataclass
class CompareResult:
    """What :func:`compare` computed (and wrote to ``run`` when given).

    Attributes
    ----------
    run : Path or None
    config : dict
        The content of ``config.json``.
    folds, predictions, metrics, comparisons : pandas.DataFrame
        The tables of the run directory (same columns); ``predictions`` has no ``y_baseline`` column.
    summary : pandas.DataFrame
        One row per model: ``median_r`` (pooled Pearson r over genes), ``n_well_predicted``, ``n_genes``,
        ``median_rmse_ratio`` (RMSE ÷ training-mean RMSE), ``fit_seconds`` (all folds).
    """

    run: Path | None
    config: dict
    folds: pd.DataFrame
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    comparisons: pd.DataFrame
    summary: pd.DataFrame
    attention_rows: int = 0
    seconds: dict = field(default_factory=dict)


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _fit(est, bags, y, groups, *, name: str | None = None, params: Mapping | None = None):
    """``est.fit`` (with ``groups`` when it takes them). A ``TypeError`` while fitting with user ``params`` (a
    parameter of the wrong type that the estimator's library does not check up front) becomes an
    :class:`UnknownModelError` naming the model and the parameters given."""
    kwargs = {"groups": groups} if "groups" in inspect.signature(est.fit).parameters else {}
    try:
        return est.fit(bags, y, **kwargs)
    except TypeError as exc:
        if not params:
            raise
        raise UnknownModelError(
            f"model {name!r}: fitting failed on a value of the wrong type ({exc}); check the types of the "
            f"parameters given: {', '.join(f'{k}={v!r}' for k, v in sorted(params.items()))}"
        ) from exc


def make_folds(groups: Sequence[str], *, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each bag (``(n_bags,)`` int32): ``GroupKFold`` over ``groups`` (patients), groups shuffled by ``seed``."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_folds < 2:
        raise CompareError(f"n_folds={n_folds}: cross-validation needs at least 2 folds")
    if n_groups < n_folds:
        raise CompareError(
            f"n_folds={n_folds} but the cohort has only {n_groups} patients: use --folds {max(2, n_groups)} or fewer"
        )
    folds = np.empty(len(groups), dtype=np.int32)
    cv = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(cv.split(np.zeros(len(groups)), groups=groups)):
        folds[test] = k
    return folds


def compare(
    cohort,
    *,
    models: Sequence[str] = ("mil", "lgbm", "ridge"),
    n_folds: int = 5,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    model_params: Mapping[str, Mapping] | None = None,
    progress: bool = True,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
    save_models: bool = True,
    overwrite: bool = False,
) -> CompareResult:
    """Cross-validate ``models`` on the same patient-grouped folds and write a run directory.

    Every model is fitted per fold on the training patients only (MIL models z-score the targets and standardise
    the features inside ``fit``) and predicts every held-out bag. The training-mean floor (``"mean"``) is always
    included.

    Parameters
    ----------
    cohort : sql.Cohort
        Bags with targets (``sql.load_cohort(store, encoder=…, targets=…)``). Bags with a missing target value are
        left out (and reported).
    models
        Names from :data:`regress.MODEL_NAMES`.
    n_folds, seed
        ``GroupKFold(n_folds, shuffle=True, random_state=seed)`` over patients; fold ``k`` fits models with
        ``random_state = seed + k``.
    out
        The run directory to write (created). None computes without writing. A folder that is not empty is
        refused (:class:`regress.OutputExistsError`) unless ``overwrite``.
    model_params
        Per model name, constructor parameters (see :func:`regress.make_model`), e.g.
        ``{"mil": {"max_epochs": 30}, "lgbm": {"n_estimators": 300}}``.
    progress
        Show a progress bar (models × folds) and print the comparison table.
    store, targets
        Recorded in ``config.json`` (where the cohort came from).
    save_models
        Write ``models/<model>/fold<k>.joblib``.
    overwrite
        Replace the previous contents of ``out`` (an earlier run, with its fold models, ``explain/`` output and
        report, or a model directory) before writing; anything in it that slide2expr did not write is still refused.

    Returns
    -------
    CompareResult

    Writes
    ------
    ``RUN/config.json``, ``folds.parquet`` (one row per bag), ``predictions.parquet`` (model × bag × gene),
    ``metrics.parquet`` (model × gene × fold, fold -1 pooled), ``comparisons.parquet`` (model pairs),
    ``attention.parquet`` (MIL models, held-out tiles × genes), ``models/<model>/fold<k>.joblib``,
    ``plots/compare_pearson.png``.
    """
    if cohort.y_true is None:
        raise CompareError(
            "the cohort has no targets: load it with sql.load_cohort(store, encoder=…, targets=NAME) "
            "(or `slide2expr compare --targets NAME`)"
        )
    models = list(dict.fromkeys(models))
    for m in models:
        if m not in MODEL_NAMES:
            raise UnknownModelError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)}")
    if "mean" not in models:
        models.append("mean")
    if model_params is not None and not isinstance(model_params, Mapping):
        raise CompareError(
            f"model_params must map model names to their parameters, e.g. {{'mil': {{'max_epochs': 30}}}}; "
            f"got {model_params!r}"
        )
    for k, v in (model_params or {}).items():
        if k not in models:
            raise CompareError(
                f"model_params names {k!r}, which is not among the models run: {', '.join(models)}"
            )
        if not isinstance(v, Mapping):
            raise CompareError(
                f"model_params[{k!r}] must be the model's parameters as a mapping (a JSON object), "
                f'e.g. {{"{k}": {{…}}}}; got {v!r}'
            )
    model_params = {k: dict(v) for k, v in (model_params or {}).items()}
    genes = _check_genes(cohort.genes)
    run = None if out is None else Path(out)
    layout = None if run is None else RunLayout(run)
    if run is not None:
        check_output_dir(run, overwrite=overwrite)
    Y_all = np.asarray(cohort.y_true, dtype=np.float64)
    complete = ~np.isnan(Y_all).any(axis=1)
    dropped = _left_out(cohort, complete, what="the comparison")
    keep = np.flatnonzero(complete)
    all_bags = cohort.bags
    bags = [all_bags[i] for i in keep]
    Y = Y_all[keep]
    bag_ids = np.asarray(cohort.bag_ids, dtype=object)[keep].astype(str)
    patients = np.asarray(cohort.groups, dtype=object)[keep].astype(str)
    folds = make_folds(patients, n_folds=n_folds, seed=seed)

    if run is not None:
        # nothing of an earlier run (fold models, explain/, the report) stays beside the new one
        prepare_output_dir(run, overwrite=overwrite)
    pred_parts, att_parts, seconds = [], [], {m: 0.0 for m in models}
    bar = _Progress(enabled=progress, total=len(models) * n_folds)
    with bar:
        for name in models:
            for k in range(n_folds):
                bar.describe(f"{name} fold {k + 1}/{n_folds}")
                tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
                est = make_model(name, params=model_params.get(name), random_state=seed + k)
                t0 = time.perf_counter()
                _fit(
                    est, [bags[i] for i in tr], Y[tr], patients[tr], name=name, params=model_params.get(name)
                )
                test_bags = [bags[i] for i in te]
                yp = np.asarray(est.predict(test_bags), dtype=np.float64).reshape(len(te), len(genes))
                seconds[name] += time.perf_counter() - t0
                base = Y[tr].mean(axis=0)
                pred_parts.append(
                    pd.DataFrame(
                        {
                            "model": name,
                            "fold": np.int32(k),
                            "bag_id": np.repeat(bag_ids[te], len(genes)),
                            "patient_id": np.repeat(patients[te], len(genes)),
                            "gene": np.tile(genes, len(te)),
                            "y_true": Y[te].ravel(),
                            "y_pred": yp.ravel(),
                            "y_baseline": np.tile(base, len(te)),
                        }
                    )
                )
                if name in MIL_MODELS:
                    att_parts.append(
                        _attention_rows(est, cohort, keep[te], test_bags, name=name, fold=k, genes=genes)
                    )
                if run is not None and save_models:
                    import joblib

                    path = layout.model(name, k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    joblib.dump(est, path)
                bar.advance()

    pred = pd.concat(pred_parts, ignore_index=True)
    metrics = metrics_table(pred, genes=genes, models=models)
    comparisons = _comparisons(metrics, models=models, seed=seed)
    summary = _summary(metrics, models=models, seconds=seconds)
    folds_df = pd.DataFrame({"bag_id": bag_ids, "patient_id": patients, "fold": folds.astype(np.int32)})
    predictions = pred.drop(columns="y_baseline")
    config = {
        "store": None if store is None else str(Path(store).resolve()),
        "targets": targets,
        "encoder": cohort.encoder,
        "tiling": cohort.tiling,
        "by": cohort.by,
        "models": models,
        "model_params": _jsonable(model_params),
        "n_folds": int(n_folds),
        "seed": int(seed),
        "genes": genes,
        "transform": _target_transform(store, targets),
        "version": package_version(),
        "encoder_meta": _jsonable(dict(cohort.meta)),
        "dropped_bags": dropped,
    }
    att_table = _concat_attention(att_parts)
    if run is not None:
        write_bytes_atomic(layout.config, json.dumps(config, indent=2).encode())
        write_table_atomic(_arrow(folds_df, FOLDS_SCHEMA), layout.folds)
        write_table_atomic(_arrow(predictions, PREDICTIONS_SCHEMA), layout.predictions, compression="zstd")
        write_table_atomic(_arrow(metrics, METRICS_SCHEMA), layout.metrics)
        write_table_atomic(_arrow(comparisons, COMPARISONS_SCHEMA), layout.comparisons)
        write_table_atomic(att_table, layout.attention, compression="zstd")
        from slide2expr.regress._plots import plot_compare_pearson

        fig = plot_compare_pearson(metrics, models=models)
        layout.plots.mkdir(exist_ok=True)
        fig.savefig(layout.plots / "compare_pearson.png", dpi=110)
    result = CompareResult(
        run,
        config,
        folds_df,
        predictions,
        metrics,
        comparisons,
        summary,
        attention_rows=att_table.num_rows,
        seconds=seconds,
    )
    if progress:
        print_summary(result)
    return result


def _target_transform(store, targets) -> str | None:
    if store is None or targets is None:
        return None
    try:
        path = targets_path(store, targets) if not str(targets).endswith(".parquet") else Path(targets)
        meta = read_metadata(path)
    except (OSError, ValueError):
        return None
    return meta.get("transform")


def _attention_rows(est, cohort, bag_index, test_bags, *, name: str, fold: int, genes: list[str]) -> pa.Table:
    """Held-out attention as an Arrow table (gene-major within a bag; tiles in cohort order = tile_id order)."""
    outs = [(t.attention, t.attention_logit, t.tile_pred) for t in est.predict_tiles(test_bags)]
    G = len(genes)
    cols = {
        k: [] for k in ("bag_id", "slide_id", "tile_id", "x", "y", "gene", "attention", "logit", "tile_pred")
    }
    for b, (att, logits, tile) in zip(bag_index, outs, strict=True):
        sl = cohort.bag_slice(int(b))
        n = sl.stop - sl.start
        cols["bag_id"].append(np.full(n * G, str(cohort.bag_ids[b]), dtype=object))
        cols["slide_id"].append(np.tile(np.asarray(cohort.slide_ids[sl], dtype=object), G))
        cols["tile_id"].append(np.tile(np.asarray(cohort.tile_ids[sl], dtype=np.int32), G))
        cols["x"].append(np.tile(np.asarray(cohort.x[sl], dtype=np.int64), G))
        cols["y"].append(np.tile(np.asarray(cohort.y[sl], dtype=np.int64), G))
        cols["gene"].append(np.repeat(np.asarray(genes, dtype=object), n))
        cols["attention"].append(att.T.ravel().astype(np.float32))
        cols["logit"].append(
            np.full(n * G, np.nan, np.float32) if logits is None else logits.T.ravel().astype(np.float32)
        )
        cols["tile_pred"].append(None if tile is None else tile.T.ravel().astype(np.float32))
    n_rows = sum(len(a) for a in cols["attention"])

    def strings(parts):
        return pa.array(np.concatenate(parts), type=pa.string())

    tile_pred = (
        pa.nulls(n_rows, type=pa.float32())
        if any(t is None for t in cols["tile_pred"])
        else pa.array(np.concatenate(cols["tile_pred"]), type=pa.float32())
    )
    return pa.table(
        {
            "model": pa.array(np.full(n_rows, name, dtype=object), type=pa.string()),
            "fold": pa.array(np.full(n_rows, fold, dtype=np.int32)),
            "bag_id": strings(cols["bag_id"]),
            "slide_id": strings(cols["slide_id"]),
            "tile_id": pa.array(np.concatenate(cols["tile_id"]), type=pa.int32()),
            "x": pa.array(np.concatenate(cols["x"]), type=pa.int64()),
            "y": pa.array(np.concatenate(cols["y"]), type=pa.int64()),
            "gene": strings(cols["gene"]),
            "attention": pa.array(np.concatenate(cols["attention"]), type=pa.float32()),
            "attention_logit": pa.array(np.concatenate(cols["logit"]), type=pa.float32(), from_pandas=True),
            "tile_pred": tile_pred,
        },
        schema=ATTENTION_SCHEMA,
    )


def _arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.table(
        {
            f.name: pa.array(
                df[f.name].to_numpy(
                    dtype=object if pa.types.is_string(f.type) or pa.types.is_boolean(f.type) else None
                ),
                type=f.type,
                from_pandas=True,
            )
            for f in schema
        },
        schema=schema,
    )


def _concat_attention(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return ATTENTION_SCHEMA.empty_table()
    return pa.concat_tables(parts)


def _comparisons(metrics: pd.DataFrame, *, models: list[str], seed: int) -> pd.DataFrame:
    pooled = metrics[metrics["fold"] == -1].pivot(index="gene", columns="model", values="pearson_r")
    rows = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            rows.append(
                {
                    "model_a": a,
                    "model_b": b,
                    "metric": "pearson_r",
                    **paired_comparison(pooled[a].to_numpy(), pooled[b].to_numpy(), seed=seed),
                }
            )
    return pd.DataFrame(rows, columns=COMPARISONS_SCHEMA.names)


def _summary(metrics: pd.DataFrame, *, models: list[str], seconds: Mapping[str, float]) -> pd.DataFrame:
    pooled = metrics[metrics["fold"] == -1]
    rows = []
    for m in models:
        p = pooled[pooled["model"] == m]
        ratio = p["rmse"] / p["rmse_baseline"]
        rows.append(
            {
                "model": m,
                "median_r": float(np.nanmedian(p["pearson_r"]))
                if p["pearson_r"].notna().any()
                else float("nan"),
                "n_well_predicted": int(p["well_predicted"].astype(bool).sum()),
                "n_genes": len(p),
                "median_rmse_ratio": float(np.nanmedian(ratio)) if ratio.notna().any() else float("nan"),
                "fit_seconds": float(seconds.get(m, float("nan"))),
            }
        )
    return pd.DataFrame(rows)


def print_summary(result: CompareResult, *, console=None) -> None:
    """Print the comparison table (per model: median r, genes well predicted, median RMSE ratio)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    cfg = result.config
    table = Table(
        title=f"{len(cfg['genes'])} genes · {len(result.folds)} bags · {cfg['n_folds']}-fold patient-grouped CV",
        caption="well predicted: pooled r > 0, BH-FDR < 0.05, RMSE < training-mean RMSE",
    )
    for col, justify in (
        ("model", "left"),
        ("median r", "right"),
        ("well predicted", "right"),
        ("median RMSE ratio", "right"),
        ("fit s", "right"),
    ):
        table.add_column(col, justify=justify)
    for r in result.summary.itertuples():
        table.add_row(
            r.model,
            f"{r.median_r:.3f}",
            f"{r.n_well_predicted}/{r.n_genes}",
            f"{r.median_rmse_ratio:.3f}",
            f"{r.fit_seconds:.1f}",
        )
    console.print(table)
    if result.run is not None:
        console.print(f"run directory: {result.run}")


class _Progress:
    """A rich progress bar over models × folds, or nothing."""

    def __init__(self, *, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self._p = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._p.__enter__()
            self._task = self._p.add_task("compare", total=self.total)
        return self

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False
