"""What explain reads — a run directory, its store, its fitted models — through ``sql`` and ``regress``'s public
doors, with their errors raised as :class:`ExplainError` (same message)."""

from __future__ import annotations

import contextlib
import os

import pandas as pd

from slide2expr import sql
from slide2expr.contract import StoreError, StorePath, check_store, is_prediction_config, tiles_path
from slide2expr.sql import Run


class ExplainError(ValueError):
    """A run directory, store or argument that explain cannot work with; the message says what to do."""


@contextlib.contextmanager
def as_explain_error(*errors: type[Exception]):
    """Raise ``errors`` (default: :class:`StoreError`) met in the block as :class:`ExplainError`, same message."""
    caught = errors or (StoreError,)
    try:
        yield
    except caught as exc:
        raise ExplainError(str(exc)) from exc


def load_run(run: str | os.PathLike | Run) -> Run:
    """Open a run directory (:func:`sql.open_run`); raises :class:`ExplainError` naming the missing file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     try:
    ...         load_run(d)
    ...     except ExplainError as exc:
    ...         print(str(exc).split(" is ")[1])
    not a run directory (no config.json): pass the folder `slide2expr compare --out` wrote
    """
    with as_explain_error():
        return sql.open_run(run)


def is_prediction_dir(run: Run) -> bool:
    """Whether ``run`` is a prediction directory (``regress.predict``'s output) rather than a compare run."""
    return is_prediction_config(run.config)


def read_slides(store: str | os.PathLike) -> pd.DataFrame:
    """The store's slides table (:func:`sql.read_slides`)."""
    with as_explain_error():
        return sql.read_slides(store)


def tile_grid_exists(store: str | os.PathLike, tiling: str, slide_id: str) -> bool:
    """Whether ``slide_id`` has a tile grid file at ``tiling`` in ``store`` (the file is not read)."""
    return tiles_path(store, tiling, slide_id).is_file()


def check_store_dir(store: str | os.PathLike) -> StorePath:
    """``store`` as a Path (an :class:`~slide2expr.contract.ObjectPath` for a URI such as ``s3://bucket/prefix``);
    raise :class:`ExplainError` unless it is a slide2expr store."""
    with as_explain_error():
        return check_store(store)


def slide_row(store: str | os.PathLike, slide_id: str) -> dict:
    """The slides/ row of ``slide_id`` (:func:`sql.read_slide`)."""
    with as_explain_error():
        return sql.read_slide(store, slide_id)


def read_tiles(store: str | os.PathLike, tiling: str, slide_id: str) -> pd.DataFrame:
    """The tile grid of ``slide_id`` (:func:`sql.read_tiles`)."""
    with as_explain_error():
        return sql.read_tiles(store, tiling, slide_id)


def read_embeddings(store: str | os.PathLike, tiling: str, encoder: str, slide_id: str):
    """Tile ids and ``(n, d)`` float32 embeddings of ``slide_id`` (:func:`sql.read_embeddings`)."""
    with as_explain_error():
        return sql.read_embeddings(store, tiling, encoder, slide_id)


def fold_models(run: Run, model: str) -> dict[int, object]:
    """The fitted estimators of ``model`` by fold (:func:`regress.load_fold_models`)."""
    from slide2expr import regress

    with as_explain_error(FileNotFoundError):
        return regress.load_fold_models(run.path, model)


def slide_bag_ids(run: Run, store: str | os.PathLike) -> dict[str, str]:
    """slide_id → bag id (the patient for ``by="patient"`` runs, else the slide itself), for ok slides."""
    slides = read_slides(store)
    slides = slides[slides["status"] == "ok"]
    if run.by == "slide":
        return {s: s for s in slides["slide_id"]}
    return dict(zip(slides["slide_id"], slides["patient_id"], strict=True))
