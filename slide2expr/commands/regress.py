"""``slide2expr compare``, ``slide2expr train`` and ``slide2expr predict``."""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import app, fail

_MODELS_HELP = (
    "Comma-separated models: mil, mil-embedding, lgbm, ridge, he2rna, mean (the mean floor always runs)."
)
#: What --device takes (``cuda:<i>`` picks one GPU).
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


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
def _reported(*categories: type[Warning]):
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


def _check_out(out: Path, *, force: bool) -> None:
    from slide2expr import regress
    from slide2expr.contract import check_output_dir

    try:
        check_output_dir(out, overwrite=force, option="--out")
    except regress.OutputExistsError as exc:
        raise fail(str(exc)) from exc


def _params(text: str | None, *, option: str, example: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(Path(text).read_text()) if Path(text).is_file() else json.loads(text)
    except (json.JSONDecodeError, OSError) as exc:
        raise fail(f"{option} must be JSON (or a JSON file), e.g. '{example}': {exc}") from exc
    if not isinstance(value, dict):
        raise fail(f"{option} must be a JSON object, e.g. '{example}'")
    return value


def _load(
    store: Path,
    *,
    encoder: str,
    tiling: str | None,
    targets: str | None,
    by: str,
    genes: list[str] | None,
    report_missing: bool = True,
):
    """The cohort, or a one-line error. ``report_missing=False`` leaves bags without targets to the command
    (compare and train report them as left out)."""
    from slide2expr import sql
    from slide2expr.contract import StoreError

    if not store.is_dir():
        raise fail(f"--store {store} is not a directory: run `slide2expr featurize … --store {store}` first")
    if by not in ("patient", "slide"):
        raise fail(f"--by must be 'patient' or 'slide'; got {by!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", sql.MissingTargetsWarning)
            cohort = sql.load_cohort(
                store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes
            )
    except (StoreError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    for w in caught:
        if report_missing or not issubclass(w.category, sql.MissingTargetsWarning):
            typer.echo(f"warning: {w.message}", err=True)
    return cohort


StoreOpt = Annotated[Path, typer.Option("--store", "-s", help="The store (featurized slides + targets).")]
EncoderOpt = Annotated[str, typer.Option("--encoder", "-e", help="Encoder whose embeddings to use.")]
TilingOpt = Annotated[str | None, typer.Option("--tiling", help="Tiling name (default: the only one).")]
ByOpt = Annotated[str, typer.Option("--by", help="One bag per 'patient' (the paper) or per 'slide'.")]
GenesOpt = Annotated[str | None, typer.Option("--genes", help="Comma-separated genes (default: all).")]


@app.command()
def compare(
    store: StoreOpt,
    targets: Annotated[
        str, typer.Option("--targets", "-t", help="Targets table name (targets/<NAME>.parquet).")
    ],
    encoder: EncoderOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    tiling: TilingOpt = None,
    models: Annotated[str, typer.Option("--models", "-m", help=_MODELS_HELP)] = "mil,lgbm,ridge",
    folds: Annotated[int, typer.Option("--folds", help="Patient-grouped CV folds.", min=2)] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the models.")] = 0,
    by: ByOpt = "patient",
    genes: GenesOpt = None,
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
        str | None, typer.Option("--device", help="auto, cpu or cuda for the torch models (mil*, he2rna).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the contents of a non-empty --out (an earlier run and its explain/)."
        ),
    ] = False,
) -> None:
    """Cross-validate models on the same patient-grouped folds; write a run directory (metrics, attention, plots)."""
    from slide2expr import regress

    names = _split(models)
    unknown = [m for m in names if m not in regress.MODEL_NAMES]
    if not names or unknown:
        raise fail(
            f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(regress.MODEL_NAMES)}"
        )
    if device is not None and not _DEVICE.fullmatch(device):
        raise fail(f"--device must be auto, cpu or cuda (cuda:<i> for one GPU); got {device!r}")
    model_params = _params(params, option="--params", example='{"mil": {"max_epochs": 30}}')
    for name, value in model_params.items():
        if not isinstance(value, dict):
            raise fail(
                f"--params: the parameters of {name!r} must be a JSON object, e.g. '{{\"{name}\": {{…}}}}'; "
                f"got {json.dumps(value)}"
            )
    if device is not None:
        for name in names:
            if name in ("mil", "mil-embedding", "he2rna"):
                model_params.setdefault(name, {}).setdefault("device", device)
    _check_out(out, force=force)
    cohort = _load(
        store,
        encoder=encoder,
        tiling=tiling,
        targets=targets,
        by=by,
        genes=_genes(genes),
        report_missing=False,
    )
    try:
        with _reported(regress.LeftOutBagsWarning):
            regress.compare(
                cohort,
                models=names,
                n_folds=folds,
                seed=seed,
                out=out,
                model_params=model_params,
                store=store,
                targets=targets,
                save_models=not no_models,
                overwrite=force,
            )
    except (
        regress.CompareError,
        regress.UnknownModelError,
        regress.BagInputError,
        regress.OutputExistsError,
    ) as exc:
        raise fail(str(exc)) from exc


