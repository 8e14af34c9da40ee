"""Writing: a slide's files (its row, tile grid, QC image and, last, its embeddings), resume's check of what is
done, and the writer thread that runs beside the encoder.

The embeddings file is written last: it is the commit marker that resume checks. Every file goes to a hidden
temporary name first and is renamed into place, so a killed run leaves complete files or hidden temporaries, which
the next run removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slide2expr.contract import (
    SLIDES_SCHEMA,
    STORE_FORMAT,
    TILES_SCHEMA,
    embeddings_path,
    embeddings_schema,
    is_remote,
    package_version,
    qc_path,
    read_metadata,
    read_parquet_table,
    slide_path,
    tiles_path,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.featurize._inputs import SlideInput, file_fingerprint
from slide2expr.featurize._plan import SlidePlan, TilingParams

#: Bumped when the pipeline changes what it writes (part of the config hash, so resume redoes old slides).
PIPELINE_VERSION = 1
#: finished slides waiting for the writer at most (each holds its embeddings): memory stays flat
WRITER_QUEUE = 2


@dataclass
class RunConfig:
    """Everything fixed for a run (the parts that change outputs go into the config hash)."""

    store: Path
    tiling: TilingParams
    encoder_name: str
    encoder_meta: dict
    weights_sha256: str | None
    dim: int
    dtype: str
    out_px: int
    precision: str
    #: whether the encoder runs compiled (recorded, not part of the config hash: outputs equal within rounding)
    compiled: bool = False

    @property
    def config(self) -> dict:
        return {
            "pipeline_version": PIPELINE_VERSION,
            "store_format": STORE_FORMAT,
            "tiling": self.tiling.as_dict(),
            "encoder": self.encoder_name,
            "weights_sha256": self.weights_sha256,
            "architecture": self.encoder_meta.get("architecture"),
            "output_mode": self.encoder_meta.get("output_mode"),
            "preprocessing": self.encoder_meta.get("preprocessing"),
            "dim": self.dim,
            "dtype": self.dtype,
            "out_px": self.out_px,
        }

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slide_row(plan: SlidePlan, cfg: RunConfig, *, n_tiles: int, seconds_total: float) -> pa.Table:
    s = plan.slide
    row: dict[str, Any] = {
        "slide_id": s.slide_id,
        "patient_id": s.patient_id,
        "path": os.path.abspath(s.path),  # explain opens it later, from wherever it runs
        "file_size": plan.fingerprint.get("size"),
        "file_mtime_ns": plan.fingerprint.get("mtime_ns"),
        "head_sha256": plan.fingerprint.get("head_sha256"),
        "vendor": plan.vendor,
        "width": plan.width,
        "height": plan.height,
        "mpp_x": plan.mpp[0] if plan.mpp else None,
        "mpp_y": plan.mpp[1] if plan.mpp else None,
        "mpp_source": plan.mpp_source,
        "objective_power": plan.objective_power,
        "levels": plan.levels,
        "status": plan.status,
        "error": plan.error,
        "n_tiles": n_tiles,
        "tissue_area_mm2": plan.tissue_area_mm2,
        "tiling": cfg.tiling.name,
        "encoder": cfg.encoder_name,
        "seconds_read": round(plan.seconds_plan + plan.seconds_read, 4),
        "seconds_total": round(seconds_total, 4),
        "featurized_at": datetime.now(timezone.utc),
    }
    return pa.Table.from_pylist([row], schema=SLIDES_SCHEMA)


def _file_meta(plan: SlidePlan, cfg: RunConfig, kind: str) -> dict:
    meta = {
        "format": STORE_FORMAT,
        "version": package_version(),
        "kind": kind,
        "slide_id": plan.slide.slide_id,
        "tiling": cfg.tiling.name,
        "tiling_params": cfg.tiling.as_dict(),
        "fingerprint": plan.fingerprint,
        "config_hash": cfg.config_hash,
    }
    if kind in ("embeddings", "slides"):
        meta.update(
            {
                "encoder": cfg.encoder_name,
                "encoder_spec": {
                    **cfg.encoder_meta,
                    "out_px": cfg.out_px,
                    "precision": cfg.precision,
                    "compiled": cfg.compiled,
                },
                "weights_sha256": cfg.weights_sha256,
                "dim": cfg.dim,
                "dtype": cfg.dtype,
            }
        )
    return meta


def _clean_stale_tmp(path: Path) -> None:
    """Remove hidden temporaries of ``path`` left by a killed run (only this slide's: shards never collide); an
    object store has none (its writes go straight to the final key)."""
    if not is_remote(path) and path.parent.is_dir():
        for t in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                t.unlink()


def _slide_files(cfg: RunConfig, sid: str) -> tuple[Path, Path, Path, Path]:
    store, tiling = cfg.store, cfg.tiling.name
    return (
        slide_path(store, sid),
        tiles_path(store, tiling, sid),
        embeddings_path(store, tiling, cfg.encoder_name, sid),
        qc_path(store, tiling, sid),
    )


def clean_stale_tmp(slide: SlideInput, cfg: RunConfig) -> None:
    """Remove the hidden temporaries a killed run left for ``slide``'s files; resume calls it for the slides it
    skips (a run killed while rewriting a finished slide leaves one beside the complete files)."""
    for p in _slide_files(cfg, slide.slide_id):
        _clean_stale_tmp(p)


def write_slide(plan: SlidePlan, cfg: RunConfig, emb: np.ndarray | None, *, seconds_total: float) -> None:
    """Write one slide's files: ``slides/``, ``tiles/<tiling>/``, ``qc/<tiling>/`` and, last (the commit marker
    that resume checks), ``embeddings/<tiling>/<encoder>/`` (empty for ``no_tissue`` and ``too_small``; none for
    ``failed``)."""
    sid = plan.slide.slide_id
    sp, tp, ep, qp = _slide_files(cfg, sid)
    for p in (sp, tp, ep, qp):
        _clean_stale_tmp(p)
    g = plan.grid
    n = len(g) if (g is not None and plan.status == "ok") else 0
    if plan.status == "failed":
        # a failed slide must not keep this encoder's embeddings from an earlier run; the tiling's tile grid and QC
        # image go too unless another encoder's embeddings of the slide still use them
        others = [p for p in ep.parent.parent.glob(f"*/{ep.name}") if p != ep]
        for p in (ep,) if others else (ep, tp, qp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    write_table_atomic(
        _slide_row(plan, cfg, n_tiles=n, seconds_total=seconds_total),
        sp,
        metadata=_file_meta(plan, cfg, "slides"),
    )
    if plan.status == "failed":
        return
    if plan.qc_png is not None:
        write_bytes_atomic(qp, plan.qc_png)
    ids = np.arange(n, dtype=np.int32)
    if n:
        cols = {"x": g.x, "y": g.y, "w": np.full(n, g.w0, np.int64), "h": np.full(n, g.h0, np.int64)}
        frac = g.tissue_frac
    else:
        cols = {k: np.zeros(0, np.int64) for k in ("x", "y", "w", "h")}
        frac = np.zeros(0, np.float32)
    sid_col = pa.array([sid] * n, pa.string())
    tiles = pa.Table.from_arrays(
        [
            sid_col,
            pa.array(ids),
            *(pa.array(cols[k]) for k in ("x", "y", "w", "h")),
            pa.array(frac, pa.float32()),
        ],
        schema=TILES_SCHEMA,
    )
    write_table_atomic(tiles, tp, metadata=_file_meta(plan, cfg, "tiles"))
    schema = embeddings_schema(cfg.dim, cfg.dtype)
    values = (
        emb.reshape(-1)
        if (emb is not None and n)
        else np.zeros(0, np.float32 if cfg.dtype == "float32" else np.float16)
    )
    table = pa.Table.from_arrays(
        [
            sid_col,
            pa.array(ids),
            pa.array(cols["x"]),
            pa.array(cols["y"]),
            _embedding_column(values, schema.field("embedding").type),
        ],
        schema=schema,
    )
    write_table_atomic(table, ep, metadata=_file_meta(plan, cfg, "embeddings"))


#: bytes of embeddings per chunk of the embedding column that write_slide hands to Parquet (see
#: :func:`_embedding_column`)
EMBEDDING_CHUNK_BYTES = 16 << 20


def _embedding_column(values: np.ndarray, type_: pa.DataType) -> pa.ChunkedArray:
    """The flat ``values`` as a fixed-size-list column in chunks of about ``EMBEDDING_CHUNK_BYTES`` (zero-copy).

    Parquet's writer builds a list column's repetition and definition levels for a whole chunk at a time, two int16
    per value, as many bytes as the float32 embeddings themselves: chunks keep that memory to a chunk's worth
    instead of the slide's. The file is the same: one row group, the same pages
    (``tests/featurize/test_pipeline.py``).
    """
    dim = type_.list_size
    rows = max(1, EMBEDDING_CHUNK_BYTES // (dim * values.itemsize))
    n = len(values) // dim if dim else 0
    chunks = [
        pa.FixedSizeListArray.from_arrays(pa.array(values[i * dim : (i + rows) * dim]), type=type_)
        for i in range(0, n, rows)
    ]
    return pa.chunked_array(chunks, type=type_)


def skip_if_done(slide: SlideInput, cfg: RunConfig) -> pa.Table | None:
    """Resume's step for one slide: when its outputs match this config and file, remove the hidden temporaries a killed
    run left beside them, bring its ``slides/`` row up to date with this run's patient id and path (a new patient
    table or a moved file changes neither pixels nor embeddings), and return that row; None when the slide is to
    be done."""
    row = _done_row(slide, cfg)
    if row is None:
        return None
    clean_stale_tmp(slide, cfg)
    want = {"patient_id": slide.patient_id, "path": os.path.abspath(slide.path)}
    changed = {k: v for k, v in want.items() if row.column(k)[0].as_py() != v}
    for k, v in changed.items():
        row = row.set_column(row.schema.get_field_index(k), row.schema.field(k), pa.array([v], pa.string()))
    if changed:
        write_table_atomic(row, slide_path(cfg.store, slide.slide_id))  # the schema keeps the file's metadata
    return row


def _done_row(slide: SlideInput, cfg: RunConfig) -> pa.Table | None:
    """The slide's ``slides/`` row when its outputs match this config and file; None otherwise."""
    sp, tp, ep, _ = _slide_files(cfg, slide.slide_id)
    if not (ep.is_file() and sp.is_file() and tp.is_file()):
        return None
    try:
        meta = read_metadata(ep)
    except (OSError, pa.ArrowInvalid):
        return None
    if meta.get("config_hash") != cfg.config_hash:
        return None
    fp = meta.get("fingerprint") or {}
    now = file_fingerprint(slide.path)
    if (fp.get("size"), fp.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return None
    if (meta.get("tiling_params") or {}).get("mpp") != cfg.tiling.mpp:
        return None
    row = read_parquet_table(sp)
    return row if row.num_rows == 1 and _slide_mpp_matches(row, slide) else None


def _slide_mpp_matches(row: pa.Table, slide: SlideInput) -> bool:
    """Whether the recorded level-0 resolution came from where this run's would: the CSV's ``mpp`` (same value),
    the slide's metadata, or ``--mpp-override`` standing in for missing metadata (same value)."""
    mpp, source = row.column("mpp_x")[0].as_py(), row.column("mpp_source")[0].as_py()
    if slide.mpp is not None:
        return source == "override" and mpp == slide.mpp
    if source == "metadata":
        return True
    return source == "override" and mpp == slide.mpp_fallback


class SlideWriter:
    """Writes finished slides on a thread beside the model; a bounded queue keeps memory flat."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.q: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE)
        self.error: BaseException | None = None
        #: slide ids whose files are all written, in order
        self.written: list[str] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="slide2expr-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            plan, emb, seconds = item
            if self.error is not None:
                continue
            try:
                write_slide(plan, self.cfg, emb, seconds_total=seconds)
                self.written.append(plan.slide.slide_id)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by close()
                self.error = exc

    def put(self, plan: SlidePlan, emb: np.ndarray | None, seconds: float) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((plan, emb, seconds))

    def close(self) -> None:
        self._stop()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def finish(self) -> list[str]:
        """After Ctrl-C (which may have cut :meth:`close` short): write the slides already handed over, and return
        the ids of every slide written whole."""
        self._stop()
        self.thread.join()
        return list(self.written)

    def _stop(self) -> None:
        if not self.stopped:
            self.q.put(None)
            self.stopped = True
