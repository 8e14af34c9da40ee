"""``compare``: every model on the same patient-grouped folds, metrics, statistics and a run directory.

``compare`` composes three steps that can be called on their own: :func:`plan_compare` (every check, nothing
written), :func:`~slide2expr.regress.cross_fit` (the fold loop) and the run writer.

Genes: a fixed choice (a panel, a file or list of names, protein-coding only) is made once; a top-N choice by
variance or mean is made per fold on its training patients (:mod:`slide2expr.regress._genes`), and a gene chosen in
some folds only is reported pooled over those folds, with their count (``folds_selected``).

Resume: each finished model × fold is written to ``RUN/partial/`` as it finishes, with the settings' fingerprint; a
rerun with the same settings and ``out`` fits only the rest and writes the same run directory as an uninterrupted
run (``partial/`` is removed at the end); other settings are refused (``overwrite`` restarts).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
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
    store_location,
)
from slide2expr.regress._checks import check_device
from slide2expr.regress._folds import FoldOutputs, cross_fit, make_folds, null_fits
from slide2expr.regress._genes import (
    MAX_ATTENTION_GENES,
    GeneSelection,
    GeneSelectionWarning,
    attention_columns,
    default_selection_message,
    fold_gene_columns,
    select_genes,
    top_genes_of,
)
from slide2expr.regress._harness import (
    FLOOR_MODEL,
    CompareError,
    CompareInterrupted,
    check_cohort_targets,
    check_fold_sizes,
    check_targets_vary,
    complete_bags,
    fit_keys,
    jsonable,
    plan_cohort,
    target_transform,
)
from slide2expr.regress._models import list_models, make_model, model_info
from slide2expr.regress._runs import (
    PartialRun,
    check_resume,
    interrupted_run,
    run_settings,
    save_fold_model,
    write_run,
)
from slide2expr.regress._stats import (
    FDR_LEVEL,
    bh_fdr,
    gene_comparisons,
    metrics_table,
    paired_comparison,
)
from slide2expr.regress._streaming import (
    MemoryBoundWarning,
    Stages,
    attention_cap,
    fold_inputs,
    is_lazy,
)
from slide2expr.sql import check_max_memory_gb


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
        The compared genes: those any fold chose, in the cohort's order (a panel's or file's order for one).
    keep
        ``(n_bags,)`` rows of the cohort with every target value; the others' ids are in ``dropped``.
    bag_ids, patients, folds
        ``(n_bags,)`` per kept bag: its id, its patient and its fold.
    fold_genes, attention_genes
        Per fold, the indices into ``genes`` it fits and predicts (chosen on its training patients), and those whose
        attention it records (at most :data:`~slide2expr.regress._genes.MAX_ATTENTION_GENES`).
    selection
        The gene choice (:class:`~slide2expr.regress.GeneSelection`).
    settings
        What the outputs depend on and its fingerprint (``RUN/partial/settings.json``); None without ``out``.
    resume
        The (model, fold) fits an interrupted run with the same settings left in ``out``, which compare loads.
    max_memory_gb
        The memory bound of a run on a cohort read on access (:class:`sql.LazyCohort`); None for one in memory.
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
    fold_genes: tuple[np.ndarray, ...] = ()
    attention_genes: tuple[np.ndarray, ...] = ()
    selection: GeneSelection | None = None
    settings: dict | None = None
    resume: tuple[tuple[str, int], ...] | None = None
    max_memory_gb: float | None = None

    def describe(self) -> str:
        """The plan in a few lines (what ``--dry-run`` prints)."""
        sizes = np.bincount(self.folds, minlength=self.n_folds).tolist()
        lines = [
            f"compare {', '.join(self.models)} on {self.n_folds} patient-grouped folds (seed {self.seed}): "
            f"{len(self.keep)} bags of {len(set(self.patients))} patients × {len(self.genes)} genes; "
            f"held-out bags per fold {sizes}",
            *(f"  {m}: {self.model_params[m]}" for m in self.models if self.model_params.get(m)),
        ]
        if self.selection is not None:
            per_fold = sorted({len(c) for c in self.fold_genes})
            lines.append(
                f"  genes: {self.selection.describe()}; {len(self.genes)} compared in all, "
                f"{'-'.join(map(str, per_fold[:: max(1, len(per_fold) - 1)]))} per fold; attention recorded for "
                f"at most {MAX_ATTENTION_GENES} genes per fold"
            )
        if self.dropped:
            lines.append(f"  {len(self.dropped)} bag(s) without complete targets left out")
        if self.max_memory_gb is not None:
            lines.append(
                f"  bags read on access from the store, memory bounded by {self.max_memory_gb:g} GB (pooled "
                "features from the store's cache, tile projections fitted on a sample of each fold's training tiles)"
            )
        if self.resume is not None:
            lines.append(
                f"  resumes the interrupted run in {self.out}: {len(self.resume)} of "
                f"{len(fit_keys(self.models)) * self.n_folds} model × fold fits (nulls included) are done"
            )
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
    genes=None,
    top_genes: int | None = None,
    rank_genes_by: str = "variance",
    protein_coding: bool = False,
    save_models: bool = True,
    max_memory_gb: float | None = None,
) -> ComparePlan:
    """Check everything :func:`compare` checks and return its plan; writes nothing.

    Chooses the genes of each fold on its training patients (:func:`~slide2expr.regress.select_genes`; the
    parameters are :func:`compare`'s). On a cohort read on access (:class:`sql.LazyCohort`) it also checks that
    the run fits ``max_memory_gb`` and records attention of as many genes per fold as fit a quarter of it (a
    :class:`MemoryBoundWarning` when fewer than in memory). Raises :class:`CompareError` (no targets, repeated genes, bad
    ``model_params`` or ``n_folds``, fewer than 3 patients in a held-out fold, a gene with one value for every bag,
    no bag with every value), :class:`GeneSelectionError` (unknown genes, bad ``top_genes``),
    :class:`UnknownModelError` (unknown models or parameters), :class:`BagInputError` (``device``) and
    :class:`OutputExistsError` (``out`` not replaceable, or holding an interrupted run with other settings); warns
    :class:`LeftOutBagsWarning` and, above 2,000 genes with no choice made, :class:`GeneSelectionWarning`.
    """
    check_cohort_targets(cohort)
    selection = select_genes(
        cohort.genes,
        genes=genes,
        top_genes=top_genes,
        rank_genes_by=rank_genes_by,
        protein_coding=protein_coding,
        gene_types=(cohort.meta or {}).get("gene_types"),
    )
    if selection.defaulted:
        warnings.warn(default_selection_message(len(selection.genes)), GeneSelectionWarning, stacklevel=2)
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
    resuming = out is not None and not overwrite and PartialRun.read(out) is not None
    if out is not None and not resuming:
        check_output_dir(out, overwrite=overwrite)
    keep, dropped, y = _complete_targets(cohort, selection)
    bag_ids = np.asarray(cohort.bag_ids, dtype=object)[keep].astype(str)
    patients = np.asarray(cohort.groups, dtype=object)[keep].astype(str)
    folds = make_folds(patients, n_folds=n_folds, seed=seed)
    check_fold_sizes(patients, folds, n_folds=n_folds)
    compared, fold_genes, attention_genes = _fold_genes(y, folds, selection, n_folds=int(n_folds))
    plan = ComparePlan(
        tuple(names),
        params,
        tuple(selection.genes[i] for i in compared),
        int(n_folds),
        int(seed),
        keep,
        tuple(dropped),
        bag_ids,
        patients,
        folds,
        None if out is None else Path(out),
        fold_genes=fold_genes,
        attention_genes=attention_genes,
        selection=selection,
    )
    bound = None if max_memory_gb is None and not is_lazy(cohort) else check_max_memory_gb(max_memory_gb)
    if is_lazy(cohort):
        plan = _bounded(cohort, plan, y=y[:, compared], max_memory_gb=bound)
    if out is None:
        return plan
    settings = run_settings(cohort, plan, save_models=save_models)
    if not resuming:
        return dataclasses.replace(plan, settings=settings)
    check_resume(out, settings)
    done = tuple(PartialRun(RunLayout(out), settings).finished(fit_keys(plan.models), plan.n_folds))
    return dataclasses.replace(plan, settings=settings, resume=done)


def _bounded(cohort, plan: ComparePlan, *, y: np.ndarray, max_memory_gb: float) -> ComparePlan:
    """``plan`` for a cohort read on access: its memory bound, and per fold the attention genes that fit it (those
    of highest ``rank_genes_by`` on the fold's training patients)."""
    plan = dataclasses.replace(plan, max_memory_gb=max_memory_gb)
    cap = attention_cap(cohort, plan, max_memory_gb=max_memory_gb)
    if cap is None:
        return plan
    rank_by = plan.selection.rank_genes_by if plan.selection is not None else "variance"
    capped = []
    for k, cols in enumerate(plan.attention_genes):
        cols = np.asarray(cols)
        if len(cols) > cap:
            cols = cols[top_genes_of(y[plan.folds != k][:, cols], top=cap, rank_by=rank_by)[:cap]]
            if len(cols) < cap:
                cols = np.asarray(plan.attention_genes[k])[:cap]
        capped.append(cols)
    warnings.warn(
        f"attention is recorded for {cap} gene(s) per fold, as many as fit a quarter of max_memory_gb="
        f"{max_memory_gb:g} for {int(cohort.n_tiles[plan.keep].sum()):,} tiles; give more memory "
        "(--max-memory-gb) to record more",
        MemoryBoundWarning,
        stacklevel=3,
    )
    return dataclasses.replace(plan, attention_genes=tuple(capped))


def _complete_targets(cohort: Cohort, selection: GeneSelection) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``(kept rows, left-out bag ids, (n_kept, n_candidates) targets)``: the bags with every candidate gene's
    value; :class:`CompareError` for a gene with no value at all, no complete bag, or (with no top-N choice, which
    never keeps such genes) a gene with one value for every kept bag."""
    y_all = np.asarray(cohort.y_true, dtype=np.float64)[:, selection.index]
    some = ~np.isnan(y_all).all(axis=1)
    empty = (
        [selection.genes[i] for i in np.flatnonzero(np.isnan(y_all[some]).all(axis=0))] if some.any() else []
    )
    if empty:
        raise CompareError(
            f"{len(empty)} gene(s) have no value for any bag: {', '.join(empty[:10])}"
            + (" …" if len(empty) > 10 else "")
            + "; leave them out with genes= (--genes)"
        )
    if np.isnan(y_all).any(axis=1).all():
        raise CompareError(
            "no bag has a value for every gene compared: check that the targets' patients are the store's "
            "(`slide2expr targets list`) or choose genes with genes= (--genes)"
        )
    keep, dropped = complete_bags(cohort, what="the comparison", columns=selection.index)
    y = y_all[keep]
    if selection.top_genes is None:
        check_targets_vary(
            y,
            selection.genes,
            what="leave them out with genes= (--genes), or choose top_genes= (--top-genes), which keeps only genes "
            "that vary on each fold's training patients",
        )
    return keep, dropped, y


def _fold_genes(
    y: np.ndarray, folds: np.ndarray, selection: GeneSelection, *, n_folds: int
) -> tuple[np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """``(compared, fold_genes, attention_genes)``: the candidates any fold chose (indices into
    ``selection.genes``), and per fold its genes and recorded-attention genes as indices into the compared ones."""
    per_fold = fold_gene_columns(
        y, folds, n_folds=n_folds, top=selection.top_genes, rank_by=selection.rank_genes_by
    )
    for k, cols in enumerate(per_fold):
        if not len(cols):
            raise CompareError(
                f"no gene varies on the training patients of fold {k}: the targets cannot be compared"
            )
    compared = np.unique(np.concatenate(per_fold))
    if selection.top_genes is None:  # a fixed choice keeps its own order (a panel's, a file's)
        compared = np.arange(y.shape[1])
    where = {c: i for i, c in enumerate(compared)}
    fold_genes = tuple(np.array([where[c] for c in cols], dtype=np.int64) for cols in per_fold)
    attention = tuple(
        attention_columns(y[folds != k][:, compared], cols, rank_by=selection.rank_genes_by)
        for k, cols in enumerate(fold_genes)
    )
    return compared, fold_genes, attention


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


def with_folds_selected(metrics: pd.DataFrame, plan: ComparePlan) -> pd.DataFrame:
    """``metrics`` with ``folds_selected``: how many folds compared each gene (its pooled rows use those folds)."""
    counts = np.bincount(np.concatenate(plan.fold_genes), minlength=len(plan.genes))
    out = metrics.copy()
    count = dict(zip(plan.genes, counts.tolist(), strict=True))
    out["folds_selected"] = out["gene"].map(count).astype("int32")
    return out


def _says_how_to_resume(run):
    """``compare`` raising :class:`CompareInterrupted` on Ctrl-C: what finished and how to resume it."""

    @functools.wraps(run)
    def wrapper(cohort: Cohort, **kwargs) -> CompareResult:
        try:
            return run(cohort, **kwargs)
        except CompareInterrupted:
            raise
        except KeyboardInterrupt:
            raise interrupted_run(kwargs.get("out")) from None

    return wrapper


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
        ``n_r_above`` (genes with pooled r > :data:`R_COUNT_THRESHOLD`, as DeepPT counts them),
        ``median_rmse_ratio`` (RMSE ÷ training-mean RMSE), ``fit_seconds`` (all folds).
    stages : dict
        Per stage of :func:`compare` (``plan``, ``pooled features`` on a cohort read on access, ``fit``, ``null``,
        ``summarise and write``): ``{"seconds", "peak_rss_gb"}``, the process's peak resident memory when it ended.
    gene_comparisons : pandas.DataFrame or None
        The across-patients axis: per model pair and gene, Steiger's test of the two pooled correlations
        (:func:`~slide2expr.regress.gene_comparisons`; ``fdr`` is its BH adjustment within the pair).
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
    gene_comparisons: pd.DataFrame | None = None
    stages: dict = field(default_factory=dict)


@_says_how_to_resume
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
    genes=None,
    top_genes: int | None = None,
    rank_genes_by: str = "variance",
    protein_coding: bool = False,
    max_memory_gb: float | None = None,
) -> CompareResult:
    """Cross-validate ``models`` on the same patient-grouped folds and write a run directory.

    Every model is fitted per fold on the training patients only and predicts every held-out bag; the
    training-mean floor (``"mean"``) is always included. Bags with a missing target value are left out (and
    reported).

    Parameters
    ----------
    cohort
        Bags with targets: in memory (``sql.load_cohort(store, encoder=…, targets=…)``) or read on access
        (``sql.lazy_cohort``; ``sql.open_cohort`` chooses by ``max_memory_gb``), where the pooled baselines use
        the store's cached pooled features and an attention model's tile projection is fitted on a bounded sample
        of each fold's training tiles (:mod:`slide2expr.regress._streaming`).
    models
        Registered model names (:func:`regress.list_models`).
    n_folds, seed
        ``GroupKFold(n_folds, shuffle=True, random_state=seed)`` over patients; fold ``k`` fits models with
        ``random_state = seed + k``.
    out
        The run directory to write (created); None computes without writing. A folder that is not empty is
        refused (:class:`OutputExistsError`) unless ``overwrite``, which replaces what slide2expr wrote there (an
        earlier run with its fold models, ``explain/`` output and report) and refuses anything else. A folder
        holding a compare interrupted with the same settings is resumed: its finished model × fold fits are
        loaded, the others fitted (other settings are refused; ``overwrite`` restarts).
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
    genes
        None (every gene of the cohort; above 2,000 genes, with no ``top_genes``, the 2,000 of highest variance per
        fold, with a :class:`GeneSelectionWarning` that says how to choose), ``"all"`` (every gene however many), a
        panel name (``"graziani2022"``), a file of gene names, or a list.
    top_genes, rank_genes_by
        Per fold, compare the ``top_genes`` genes of highest ``"variance"`` or ``"mean"`` on its training patients
        (genes constant there are never chosen). A gene chosen in some folds only is scored on those folds' held-out
        bags (``folds_selected`` in ``metrics.parquet``).
    protein_coding
        Only genes whose GENCODE ``gene_type`` is ``protein_coding`` (targets imported from GDC STAR-counts).
    max_memory_gb
        On a cohort read on access, the memory the run may hold (default ``sql.default_max_memory_gb()``, a
        third of the machine's): checked before fitting, and the attention recorded is cut to fit a quarter of it.

    Raises
    ------
    CompareInterrupted
        Ctrl-C: how many model × fold fits finished (kept in ``RUN/partial/``) and how to resume.

    Writes
    ------
    ``RUN/config.json``, ``folds.parquet`` (one row per bag), ``predictions.parquet`` (model × bag × gene),
    ``metrics.parquet`` (model × gene × fold, fold -1 pooled), ``comparisons.parquet`` (model pairs),
    ``attention.parquet`` (attention models, held-out tiles × at most 50 genes per fold: all of a fold's genes
    when that few, else those of highest ``rank_genes_by`` on its training patients), ``models/<model>/fold<k>.joblib``,
    ``plots/compare_pearson.png``; while running, ``partial/`` (removed at the end).
    """
    stages = Stages()
    with stages("plan"):
        plan = plan_compare(
            cohort,
            models=models,
            n_folds=n_folds,
            seed=seed,
            out=out,
            model_params=model_params,
            device=device,
            overwrite=overwrite,
            genes=genes,
            top_genes=top_genes,
            rank_genes_by=rank_genes_by,
            protein_coding=protein_coding,
            save_models=save_models,
            max_memory_gb=max_memory_gb,
        )
    cohort = plan_cohort(cohort, plan)  # y_true of the compared genes only
    # each fold's projected bags kept on disk, so its null reuses them (regress._streaming): under partial/ with a
    # run directory (a resumed run reuses them; removed with partial/), else in a temporary folder removed on exit
    spill = True if plan.out is None else RunLayout(plan.out).partial_projected
    with fold_inputs(cohort, plan, spill=spill) as inputs:
        if is_lazy(cohort) and any(not model_info(m).attention for m in plan.models if m != FLOOR_MODEL):
            with stages("pooled features"):
                inputs.pooled  # noqa: B018 (one streaming pass over the store, or its cache)
        layout = checkpoint = None
        if plan.out is not None:
            fresh = plan.resume is None
            layout = RunLayout(prepare_output_dir(plan.out, overwrite=overwrite) if fresh else plan.out)
            checkpoint = PartialRun.start(layout, plan.settings)
        saving = layout is not None and save_models
        with stages("fit"):
            fits = cross_fit(
                cohort,
                plan,
                on_fitted=partial(save_fold_model, layout) if saving else None,
                progress=progress,
                checkpoint=checkpoint,
                inputs=inputs,
            )
        # the null of every model but the floor (whose null is itself): the same model on permuted training targets
        with stages("null"):
            null = null_fits(
                cohort, plan, skip=(FLOOR_MODEL,), progress=progress, inputs=inputs, checkpoint=checkpoint
            )
    with stages("summarise and write"):
        result = summarise(
            plan, fits, config=run_config(cohort, plan, store=store, targets=targets), null=null
        )
        if layout is not None:
            tables = {k: getattr(result, k) for k in ("folds", "predictions", "metrics", "comparisons")}
            write_run(
                layout, config=result.config, attention=fits.attention, models=list(plan.models), **tables
            )
            checkpoint.remove()
    result.stages = stages.table
    if progress:
        print_summary(result)
    return result


def run_config(cohort: Cohort, plan: ComparePlan, *, store=None, targets: str | None = None) -> dict:
    """The content of a run's ``config.json``: where the cohort came from and what was compared."""
    return {
        "store": None if store is None else store_location(store),
        "targets": targets,
        "encoder": cohort.encoder,
        "tiling": cohort.tiling,
        "by": cohort.by,
        "models": list(plan.models),
        "model_params": jsonable(plan.model_params),
        "n_folds": plan.n_folds,
        "seed": plan.seed,
        "genes": list(plan.genes),
        "gene_selection": _selection_config(plan),
        "transform": target_transform(store, targets),
        "version": package_version(),
        "encoder_meta": jsonable({k: v for k, v in cohort.meta.items() if k != "gene_types"}),
        "dropped_bags": list(plan.dropped),
    }


def _selection_config(plan: ComparePlan) -> dict | None:
    """``config.json``'s ``gene_selection``: the choice, genes per fold, and the genes whose attention is kept."""
    if plan.selection is None:
        return None
    recorded = sorted({plan.genes[i] for cols in plan.attention_genes for i in cols})
    return {
        **plan.selection.config(),
        "genes_per_fold": [len(c) for c in plan.fold_genes],
        "attention_genes": recorded,
    }


#: The summary counts the genes whose pooled r exceeds this (DeepPT's count of well-predicted genes).
R_COUNT_THRESHOLD = 0.4


def summarise(
    plan: ComparePlan, fits: FoldOutputs, *, config: dict, null: pd.DataFrame | None = None
) -> CompareResult:
    """Metrics per model, gene and fold, model comparisons on both axes and the summary table of the fold outputs;
    ``null`` (:func:`~slide2expr.regress.null_fits`) adds each model's null to the well-predicted rule."""
    models, genes = list(plan.models), list(plan.genes)
    metrics = metrics_table(fits.predictions, genes=genes, models=models, null=null)
    folds = pd.DataFrame(
        {"bag_id": plan.bag_ids, "patient_id": plan.patients, "fold": plan.folds.astype(np.int32)}
    )
    per_gene = gene_comparisons(fits.predictions, models=models, genes=genes)
    per_gene["fdr"] = np.nan
    for _, idx in per_gene.groupby(["model_a", "model_b"]).groups.items():
        per_gene.loc[idx, "fdr"] = bh_fdr(per_gene.loc[idx, "p"].to_numpy())
    return CompareResult(
        plan.out,
        config,
        folds,
        fits.predictions.drop(columns="y_baseline"),
        with_folds_selected(metrics, plan),
        _comparisons(metrics, per_gene, models=models, seed=plan.seed),
        _summary(metrics, models=models, seconds=fits.seconds),
        attention_rows=fits.attention.num_rows,
        seconds=fits.seconds,
        gene_comparisons=per_gene,
    )


def _comparisons(
    metrics: pd.DataFrame, per_gene: pd.DataFrame, *, models: list[str], seed: int
) -> pd.DataFrame:
    """Per model pair: the across-genes paired test, and counts of the across-patients tests' verdicts."""
    pooled = metrics[metrics["fold"] == -1].pivot(index="gene", columns="model", values="pearson_r")
    rows = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            g = per_gene[(per_gene["model_a"] == a) & (per_gene["model_b"] == b)]
            sig = g["fdr"] < FDR_LEVEL
            rows.append(
                {
                    "model_a": a,
                    "model_b": b,
                    "metric": "pearson_r",
                    **paired_comparison(pooled[a].to_numpy(), pooled[b].to_numpy(), seed=seed),
                    "n_genes_a_better": int((sig & (g["diff"] > 0)).sum()),
                    "n_genes_b_better": int((sig & (g["diff"] < 0)).sum()),
                    "n_genes_tied": int(g["tie"].sum()),
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
                "n_r_above": int((p["pearson_r"] > R_COUNT_THRESHOLD).sum()),
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
        caption="well predicted: pooled r > 0, BH-FDR < 0.05, RMSE < training-mean RMSE, beats the model's null "
        "(the same model on permuted targets)",
    )
    for col in (
        "model",
        "median r",
        "well predicted",
        f"r > {R_COUNT_THRESHOLD}",
        "median RMSE ratio",
        "fit s",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result.summary.itertuples():
        table.add_row(
            r.model,
            f"{r.median_r:.3f}",
            f"{r.n_well_predicted}/{r.n_genes}",
            f"{r.n_r_above}/{r.n_genes}",
            f"{r.median_rmse_ratio:.3f}",
            f"{r.fit_seconds:.1f}",
        )
    console.print(table)
    if result.stages:
        parts = ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in result.stages.items())
        peak = max(v["peak_rss_gb"] for v in result.stages.values())
        console.print(f"stages: {parts}; peak RSS {peak:.2f} GB")
    if result.run is not None:
        console.print(f"run directory: {result.run}")
