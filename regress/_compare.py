"""``compare``: every model on the same patient-grouped folds, metrics, statistics and a run directory.

``compare`` composes three steps that can be called on their own: :func:`plan_compare` (every check, nothing
written), :func:`~slide2expr.regress.cross_fit` (the fold loop) and the run writer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contract import (
    COMPARISONS_SCHEMA,
    RUN_FILES,
    Cohort,
    RunLayout,
    check_output_dir,
    package_version,
    prepare_output_dir,
)
from slide2expr.regress._checks import check_device
from slide2expr.regress._folds import FoldOutputs, cross_fit, make_folds
from slide2expr.regress._harness import (
    CompareError,
    check_cohort_targets,
    complete_bags,
    jsonable,
    target_transform,
)
from slide2expr.regress._models import list_models, make_model, model_info
from slide2expr.regress._runs import save_fold_model, write_run
from slide2expr.regress._stats import metrics_table, paired_comparison

#: The floor every comparison includes.
FLOOR_MODEL = "mean"


@dataclass(frozen=True)
class ComparePlan:
    """What :func:`compare` will run, every argument checked (:func:`plan_compare`).

    Attributes
    ----------
    models
        Model names in run order, the floor (``"mean"``) last.
    model_params
        Per model, its parameters (``device`` filled in for the models that take one).
    genes
        Target columns.
    keep
        ``(n_bags,)`` rows of the cohort with every target value; the others' ids are in ``dropped``.
    bag_ids, patients, folds
        ``(n_bags,)`` per kept bag: its id, its patient and its fold.
    """

    models: tuple[str, ...]
    model_params: dict[str, dict]
    genes: tuple[str, ...]
    n_folds: int
    seed: int
    keep: np.ndarray
    dropped: tuple[str, ...]
    bag_ids: np.ndarray
    patients: np.ndarray
    folds: np.ndarray
    out: Path | None = None

    def describe(self) -> str:
        """The plan in a few lines (what ``--dry-run`` prints)."""
        sizes = np.bincount(self.folds, minlength=self.n_folds).tolist()
        lines = [
            f"compare {', '.join(self.models)} on {self.n_folds} patient-grouped folds (seed {self.seed}): "
            f"{len(self.keep)} bags of {len(set(self.patients))} patients × {len(self.genes)} genes; "
            f"held-out bags per fold {sizes}",
            *(f"  {m}: {self.model_params[m]}" for m in self.models if self.model_params.get(m)),
        ]
        if self.dropped:
            lines.append(f"  {len(self.dropped)} bag(s) without complete targets left out")
        where = (
            "nothing (out=None)"
            if self.out is None
            else f"{self.out}/ ({', '.join(RUN_FILES)}, models/, plots/)"
        )
        return "\n".join([*lines, f"would write {where}"])


def plan_compare(
    cohort: Cohort,
    *,
    models: Sequence[str] = ("mil", "lgbm", "ridge"),
    n_folds: int = 5,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    model_params: Mapping[str, Mapping] | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> ComparePlan:
    """Check everything :func:`compare` checks and return its plan; writes nothing.

    Raises :class:`CompareError` (no targets, repeated genes, bad ``model_params`` or ``n_folds``),
    :class:`UnknownModelError` (unknown models or parameters), :class:`BagInputError` (``device``) and
    :class:`OutputExistsError` (``out`` not replaceable); warns :class:`LeftOutBagsWarning`.
    """
    genes = check_cohort_targets(cohort)
    names = list(dict.fromkeys([models] if isinstance(models, str) else models))
    if not names:
        raise CompareError(f"models is empty: choose from {', '.join(list_models())}")
    for m in names:
        model_info(m)
    params = _model_params(model_params, models=[*names, *([FLOOR_MODEL] * (FLOOR_MODEL not in names))])
    if device is not None:
        check_device(device)
        for m in names:
            if model_info(m).takes_device:
                params.setdefault(m, {}).setdefault("device", device)
    if FLOOR_MODEL not in names:
        names.append(FLOOR_MODEL)
    for m in names:
        make_model(m, params=params.get(m), random_state=seed)
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    keep, dropped = complete_bags(cohort, what="the comparison")
    bag_ids = np.asarray(cohort.bag_ids, dtype=object)[keep].astype(str)
    patients = np.asarray(cohort.groups, dtype=object)[keep].astype(str)
    folds = make_folds(patients, n_folds=n_folds, seed=seed)
    out = None if out is None else Path(out)
    return ComparePlan(
        tuple(names),
        params,
        tuple(genes),
        int(n_folds),
        int(seed),
        keep,
        tuple(dropped),
        bag_ids,
        patients,
        folds,
        out,
    )


def _model_params(model_params, *, models: list[str]) -> dict[str, dict]:
    if model_params is None:
        return {}
    if not isinstance(model_params, Mapping):
        raise CompareError(
            f"model_params must map model names to their parameters, e.g. {{'mil': {{'max_epochs': 30}}}}; "
            f"got {model_params!r}"
        )
    for k, v in model_params.items():
        if k not in models:
            raise CompareError(
                f"model_params names {k!r}, which is not among the models run: {', '.join(models)}"
            )
        if not isinstance(v, Mapping):
            raise CompareError(
                f"model_params[{k!r}] must be a mapping: the parameters of {k!r} must be a JSON object, e.g. "
                f'{{"{k}": {{…}}}}; got {v!r}'
            )
    return {k: dict(v) for k, v in model_params.items()}


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


def compare(
    cohort: Cohort,
    *,
    models: Sequence[str] = ("mil", "lgbm", "ridge"),
    n_folds: int = 5,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    model_params: Mapping[str, Mapping] | None = None,
    device: str | None = None,
    progress: bool = True,
    store: str | os.PathLike | None = None,
    targets: str | None = None,
    save_models: bool = True,
    overwrite: bool = False,
) -> CompareResult:
    """Cross-validate ``models`` on the same patient-grouped folds and write a run directory.

    Every model is fitted per fold on the training patients only and predicts every held-out bag; the
    training-mean floor (``"mean"``) is always included. Bags with a missing target value are left out (and
    reported).

    Parameters
    ----------
    cohort
        Bags with targets (``sql.load_cohort(store, encoder=…, targets=…)``).
    models
        Registered model names (:func:`regress.list_models`).
    n_folds, seed
        ``GroupKFold(n_folds, shuffle=True, random_state=seed)`` over patients; fold ``k`` fits models with
        ``random_state = seed + k``.
    out
        The run directory to write (created); None computes without writing. A folder that is not empty is
        refused (:class:`OutputExistsError`) unless ``overwrite``, which replaces what slide2expr wrote there (an
        earlier run with its fold models, ``explain/`` output and report) and refuses anything else.
    model_params
        Per model name, its parameters (:func:`regress.make_model`), e.g. ``{"mil": {"max_epochs": 30}}``.
    device
        ``device`` of every model that takes one (``auto``, ``cpu``, ``cuda``, ``cuda:<i>``), unless its
        ``model_params`` give one.
    progress
        Show a progress bar (models × folds) and print the comparison table.
    store, targets
        Recorded in ``config.json`` (where the cohort came from), with the targets' transform.
    save_models
        Write ``models/<model>/fold<k>.joblib``.

    Writes
    ------
    ``RUN/config.json``, ``folds.parquet`` (one row per bag), ``predictions.parquet`` (model × bag × gene),
    ``metrics.parquet`` (model × gene × fold, fold -1 pooled), ``comparisons.parquet`` (model pairs),
    ``attention.parquet`` (attention models, held-out tiles × genes), ``models/<model>/fold<k>.joblib``,
    ``plots/compare_pearson.png``.
    """
    plan = plan_compare(
        cohort,
        models=models,
        n_folds=n_folds,
        seed=seed,
        out=out,
        model_params=model_params,
        device=device,
        overwrite=overwrite,
    )
    layout = None if plan.out is None else RunLayout(prepare_output_dir(plan.out, overwrite=overwrite))
    saving = layout is not None and save_models
    fits = cross_fit(
        cohort, plan, on_fitted=partial(save_fold_model, layout) if saving else None, progress=progress
    )
    result = summarise(plan, fits, config=run_config(cohort, plan, store=store, targets=targets))
    if layout is not None:
        tables = {k: getattr(result, k) for k in ("folds", "predictions", "metrics", "comparisons")}
        write_run(layout, config=result.config, attention=fits.attention, models=list(plan.models), **tables)
    if progress:
        print_summary(result)
    return result


def run_config(cohort: Cohort, plan: ComparePlan, *, store=None, targets: str | None = None) -> dict:
    """The content of a run's ``config.json``: where the cohort came from and what was compared."""
    return {
        "store": None if store is None else str(Path(store).resolve()),
        "targets": targets,
        "encoder": cohort.encoder,
        "tiling": cohort.tiling,
        "by": cohort.by,
        "models": list(plan.models),
        "model_params": jsonable(plan.model_params),
        "n_folds": plan.n_folds,
        "seed": plan.seed,
        "genes": list(plan.genes),
        "transform": target_transform(store, targets),
        "version": package_version(),
        "encoder_meta": jsonable(dict(cohort.meta)),
        "dropped_bags": list(plan.dropped),
    }


def summarise(plan: ComparePlan, fits: FoldOutputs, *, config: dict) -> CompareResult:
    """Metrics per model, gene and fold, paired model comparisons and the summary table of the fold outputs."""
    models, genes = list(plan.models), list(plan.genes)
    metrics = metrics_table(fits.predictions, genes=genes, models=models)
    folds = pd.DataFrame(
        {"bag_id": plan.bag_ids, "patient_id": plan.patients, "fold": plan.folds.astype(np.int32)}
    )
    return CompareResult(
        plan.out,
        config,
        folds,
        fits.predictions.drop(columns="y_baseline"),
        metrics,
        _comparisons(metrics, models=models, seed=plan.seed),
        _summary(metrics, models=models, seconds=fits.seconds),
        attention_rows=fits.attention.num_rows,
        seconds=fits.seconds,
    )


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
    for col in ("model", "median r", "well predicted", "median RMSE ratio", "fit s"):
        table.add_column(col, justify="left" if col == "model" else "right")
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
