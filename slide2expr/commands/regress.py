"""``slide2expr compare``, ``train``, ``predict`` and ``models``: flags mapped onto :mod:`slide2expr.regress`.

The library checks every argument (:func:`~slide2expr.regress.plan_compare`, :func:`~slide2expr.regress.plan_train`,
:func:`~slide2expr.regress.check_predict`, which ``--dry-run`` runs and shows); these commands parse flags, load the
cohort and report the library's errors as one line.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import EXIT_INTERRUPTED, DryRunOpt, OverwriteOpt, app, fail, reported, store_option


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def _genes(values: str | None) -> list[str] | None:
    """The --genes list, each gene once (first occurrence kept); None for all genes."""
    genes = _split(values)
    repeated = sorted({g for g in genes if genes.count(g) > 1})
    if repeated:
        typer.echo(
            f"warning: --genes lists {', '.join(repeated)} more than once; using each gene once", err=True
        )
    return list(dict.fromkeys(genes)) or None


@contextlib.contextmanager
def _warnings_as_lines(*categories: type[Warning]):
    """Print warnings of ``categories`` raised inside, when raised, as one ``warning: …`` line (no source line)."""
    with warnings.catch_warnings():
        for category in categories:
            warnings.simplefilter("always", category)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, categories):
                typer.echo(f"warning: {message}", err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _params(text: str | None, *, example: str) -> dict:
    """``--params``: a JSON object, given inline or as a file."""
    if not text:
        return {}
    try:
        value = json.loads(Path(text).read_text()) if Path(text).is_file() else json.loads(text)
    except (json.JSONDecodeError, OSError) as exc:
        raise fail(f"--params must be JSON (or a JSON file), e.g. '{example}': {exc}") from exc
    if not isinstance(value, dict):
        raise fail(f"--params must be a JSON object, e.g. '{example}'")
    return value


def _load(
    store: Path,
    *,
    encoder: str,
    tiling: str | None,
    targets: str | None,
    by: str,
    genes,
    quiet_missing: bool,
    max_memory_gb: float | None = None,
    lazy: bool | None = False,
):
    """The cohort: in memory, or read on access (``sql.open_cohort`` by ``max_memory_gb``, or as ``lazy`` says).
    ``quiet_missing`` leaves bags without targets to the command (compare and train report them as left out)."""
    from slide2expr import sql
    from slide2expr.contract import StoreError

    with reported(StoreError, ValueError, FileNotFoundError), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sql.MissingTargetsWarning)
        if lazy is False and max_memory_gb is None:
            cohort = sql.load_cohort(
                store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes
            )
        else:
            cohort = sql.open_cohort(store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes,
                                     max_memory_gb=max_memory_gb, lazy=lazy)  # fmt: skip
    for w in caught:
        if not (quiet_missing and issubclass(w.category, sql.MissingTargetsWarning)):
            typer.echo(f"warning: {w.message}", err=True)
    return cohort


StoreOpt = Annotated[
    Path,
    store_option("The store (featurized slides + targets): a directory or s3://bucket/prefix."),
]
TargetsOpt = Annotated[
    str, typer.Option("--targets", "-t", help="Targets table name (targets/<NAME>.parquet).")
]
EncoderOpt = Annotated[str, typer.Option("--encoder", "-e", help="Encoder whose embeddings to use.")]
TilingOpt = Annotated[str | None, typer.Option("--tiling", help="Tiling name (default: the only one).")]
ByOpt = Annotated[str, typer.Option("--by", help="One bag per 'patient' (the paper) or per 'slide'.")]
GenesOpt = Annotated[str | None, typer.Option("--genes", help="Comma-separated genes (default: all).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the folds and the models.")]
MaxMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--max-memory-gb",
        help="Memory bound in GB (default: a third of this machine's). A cohort whose features take more than half "
        "of it is read on access from the store, bag by bag, and the run is checked to fit the bound.",
    ),
]
LazyOpt = Annotated[
    bool | None,
    typer.Option(
        "--lazy/--in-memory",
        help="Read the bags on access from the store, or load them all; default: by --max-memory-gb.",
    ),
]


@app.command()
def compare(
    store: StoreOpt,
    targets: TargetsOpt,
    encoder: EncoderOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    tiling: TilingOpt = None,
    models: Annotated[
        str,
        typer.Option(
            "--models",
            "-m",
            help="Comma-separated models (`slide2expr models` lists them); the mean floor always runs.",
        ),
    ] = "mil,lgbm,ridge",
    n_folds: Annotated[int, typer.Option("--n-folds", help="Patient-grouped CV folds.")] = 5,
    seed: SeedOpt = 0,
    by: ByOpt = "patient",
    genes: Annotated[
        str | None,
        typer.Option(
            "--genes",
            help="Genes to compare: comma-separated names, a file of names, a panel (graziani2022), or all. "
            "Default: every gene, or above 2,000 genes the 2,000 of highest variance on each fold's training "
            "patients (with a message).",
        ),
    ] = None,
    top_genes: Annotated[
        int | None,
        typer.Option(
            "--top-genes",
            help="Per fold, compare the N genes of highest --rank-genes-by on its training patients only.",
        ),
    ] = None,
    rank_genes_by: Annotated[
        str, typer.Option("--rank-genes-by", help="variance or mean (of the transformed values).")
    ] = "variance",
    protein_coding: Annotated[
        bool,
        typer.Option(
            "--protein-coding", help="Only protein-coding genes (gene_type of GDC STAR-counts targets)."
        ),
    ] = False,
    params: Annotated[
        str | None,
        typer.Option(
            "--params", help='Model parameters as JSON or a JSON file: {"mil": {"max_epochs": 30}}.'
        ),
    ] = None,
    no_models: Annotated[
        bool, typer.Option("--no-save-models", help="Do not write models/*.joblib.")
    ] = False,
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto, cpu, cuda or cuda:<i> for the models that take a device."),
    ] = None,
    max_memory_gb: MaxMemoryOpt = None,
    lazy: LazyOpt = None,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Cross-validate models on the same patient-grouped folds; write a run directory (metrics, attention, plots).

    An interrupted compare (Ctrl-C) keeps its finished model × fold fits (nulls included) in OUT/partial/: the
    same command resumes them; --overwrite restarts. A cohort larger than the memory bound is read on access from
    the store; the summary gives each stage's time and the peak resident memory.
    """
    from slide2expr import regress

    model_params = _params(params, example='{"mil": {"max_epochs": 30}}')
    cohort = _load(
        store,
        encoder=encoder,
        tiling=tiling,
        targets=targets,
        by=by,
        genes=None,
        quiet_missing=True,
        max_memory_gb=max_memory_gb,
        lazy=lazy,
    )
    kwargs = dict(
        models=_split(models),
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
        save_models=not no_models,
        max_memory_gb=max_memory_gb,
    )
    errors = (
        regress.CompareError,
        regress.GeneSelectionError,
        regress.UnknownModelError,
        regress.BagInputError,
        regress.OutputExistsError,
    )
    warned = (regress.LeftOutBagsWarning, regress.GeneSelectionWarning, regress.MemoryBoundWarning)
    with reported(*errors), _warnings_as_lines(*warned):
        if dry_run:
            typer.echo(regress.plan_compare(cohort, **kwargs).describe())
            return
        try:
            regress.compare(cohort, **kwargs, store=store, targets=targets)
        except regress.CompareInterrupted as exc:
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def train(
    store: StoreOpt,
    targets: TargetsOpt,
    encoder: EncoderOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model name (`slide2expr models` lists them).")
    ] = "mil",
    tiling: TilingOpt = None,
    seed: SeedOpt = 0,
    by: ByOpt = "patient",
    genes: GenesOpt = None,
    params: Annotated[
        str | None, typer.Option("--params", help='The model\'s parameters as JSON: {"max_epochs": 30}.')
    ] = None,
    max_memory_gb: MaxMemoryOpt = None,
    lazy: LazyOpt = None,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Fit one model on the whole cohort; save it with its config and the encoder identity. A cohort larger than
    the memory bound is read on access from the store; the summary gives each stage's time and the peak resident
    memory."""
    import time

    import numpy as np

    from slide2expr import regress, sql

    model_params = _params(params, example='{"max_epochs": 30}')
    t0 = time.perf_counter()
    cohort = _load(
        store,
        encoder=encoder,
        tiling=tiling,
        targets=targets,
        by=by,
        genes=_genes(genes),
        quiet_missing=True,
        max_memory_gb=max_memory_gb,
        lazy=lazy,
    )
    loaded = time.perf_counter() - t0
    kwargs = dict(model=model, model_params=model_params, seed=seed, out=out, overwrite=overwrite)
    with reported(ValueError), _warnings_as_lines(regress.LeftOutBagsWarning):
        if dry_run:
            typer.echo(regress.plan_train(cohort, **kwargs).describe())
            return
        regress.train(cohort, **kwargs, store=store, targets=targets)
    n_bags = int((~np.isnan(np.asarray(cohort.y_true, dtype=float)).any(axis=1)).sum())
    how = "read on access" if isinstance(cohort, sql.LazyCohort) else "in memory"
    typer.echo(
        f"trained {model} on {n_bags} bags × {len(cohort.genes)} genes ({how}) → {out} (load {loaded:.1f} s, "
        f"fit {time.perf_counter() - t0 - loaded:.1f} s; peak RSS {regress.peak_rss_gb():.2f} GB)"
    )


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by `slide2expr train`.")],
    store: StoreOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Prediction directory to write: config.json, predictions.parquet (per bag) and, for attention "
            "models, attention.parquet (per tile: attention and tile predictions). `slide2expr explain OUT` "
            "draws its maps.",
        ),
    ],
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", "-e", help="Encoder of the store's features (default: the model's)."),
    ] = None,
    tiling: Annotated[
        str | None, typer.Option("--tiling", help="Tiling name (default: the one the model was trained on).")
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option("--targets", "-t", help="Targets to report beside the predictions (optional)."),
    ] = None,
    attention_genes: Annotated[
        str | None,
        typer.Option(
            "--attention-genes",
            help="Comma-separated genes whose per-tile attention and predictions to record (default: the model's "
            "genes, at most the first 50).",
        ),
    ] = None,
    max_memory_gb: MaxMemoryOpt = None,
    lazy: LazyOpt = None,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Apply a trained model to another store: bag-level predictions and per-tile attention and predictions
    (refuses features from another encoder, weights, dimension or tiling)."""
    from slide2expr._app import EXIT_INTERRUPTED

    rerun = (
        f"slide2expr predict {model_dir} --store {store} --out {out}"
        + (f" --targets {targets}" if targets else "")
        + (" --overwrite" if overwrite else "")
    )
    try:
        _predict(
            model_dir, store=store, out=out, encoder=encoder, tiling=tiling, targets=targets,
            overwrite=overwrite, dry_run=dry_run, rerun=rerun, attention_genes=_genes(attention_genes),
            max_memory_gb=max_memory_gb, lazy=lazy,
        )  # fmt: skip
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted while reading the model and the store's bags, before any bag was predicted: nothing "
            f"written to {out}; run `{rerun}` again",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _predict(
    model_dir,
    *,
    store,
    out,
    encoder,
    tiling,
    targets,
    overwrite: bool,
    dry_run: bool,
    rerun: str,
    attention_genes,
    max_memory_gb: float | None = None,
    lazy: bool | None = None,
):
    """The ``predict`` command after its flags: load (in memory, or read on access by ``max_memory_gb``/``lazy``),
    check, predict under a progress bar, say where it went with each stage's time and the peak RSS."""
    import time

    from slide2expr import regress

    with reported(FileNotFoundError):
        config = regress.load_model_config(model_dir)
    encoder = encoder or config["encoder"]
    tiling = _model_tiling(store, model_dir=model_dir, config=config, encoder=encoder, tiling=tiling)
    by = config.get("by", "patient")
    t0 = time.perf_counter()
    cohort = _load(
        store,
        encoder=encoder,
        tiling=tiling,
        targets=targets,
        by=by,
        genes=None,
        quiet_missing=False,
        max_memory_gb=max_memory_gb,
        lazy=lazy,
    )
    loaded = time.perf_counter() - t0
    errors = (
        regress.EncoderMismatchError,
        regress.TransformMismatchError,
        regress.OutputExistsError,
        FileNotFoundError,
        ValueError,
    )
    kwargs = dict(
        model=model_dir,
        store=store,
        targets=targets,
        out=out,
        overwrite=overwrite,
        attention_genes=attention_genes,
    )
    with reported(*errors):
        if dry_run:
            regress.check_predict(cohort, **kwargs)
            typer.echo(
                f"predict {cohort.n_bags} bags × {len(config['genes'])} genes with {model_dir}\n"
                f"would write {out}/ (config.json, predictions.parquet"
                + (", attention.parquet" if _has_attention(config) else "")
                + "); nothing written (--dry-run)"
            )
            return
        df = _predict_with_progress(regress, cohort, kwargs, rerun=rerun)
    typer.echo(
        f"predicted {df['bag_id'].nunique()} bags × {df['gene'].nunique()} genes → {out}"
        + f" (load {loaded:.1f} s, predict {time.perf_counter() - t0 - loaded:.1f} s; peak RSS "
        f"{regress.peak_rss_gb():.2f} GB)"
        + (f"; maps: slide2expr explain {out} --store {store}" if _has_attention(config) else "")
    )