@app.command()
def train(
    store: StoreOpt,
    targets: Annotated[
        str, typer.Option("--targets", "-t", help="Targets table name (targets/<NAME>.parquet).")
    ],
    encoder: EncoderOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="mil, mil-embedding, lgbm, ridge, he2rna or mean.")
    ] = "mil",
    tiling: TilingOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    by: ByOpt = "patient",
    genes: GenesOpt = None,
    params: Annotated[
        str | None, typer.Option("--params", help='The model\'s parameters as JSON: {"max_epochs": 30}.')
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the contents of a non-empty --out (an earlier model or run)."),
    ] = False,
) -> None:
    """Fit one model on the whole cohort; save it with its config and the encoder identity."""
    import numpy as np

    from slide2expr import regress

    if model not in regress.MODEL_NAMES:
        raise fail(f"--model {model!r} is unknown; choose from {', '.join(regress.MODEL_NAMES)}")
    model_params = _params(params, option="--params", example='{"max_epochs": 30}')
    _check_out(out, force=force)
    cohort = _load(
        store,
        encoder=encoder,
        tiling=tiling,
        targets=targets,
        by=by,
        genes=_genes(genes),
        report_missing=False,
    )
    try:
        with _reported(regress.LeftOutBagsWarning):
            regress.train(
                cohort,
                model=model,
                model_params=model_params,
                seed=seed,
                out=out,
                store=store,
                targets=targets,
                overwrite=force,
            )
    except (ValueError, regress.UnknownModelError) as exc:
        raise fail(str(exc)) from exc
    n_bags = int((~np.isnan(np.asarray(cohort.y_true, dtype=float)).any(axis=1)).sum())
    typer.echo(f"trained {model} on {n_bags} bags × {len(cohort.genes)} genes → {out}")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by `slide2expr train`.")],
    store: StoreOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions Parquet file to write.")],
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
) -> None:
    """Apply a trained model to another store (refuses features from another encoder, weights, dimension or tiling)."""
    from slide2expr import regress

    try:
        config = regress.load_model_config(model_dir)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from exc
    encoder = encoder or config["encoder"]
    tiling = _model_tiling(store, model_dir=model_dir, config=config, encoder=encoder, tiling=tiling)
    cohort = _load(
        store, encoder=encoder, tiling=tiling, targets=targets, by=config.get("by", "patient"), genes=None
    )
    try:
        df = regress.predict(cohort, model=model_dir, out=out, store=store, targets=targets)
    except (regress.EncoderMismatchError, regress.TransformMismatchError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"predicted {df['bag_id'].nunique()} bags × {df['gene'].nunique()} genes → {out}")


def _model_tiling(
    store: Path, *, model_dir: Path, config: dict, encoder: str, tiling: str | None
) -> str | None:
    """The tiling to predict at: --tiling, else the model's; a one-line error when the store lacks the model's."""
    from slide2expr.contract import EMBEDDINGS_DIR

    want = config.get("tiling")
    if want is None:  # a model saved without its tiling: --tiling, or the store's only one
        return tiling
    if tiling is not None and tiling != want:
        raise fail(
            f"--tiling {tiling} is not the tiling the model in {model_dir} was trained on ({want}): predict at "
            f"{want}, featurizing the slides at it if needed"
        )
    have = sorted(p.parent.name for p in (store / EMBEDDINGS_DIR).glob(f"*/{encoder}") if p.is_dir())
    if have and want not in have:
        m = re.fullmatch(r"mpp([\d.]+)_px(\d+)_ov(\d+)", want)
        how = (
            f" --mpp {float(m[1]):g} --tile {m[2]}" + (f" --overlap {m[3]}" if m[3] != "0" else "")
            if m
            else ""
        )
        raise fail(
            f"the model in {model_dir} was trained on {encoder} embeddings at tiling {want}, but {store} has "
            f"{encoder} embeddings only at {', '.join(have)}: featurize the slides at the model's tiling "
            f"(`slide2expr featurize … --store {store} --encoder {encoder}{how}`)"
        )
    return want
