"""``slide2expr compare``, ``slide2expr train`` and ``slide2expr predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import app, fail

_MODELS_HELP = (
    "Comma-separated models: mil, mil-embedding, lgbm, ridge, he2rna, mean (the mean floor always runs)."
)


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def _params(text: str | None, *, option: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(Path(text).read_text()) if Path(text).is_file() else json.loads(text)
    except (json.JSONDecodeError, OSError) as exc:
        raise fail(
            f'{option} must be JSON (or a JSON file), e.g. \'{{"mil": {{"max_epochs": 30}}}}\': {exc}'
        ) from exc
    if not isinstance(value, dict):
        raise fail(f"{option} must be a JSON object")
    return value


def _load(store: Path, *, encoder: str, tiling: str | None, targets: str | None, by: str, genes: str | None):
    import warnings

    import sql
    from featurize import StoreError

    if not store.is_dir():
        raise fail(f"--store {store} is not a directory: run `slide2expr featurize … --store {store}` first")
    if by not in ("patient", "slide"):
        raise fail(f"--by must be 'patient' or 'slide'; got {by!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", sql.MissingTargetsWarning)
            cohort = sql.load_cohort(
                store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=_split(genes) or None
            )
    except (StoreError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    for w in caught:
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
) -> None:
    """Cross-validate models on the same patient-grouped folds; write a run directory (metrics, attention, plots)."""
    import regress

    names = _split(models)
    unknown = [m for m in names if m not in regress.MODEL_NAMES]
    if not names or unknown:
        raise fail(
            f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(regress.MODEL_NAMES)}"
        )
    model_params = _params(params, option="--params")
    if device is not None:
        for name in names:
            if name in ("mil", "mil-embedding", "he2rna"):
                model_params.setdefault(name, {}).setdefault("device", device)
    cohort = _load(store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes)
    try:
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
        )
    except (regress.CompareError, regress.UnknownModelError, regress.BagInputError) as exc:
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
) -> None:
    """Fit one model on the whole cohort; save it with its config and the encoder identity."""
    import regress

    if model not in regress.MODEL_NAMES:
        raise fail(f"--model {model!r} is unknown; choose from {', '.join(regress.MODEL_NAMES)}")
    cohort = _load(store, encoder=encoder, tiling=tiling, targets=targets, by=by, genes=genes)
    try:
        regress.train(
            cohort,
            model=model,
            model_params=_params(params, option="--params"),
            seed=seed,
            out=out,
            store=store,
            targets=targets,
        )
    except (ValueError, regress.UnknownModelError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"trained {model} on {cohort.n_bags} bags × {len(cohort.genes)} genes → {out}")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by `slide2expr train`.")],
    store: StoreOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions Parquet file to write.")],
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", "-e", help="Encoder of the store's features (default: the model's)."),
    ] = None,
    tiling: TilingOpt = None,
    targets: Annotated[
        str | None,
        typer.Option("--targets", "-t", help="Targets to report beside the predictions (optional)."),
    ] = None,
) -> None:
    """Apply a trained model to another store (refuses features from another encoder, weights or dimension)."""
    import regress

    if not (model_dir / "config.json").exists():
        raise fail(
            f"{model_dir} is not a model directory (no config.json): run `slide2expr train … --out {model_dir}`"
        )
    config = json.loads((model_dir / "config.json").read_text())
    cohort = _load(
        store,
        encoder=encoder or config["encoder"],
        tiling=tiling,
        targets=targets,
        by=config.get("by", "patient"),
        genes=None,
    )
    try:
        df = regress.predict(cohort, model=model_dir, out=out)
    except regress.EncoderMismatchError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"predicted {df['bag_id'].nunique()} bags × {df['gene'].nunique()} genes → {out}")