def _has_attention(config: dict) -> bool:
    from slide2expr import regress

    try:
        return regress.model_info(config["model"]).attention
    except regress.UnknownModelError:
        return False


def _predict_with_progress(regress, cohort, kwargs: dict, *, rerun: str):
    """``regress.predict`` under a progress bar; Ctrl-C says how far it got and how to run it again."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slide2expr._app import EXIT_INTERRUPTED

    console = Console(stderr=True)
    columns = (
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("bags"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("predict", total=cohort.n_bags)
        try:
            return regress.predict(
                cohort, **kwargs, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
        except regress.PredictInterrupted as exc:
            bar.stop()
            console.print(
                f"{exc}. predict writes its folder only once every bag is done: run `{rerun}` to "
                "predict again from the start",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _model_tiling(
    store: Path, *, model_dir: Path, config: dict, encoder: str, tiling: str | None
) -> str | None:
    """The tiling to predict at: --tiling, else the model's; a one-line error when the store lacks the model's."""
    import duckdb

    from slide2expr import sql
    from slide2expr.contract import StoreError, Tiling, TilingError

    want = config.get("tiling")
    if want is None:  # a model saved without its tiling: --tiling, or the store's only one
        return tiling
    if tiling is not None and tiling != want:
        raise fail(
            f"--tiling {tiling} is not the tiling the model in {model_dir} was trained on ({want}): predict at "
            f"{want}, featurizing the slides at it if needed"
        )
    query = "select distinct tiling from embedding_files where encoder = $encoder order by tiling"
    try:
        have = sql.run_sql(store, query, params={"encoder": encoder}).column(0).to_pylist()
    except (duckdb.Error, StoreError):  # no store or no embeddings: loading the cohort says which
        have = []
    if have and want not in have:
        try:
            t = Tiling.parse(want)
            how = f" --mpp {t.mpp:g} --tile-px {t.tile_px}" + (
                f" --overlap-px {t.overlap_px}" if t.overlap_px else ""
            )
        except TilingError:
            how = ""
        raise fail(
            f"the model in {model_dir} was trained on {encoder} embeddings at tiling {want}, but {store} has "
            f"{encoder} embeddings only at {', '.join(have)}: featurize the slides at the model's tiling "
            f"(`slide2expr featurize … --store {store} --encoder {encoder}{how}`)"
        )
    return want


@app.command()
def models(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the registry as JSON (one object per model).")
    ] = False,
) -> None:
    """List the registered models: whether they give attention, an example of their parameters, what they are."""
    from slide2expr import regress

    rows = [
        {"name": i.name, "attention": i.attention, "example": i.example, "description": i.description}
        for i in map(regress.model_info, regress.list_models())
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="models (compare --models, train --model)")
    for col in ("name", "attention", "example --params", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], "yes" if r["attention"] else "", Text(json.dumps(r["example"])), r["description"]
        )
    Console().print(table)
