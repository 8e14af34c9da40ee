"""Reading a run directory and the store for explain (plain pyarrow reads of the contract's Parquet files)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from slide2expr.contract import SLIDES_DIR, embeddings_path, slide_path, tiles_path


class ExplainError(ValueError):
    """A run directory, store or argument that explain cannot work with; the message says what to do."""


@dataclass
class Run:
    """A run directory written by ``regress.compare`` (see the run-directory contract).

    Attributes
    ----------
    path
        The run directory.
    config
        ``config.json`` as a dict (store, targets, encoder, tiling, by, models, genes, …).
    genes
        Gene names in the run's order.
    models
        Model names in the run.
    """

    path: Path
    config: dict
    genes: tuple[str, ...]
    models: tuple[str, ...]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def tiling(self) -> str:
        return str(self.config["tiling"])

    @property
    def encoder(self) -> str:
        return str(self.config["encoder"])

    @property
    def by(self) -> str:
        return str(self.config.get("by", "patient"))

    def table(self, name: str, *, required: bool = True) -> pd.DataFrame | None:
        """``RUN/<name>.parquet`` as a DataFrame (cached); None when absent and not ``required``."""
        if name not in self._cache:
            p = self.path / f"{name}.parquet"
            if not p.exists():
                if required:
                    raise ExplainError(
                        f"{p} is missing: run `slide2expr compare` to (re)write the run directory {self.path}"
                    )
                return None
            self._cache[name] = pq.read_table(p).to_pandas()
        return self._cache[name]


def load_run(run: str | os.PathLike | Run) -> Run:
    """Open a run directory; raises :class:`ExplainError` naming the missing file."""
    if isinstance(run, Run):
        return run
    path = Path(run)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ExplainError(
            f"{path} is not a run directory (no config.json): pass the folder `slide2expr compare --out` wrote"
        )
    config = json.loads(cfg_path.read_text())
    for key in ("tiling", "encoder", "genes", "models"):
        if key not in config:
            raise ExplainError(f"{cfg_path} has no {key!r}: it was not written by regress.compare")
    return Run(path, config, tuple(config["genes"]), tuple(config["models"]))


def slide_row(store: str | os.PathLike, slide_id: str) -> dict:
    """The one-row ``slides/<slide_id>.parquet`` of ``store`` as a dict."""
    p = slide_path(store, slide_id)
    if not p.exists():
        raise ExplainError(f"slide {slide_id!r} has no {p}: featurize it into the store {store} first")
    return pq.read_table(p).to_pylist()[0]


def all_slides(store: str | os.PathLike) -> pd.DataFrame:
    """All rows of ``STORE/slides/*.parquet``."""
    files = sorted((Path(store) / SLIDES_DIR).glob("*.parquet"))
    if not files:
        raise ExplainError(f"{store} has no slides/*.parquet: is it a slide2expr store?")
    return pd.DataFrame([r for f in files for r in pq.read_table(f).to_pylist()])


def read_tiles(store: str | os.PathLike, tiling: str, slide_id: str) -> pd.DataFrame:
    """``tiles/<tiling>/<slide_id>.parquet``: slide_id, tile_id, x, y, w, h, tissue_frac (tile_id order)."""
    p = tiles_path(store, tiling, slide_id)
    if not p.exists():
        raise ExplainError(
            f"slide {slide_id!r} has no tile grid {p}: featurize it with tiling {tiling!r} first"
        )
    return pq.read_table(p).to_pandas()


def read_embeddings(
    store: str | os.PathLike, tiling: str, encoder: str, slide_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """Tile ids ``(n,)`` int32 and embeddings ``(n, d)`` float32 of one slide, in tile_id order."""
    p = embeddings_path(store, tiling, encoder, slide_id)
    if not p.exists():
        raise ExplainError(
            f"slide {slide_id!r} has no embeddings {p}: featurize it with encoder {encoder!r} and tiling {tiling!r}"
        )
    t = pq.read_table(p, columns=["tile_id", "embedding"])
    col = t.column("embedding").combine_chunks()
    d = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    emb = np.asarray(flat, dtype=np.float32).reshape(len(t), d)
    return t.column("tile_id").to_numpy().astype(np.int32), emb


def slide_bag_ids(run: Run, store: str | os.PathLike) -> dict[str, str]:
    """slide_id → bag id (the patient for ``by="patient"`` runs, else the slide itself), for ok slides."""
    slides = all_slides(store)
    slides = slides[slides["status"] == "ok"]
    if run.by == "slide":
        return {s: s for s in slides["slide_id"]}
    return dict(zip(slides["slide_id"], slides["patient_id"], strict=True))
