"""Reading one slide's files and a run directory: the slides table, a slide's row, tile grid and embeddings, and a
run's config and tables.

Every path comes from the contract (``slide_path``, ``tiles_path``, ``embeddings_path``, ``RunLayout``). A missing
file raises a :class:`~slide2expr.contract.StoreError` that names it and the step that writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr.contract import (
    SLIDES_DIR,
    RunLayout,
    StoreError,
    check_store,
    embeddings_path,
    read_parquet_metadata,
    read_parquet_table,
    slide_path,
    tiles_path,
)
from slide2expr.sql._bags import _dim_of, _list_parquet, read_slide_file

#: Keys every run's ``config.json`` holds (``regress.compare`` writes them).
RUN_CONFIG_KEYS = ("tiling", "encoder", "genes", "models")
#: A run's ``attention.parquet`` up to this many rows is read whole and kept; a larger one is read per request
#: (:meth:`Run.attention_rows`), so memory follows what is asked for, not the cohort.
ATTENTION_IN_MEMORY_ROWS = 5_000_000


def read_slides(store: str | os.PathLike) -> pd.DataFrame:
    """Every row of ``STORE/slides/*.parquet`` (one row per slide, in slide id order).

    Examples
    --------
    >>> import tempfile
    >>> from slide2expr.contract import StoreError, init_store
    >>> with tempfile.TemporaryDirectory() as d:
    ...     try:
    ...         read_slides(init_store(d))
    ...     except StoreError as exc:
    ...         print(str(exc).split(" has ")[1])
    no slides/*.parquet: is it a slide2expr store?
    """
    root = check_store(store)
    files = _list_parquet(root / SLIDES_DIR)
    if not files:
        raise StoreError(f"{store} has no {SLIDES_DIR}/*.parquet: is it a slide2expr store?")
    tables = [read_parquet_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def read_slide(store: str | os.PathLike, slide_id: str) -> dict:
    """The one-row ``slides/<slide_id>.parquet`` of ``store`` as a dict."""
    p = slide_path(store, slide_id)
    if not p.exists():
        raise StoreError(f"slide {slide_id!r} has no {p}: featurize it into the store {store} first")
    return read_parquet_table(p).to_pylist()[0]


def read_tiles(store: str | os.PathLike, tiling: str, slide_id: str) -> pd.DataFrame:
    """``tiles/<tiling>/<slide_id>.parquet``: slide_id, tile_id, x, y, w, h, tissue_frac (tile_id order)."""
    p = tiles_path(store, tiling, slide_id)
    if not p.exists():
        raise StoreError(
            f"slide {slide_id!r} has no tile grid {p}: featurize it with tiling {tiling!r} first"
        )
    return read_parquet_table(p).to_pandas()


def read_embeddings(
    store: str | os.PathLike, tiling: str, encoder: str, slide_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """Tile ids ``(n,)`` int32 and embeddings ``(n, d)`` float32 of one slide, in tile_id order.

    Read as the bag loader reads (:func:`load_cohort`): plain float32 pages straight into the array, any other
    layout (float16, compressed) through pyarrow.
    """
    p = embeddings_path(store, tiling, encoder, slide_id)
    if not p.exists():
        raise StoreError(
            f"slide {slide_id!r} has no embeddings {p}: featurize it with encoder {encoder!r} and tiling {tiling!r}"
        )
    md = read_parquet_metadata(p)
    n = md.num_rows
    emb = np.empty((n, _dim_of(md.schema.to_arrow_schema(), p)), dtype=np.float32)
    tile_ids = np.empty(n, dtype=np.int32)
    read_slide_file(p, n, emb, tile_ids, np.empty(n, np.int64), np.empty(n, np.int64))
    return tile_ids, emb


@dataclass(frozen=True)
class Run:
    """A run directory written by ``regress.compare``: its ``config.json``, and its tables read on first use.

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
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def layout(self) -> RunLayout:
        """Where each file of the run lives."""
        return RunLayout(self.path)

    @property
    def tiling(self) -> str:
        return str(self.config["tiling"])

    @property
    def encoder(self) -> str:
        return str(self.config["encoder"])

    @property
    def by(self) -> str:
        """The bag unit: ``"patient"`` or ``"slide"``."""
        return str(self.config.get("by", "patient"))

    def table(self, name: str, *, required: bool = True) -> pd.DataFrame | None:
        """``RUN/<name>.parquet`` as a DataFrame (read once); None when absent and not ``required``."""
        if name not in self._tables:
            p = self.layout.table(name)
            if not p.exists():
                if required:
                    raise StoreError(
                        f"{p} is missing: run `slide2expr compare` to (re)write the run directory {self.path}"
                    )
                return None
            self._tables[name] = pq.read_table(p).to_pandas()
        return self._tables[name]

    def attention_index(self) -> pd.DataFrame | None:
        """What ``attention.parquet`` covers, read once without loading it: one row per model, gene, bag and slide
        with attention rows, and ``n_tiles``, the slide's rows (one per tile: a run scores each bag's tiles once
        per model and gene) (None without the file).

        Columns ``model``, ``gene``, ``bag_id``, ``slide_id``, ``n_tiles``; sorted by them. One streaming pass
        (DuckDB) counting rows per group, so its cost is a scan of four columns whatever the run's size.
        """
        if "attention_index" not in self._tables:
            p = self.layout.attention
            if not p.exists():
                return None
            import duckdb

            with duckdb.connect() as con:
                self._tables["attention_index"] = con.execute(
                    "SELECT model, gene, bag_id, slide_id, count(*)::BIGINT AS n_tiles "
                    "FROM read_parquet(?) GROUP BY ALL ORDER BY ALL",
                    [str(p)],
                ).df()
        return self._tables["attention_index"]

    def attention_rows(
        self, *, models=None, genes=None, slides=None, bags=None, columns=None
    ) -> pd.DataFrame:
        """The rows of ``attention.parquet`` of the given models, genes, slides and bags (each None: all), in the
        file's order with a fresh index; ``columns`` (default all) of ``ATTENTION_SCHEMA``.

        A table of at most :data:`ATTENTION_IN_MEMORY_ROWS` rows is read whole once and filtered in memory; a
        larger one is read with the filters pushed into Parquet (row groups whose statistics exclude the slides are
        skipped), so asking for a few slides of a large run reads little of it. Raises
        :class:`~slide2expr.contract.StoreError` when the run has no attention table.
        """
        wanted = {"model": models, "gene": genes, "slide_id": slides, "bag_id": bags}
        wanted = {k: list(v) for k, v in wanted.items() if v is not None}
        p = self.layout.attention
        if "attention" in self._tables or (
            p.exists() and read_parquet_metadata(p).num_rows <= ATTENTION_IN_MEMORY_ROWS
        ):
            att = self.table("attention")
            keep = np.ones(len(att), dtype=bool)
            for col, values in wanted.items():
                keep &= att[col].isin(values).to_numpy()
            out = att.loc[keep, list(columns) if columns is not None else att.columns]
            return out.reset_index(drop=True)
        if not p.exists():
            self.table("attention")  # the missing file's error
        filters = [(col, "in", values) for col, values in wanted.items()] or None
        cols = list(columns) if columns is not None else None
        return pq.read_table(p, filters=filters, columns=cols).to_pandas()

    def slide_attention(self, model: str, slide_id: str) -> pd.DataFrame:
        """Every gene's :meth:`attention_rows` of ``model`` on one slide. The last slide asked for is kept, so
        asking for its genes one at a time reads the attention table once."""
        key = (model, slide_id)
        kept = self._tables.get("_slide_attention")
        if kept is None or kept[0] != key:
            kept = self._tables["_slide_attention"] = (
                key,
                self.attention_rows(models=[model], slides=[slide_id]),
            )
        return kept[1]


def open_run(run: str | os.PathLike | Run) -> Run:
    """Open a run directory: read its ``config.json``; tables are read when first asked for.

    Examples
    --------
    >>> import tempfile
    >>> from slide2expr.contract import StoreError
    >>> with tempfile.TemporaryDirectory() as d:
    ...     try:
    ...         open_run(d)
    ...     except StoreError as exc:
    ...         print(str(exc).split(" is ")[1])
    not a run directory (no config.json): pass the folder `slide2expr compare --out` wrote
    """
    if isinstance(run, Run):
        return run
    path = Path(run)
    cfg_path = RunLayout(path).config
    if not cfg_path.exists():
        raise StoreError(
            f"{path} is not a run directory (no {cfg_path.name}): pass the folder `slide2expr compare --out` wrote"
        )
    config = json.loads(cfg_path.read_text())
    for key in RUN_CONFIG_KEYS:
        if key not in config:
            raise StoreError(f"{cfg_path} has no {key!r}: it was not written by regress.compare")
    return Run(path, config, tuple(config["genes"]), tuple(config["models"]))
