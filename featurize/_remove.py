"""Taking slides, a tiling or an encoder out of a store with their files: :func:`plan_removal` says what would go
and writes nothing (``slide2expr store rm --dry-run``); :func:`remove_from_store` removes it.

Files go in the reverse of the order a run writes them (:data:`~slide2expr.contract.SLIDE_FILE_KINDS`): a slide's
embeddings first (the file that marks it as done, so resume redoes a slide whose removal was cut short), then its
tile grid and QC image, its ``slides/`` row last. Each file leaves its folder in one step (an unlink), so a reader
that globs ``*.parquet`` sees a file whole or not at all; a removal cut short leaves whole files, and the same
removal again finishes it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from slide2expr.contract import (
    EMBEDDINGS_DIR,
    QC_DIR,
    SLIDE_FILE_KINDS,
    SLIDES_DIR,
    TILES_DIR,
    StoreError,
    check_id,
    check_store,
    store_files,
)


class RemovalError(ValueError):
    """What to remove is not given, or not in the store; the message names it and what the store holds."""


@dataclass(frozen=True)
class StoreRemoval:
    """What :func:`remove_from_store` removes (or removed): ``files`` in removal order (``n_bytes`` in all), of
    ``slides`` (all slides when empty) within ``tiling`` and ``encoder`` (all when None)."""

    store: Path
    slides: tuple[str, ...]
    tiling: str | None
    encoder: str | None
    files: tuple[Path, ...]
    n_bytes: int

    def count(self, kind: str) -> int:
        """Files of one kind (``embeddings``, ``tiles``, ``qc``, ``slides``)."""
        return sum(_kind(self.store, p) == kind for p in self.files)

    def describe(self) -> str:
        """One line: what goes, by kind."""
        what = [
            f"{len(self.slides)} slide(s)" if self.slides else "every slide",
            f"tiling {self.tiling}" if self.tiling else "every tiling",
            f"encoder {self.encoder}" if self.encoder else "every encoder",
        ]
        kinds = ", ".join(f"{self.count(k)} {k}" for k in SLIDE_FILE_KINDS)
        return f"{'; '.join(what)}: {len(self.files)} files ({kinds}; {self.n_bytes / 1e6:.1f} MB)"


def plan_removal(
    store: str | os.PathLike,
    *,
    slides: list[str] | tuple[str, ...] | None = None,
    tiling: str | None = None,
    encoder: str | None = None,
) -> StoreRemoval:
    """Check what to remove from ``store`` and list its files; writes nothing.

    Parameters
    ----------
    store
        A store directory (``slide2expr featurize`` wrote it).
    slides
        Slide ids. Alone: each slide whole (its row, tile grids, QC images and embeddings of every tiling and
        encoder): the way to take out a slide recorded by mistake. With ``tiling`` or ``encoder``: only its files
        there.
    tiling
        A tiling name (``mpp0.50_px224_ov0``): its tile grids, QC images and the embeddings of every encoder on it.
    encoder
        An encoder name: its embeddings (of ``tiling`` only, when given); tile grids, QC images and slide rows
        stay, as other encoders use them.

    Returns
    -------
    StoreRemoval
        The files in removal order.

    Examples
    --------
    >>> import tempfile
    >>> from slide2expr.contract import init_store
    >>> store = init_store(tempfile.mkdtemp())
    >>> try:
    ...     plan_removal(store, encoder="uni")
    ... except RemovalError as exc:
    ...     print(str(exc).split(";")[0])
    encoder 'uni' has no embeddings in this store
    """
    root = check_store(store)
    ids = tuple(dict.fromkeys(slides or ()))
    if not ids and tiling is None and encoder is None:
        raise RemovalError(
            "give what to remove: slides, a tiling or an encoder (e.g. `slide2expr store rm --store S --slides "
            "ID`); nothing is removed by default"
        )
    try:
        for sid in ids:
            check_id(sid)
        tiling = None if tiling is None else check_id(tiling, what="tiling")
        encoder = None if encoder is None else check_id(encoder, what="encoder")
    except StoreError as exc:
        raise RemovalError(str(exc)) from None
    _check_known(root, ids, tiling, encoder)
    if encoder is not None:  # tile grids, QC images and rows are shared by every encoder
        kinds = ("embeddings",)
    elif tiling is not None:  # rows are shared by every tiling
        kinds = ("embeddings", "tiles", "qc")
    else:  # whole slides
        kinds = SLIDE_FILE_KINDS
    files = [
        p
        for k in kinds
        for sid in (ids or (None,))
        for p in store_files(root, k, slide_id=sid, tiling=tiling, encoder=encoder)
    ]
    if not files:
        raise RemovalError(
            f"nothing to remove: {', '.join(ids) or 'no slide'} has no files of {_scope(tiling, encoder)}"
        )
    n_bytes = sum(p.stat().st_size for p in files)
    return StoreRemoval(root, ids, tiling, encoder, tuple(files), n_bytes)


def remove_from_store(
    store: str | os.PathLike,
    *,
    slides: list[str] | tuple[str, ...] | None = None,
    tiling: str | None = None,
    encoder: str | None = None,
) -> StoreRemoval:
    """Remove slides, a tiling or an encoder from ``store`` with their files (see :func:`plan_removal` for what
    each choice takes); folders left empty go too.

    Removes ``embeddings/<tiling>/<encoder>/<slide_id>.parquet``, then ``tiles/<tiling>/<slide_id>.parquet`` and
    ``qc/<tiling>/<slide_id>.png``, then ``slides/<slide_id>.parquet``, each with the hidden temporaries a killed
    run left beside it. Do not run it on slides a featurize run is writing at the same time.

    Returns
    -------
    StoreRemoval
        What was removed.
    """
    removal = plan_removal(store, slides=slides, tiling=tiling, encoder=encoder)
    for p in removal.files:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    roots = {removal.store / d for d in (SLIDES_DIR, TILES_DIR, EMBEDDINGS_DIR, QC_DIR)}
    for folder in sorted({d for p in removal.files for d in p.parents}, key=lambda d: -len(d.parts)):
        if folder not in roots and removal.store in folder.parents:
            with contextlib.suppress(OSError):  # not empty: another slide's, encoder's or tiling's files
                folder.rmdir()
    return removal


def _kind(root: Path, path: Path) -> str:
    top = path.relative_to(root).parts[0]
    return {SLIDES_DIR: "slides", TILES_DIR: "tiles", EMBEDDINGS_DIR: "embeddings", QC_DIR: "qc"}[top]


def _scope(tiling: str | None, encoder: str | None) -> str:
    parts = [f"tiling {tiling}"] * bool(tiling) + [f"encoder {encoder}"] * bool(encoder)
    return " and ".join(parts)


def _slide_id(path: Path) -> str | None:
    """The slide id of a store file (None for a hidden temporary)."""
    if path.name.startswith("."):
        return None
    return path.name.removesuffix(".parquet").removesuffix(".png")


def _folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _check_known(root: Path, ids: tuple[str, ...], tiling: str | None, encoder: str | None) -> None:
    """Each slide, the tiling and the encoder has files in the store, else a :class:`RemovalError` that lists
    what the store holds (and the nearest names)."""
    tilings = sorted(
        {*_folders(root / TILES_DIR), *_folders(root / EMBEDDINGS_DIR), *_folders(root / QC_DIR)}
    )
    if tiling is not None and tiling not in tilings:
        raise RemovalError(
            f"tiling {tiling!r} is not in this store; tilings here: {', '.join(tilings) or 'none'}"
        )
    encoders = sorted(
        {e for t in _folders(root / EMBEDDINGS_DIR) for e in _folders(root / EMBEDDINGS_DIR / t)}
    )
    if encoder is not None and encoder not in encoders:
        raise RemovalError(
            f"encoder {encoder!r} has no embeddings in this store; encoders here: {', '.join(encoders) or 'none'}"
        )
    known = {_slide_id(p) for k in SLIDE_FILE_KINDS for p in store_files(root, k)} - {None}
    unknown = [s for s in ids if s not in known]
    if unknown:
        near = {s: difflib.get_close_matches(s, known, n=1) for s in unknown}
        named = ", ".join(f"{s!r}" + (f" (did you mean {near[s][0]!r}?)" if near[s] else "") for s in unknown)
        raise RemovalError(
            f"slide{'s' if len(unknown) > 1 else ''} {named} {'are' if len(unknown) > 1 else 'is'} not in this store ({len(known)} slides here; "
            "`slide2expr sql STORE slide_qc` lists them)"
        )
