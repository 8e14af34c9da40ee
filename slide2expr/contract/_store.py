"""The store layout: the contract between stages.

A store is a directory of Parquet files, one per slide and stage::

    STORE/
      store.json
      slides/<slide_id>.parquet
      tiles/<tiling>/<slide_id>.parquet
      embeddings/<tiling>/<encoder>/<slide_id>.parquet
      qc/<tiling>/<slide_id>.png
      targets/<name>.parquet

Every file is written to a hidden temporary name in its own directory and renamed into place, so a reader that
globs ``*.parquet`` never sees a partial file and a crash never leaves one. A store may be an object-store URI
(``s3://bucket/prefix``): the paths below are then :class:`~slide2expr.contract.ObjectPath` and the writers put
each file straight to its final key (one PUT, whole or not at all; no rename). Key names live here and nowhere
else.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from slide2expr.contract._fs import (
    ObjectPath,
    is_remote,
    read_parquet_schema,
    store_path,
    write_file_atomic,
    write_parquet_atomic,
)
from slide2expr.contract._tiling import Tiling

STORE_FORMAT = 1
STORE_JSON = "store.json"
SLIDES_DIR = "slides"
TILES_DIR = "tiles"
EMBEDDINGS_DIR = "embeddings"
TARGETS_DIR = "targets"
QC_DIR = "qc"
#: Any one of these folders (or ``store.json``) marks a directory as a store.
STORE_DIRS = (SLIDES_DIR, TILES_DIR, EMBEDDINGS_DIR)
#: A slide's ``status`` in its ``slides/`` row: embedded (``ok``); no tile position with enough tissue
#: (``no_tissue``); the slide is smaller than one tile, so the grid has no position at all (``too_small``);
#: unreadable (``failed``: ``error`` says why). ``no_tissue`` and ``too_small`` slides have empty tiles and
#: embeddings files (a finished slide: resume skips it); a ``failed`` one has none.
SLIDE_STATUSES = ("ok", "no_tissue", "too_small", "failed")
#: The kinds of per-slide files, in the order a removal takes them (the reverse of the order a run writes them:
#: the embeddings file, which marks a slide as done, goes first and the slide's row last)
SLIDE_FILE_KINDS = ("embeddings", "tiles", "qc", "slides")

#: Parquet key-value metadata keys (bytes keys in the file; values are JSON strings).
META_PREFIX = "slide2expr."
META_KEYS = (
    "format",  # store format version
    "version",  # package version that wrote the file
    "kind",  # slides | tiles | embeddings | targets
    "slide_id",
    "tiling",  # tiling name, e.g. mpp0.50_px224_ov0
    "tiling_params",  # {"mpp":…, "tile_px":…, "overlap_px":…, "min_tissue":…}
    "encoder",  # encoder name
    "encoder_spec",  # dict: architecture, dim, output mode, preprocessing (mean/std/size/interp), licence …
    "weights_sha256",
    "dim",
    "dtype",  # float32 | float16
    "fingerprint",  # slide file fingerprint {"size":…, "mtime_ns":…, "head_sha256":…}
    "config_hash",  # hash of everything that affects the output (for resume)
)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StoreError(ValueError):
    """A store path or file does not follow the layout."""


def check_id(value: str, *, what: str = "slide_id") -> str:
    """Return ``value`` if it is a safe file stem, else raise a :class:`StoreError` naming it."""
    if not _SAFE_ID.match(value or ""):
        raise StoreError(
            f"{what} {value!r} cannot be used as a file name: use letters, digits, '.', '_' and '-' only"
        )
    return value


def init_store(store: str | os.PathLike) -> Path | ObjectPath:
    """Create ``store`` (and ``store.json``) if missing; return it as a Path (an :class:`ObjectPath` for a URI).
    Refuses a newer format."""
    root = store_path(store)
    root.mkdir(parents=True, exist_ok=True)
    meta = root / STORE_JSON
    if meta.exists():
        fmt = json.loads(meta.read_text()).get("format")
        if fmt != STORE_FORMAT:
            raise StoreError(f"{root} has store format {fmt}; this slide2expr reads format {STORE_FORMAT}")
    else:
        write_bytes_atomic(meta, json.dumps({"format": STORE_FORMAT}, indent=2).encode())
    return root


def check_store(store: str | os.PathLike) -> Path | ObjectPath:
    """Return ``store`` as a Path (an :class:`ObjectPath` for a URI such as ``s3://bucket/prefix``) if it is a
    slide2expr store, else raise a :class:`StoreError` saying why.

    A store is a directory holding ``store.json`` or one of ``slides/``, ``tiles/``, ``embeddings/`` (what
    ``slide2expr featurize`` writes); a run directory, a file or a path that does not exist is refused.
    """
    root = store_path(store)
    if not root.exists():
        raise StoreError(f"store {root} does not exist: run `slide2expr featurize … --store {root}` first")
    if not root.is_dir():
        raise StoreError(
            f"store {root} is not a directory: give the store directory `slide2expr featurize` wrote"
        )
    if not (root / STORE_JSON).exists() and not any((root / d).is_dir() for d in STORE_DIRS):
        raise StoreError(
            f"{root} is not a slide2expr store (no {STORE_JSON}, no slides/, tiles/ or embeddings/): give the "
            "store directory `slide2expr featurize` wrote"
        )
    return root


def package_version() -> str:
    """The installed slide2expr version, recorded in every file it writes."""
    from slide2expr import __version__

    return __version__


def slide_path(store: str | os.PathLike, slide_id: str) -> Path | ObjectPath:
    return store_path(store) / SLIDES_DIR / f"{check_id(slide_id)}.parquet"


def tiles_path(store: str | os.PathLike, tiling: str | Tiling, slide_id: str) -> Path | ObjectPath:
    return store_path(store) / TILES_DIR / str(tiling) / f"{check_id(slide_id)}.parquet"


def embeddings_path(
    store: str | os.PathLike, tiling: str | Tiling, encoder: str, slide_id: str
) -> Path | ObjectPath:
    return store_path(store) / EMBEDDINGS_DIR / str(tiling) / encoder / f"{check_id(slide_id)}.parquet"


def qc_path(store: str | os.PathLike, tiling: str | Tiling, slide_id: str) -> Path | ObjectPath:
    """``STORE/qc/<tiling>/<slide_id>.png``: the thumbnail with the tissue outline and the kept tiles."""
    return store_path(store) / QC_DIR / str(tiling) / f"{check_id(slide_id)}.png"


def targets_path(store: str | os.PathLike, name: str) -> Path | ObjectPath:
    return store_path(store) / TARGETS_DIR / f"{check_id(name, what='targets name')}.parquet"


def store_files(
    store: str | os.PathLike,
    kind: str,
    *,
    slide_id: str | None = None,
    tiling: str | Tiling | None = None,
    encoder: str | None = None,
) -> list[Path | ObjectPath]:
    """The store's files of one ``kind`` (see :data:`SLIDE_FILE_KINDS`), of one slide, tiling or encoder where
    given (``tiling`` and ``encoder`` only narrow the kinds that have them), with the hidden temporaries a killed
    writer left beside them; sorted.

    >>> store_files("/no/such/store", "embeddings", encoder="uni")
    []
    """
    if kind not in SLIDE_FILE_KINDS:
        raise StoreError(f"kind={kind!r}: one of {', '.join(SLIDE_FILE_KINDS)}")
    sid = "*" if slide_id is None else check_id(slide_id)
    til = "*" if tiling is None else check_id(str(tiling), what="tiling")
    enc = "*" if encoder is None else check_id(encoder, what="encoder")
    folder, name = {
        "slides": (SLIDES_DIR, f"{sid}.parquet"),
        "tiles": (f"{TILES_DIR}/{til}", f"{sid}.parquet"),
        "embeddings": (f"{EMBEDDINGS_DIR}/{til}/{enc}", f"{sid}.parquet"),
        "qc": (f"{QC_DIR}/{til}", f"{sid}.png"),
    }[kind]
    root = store_path(store)
    found = set(root.glob(f"{folder}/{name}")) | set(root.glob(f"{folder}/.{name}.*.tmp"))
    return sorted(p for p in found if p.is_file())


def _tmp_name(path: Path) -> Path:
    # hidden (leading dot) and not ending in .parquet, so `*.parquet` globs never match it
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path | ObjectPath:
    """Write ``data`` to ``path`` via a hidden temporary file, fsync, and rename into place (an object-store path:
    one PUT to the final key)."""
    if is_remote(path):
        return write_file_atomic(path, data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def encode_metadata(meta: dict) -> dict[bytes, bytes]:
    """JSON-encode ``meta`` values under the ``slide2expr.`` prefix for Parquet key-value metadata."""
    return {f"{META_PREFIX}{k}".encode(): json.dumps(v, sort_keys=True).encode() for k, v in meta.items()}


def decode_metadata(raw: dict[bytes, bytes] | None) -> dict:
    """Inverse of :func:`encode_metadata`; other keys (pandas, ARROW:schema) are ignored."""
    out = {}
    for k, v in (raw or {}).items():
        key = k.decode()
        if key.startswith(META_PREFIX):
            out[key[len(META_PREFIX) :]] = json.loads(v.decode())
    return out


def write_table_atomic(
    table: pa.Table,
    path: str | os.PathLike,
    *,
    metadata: dict | None = None,
    compression: str | None = "none",
    row_group_size: int | None = None,
    use_dictionary: bool | list[str] | None = None,
) -> Path | ObjectPath:
    """Write ``table`` as Parquet to ``path`` atomically, with ``metadata`` as ``slide2expr.*`` keys.

    The file is written to a hidden temporary name in the same directory, fsynced, and renamed into place; an
    object-store path gets the same bytes made locally and put to its final key (:func:`write_parquet_atomic`).
    Uncompressed by default: embeddings barely compress and uncompressed pages read fastest (see benchmarks/bags.py).
    """
    kw = {"compression": compression, "row_group_size": row_group_size, "use_dictionary": use_dictionary}
    if is_remote(path):
        return write_parquet_atomic(table, path, metadata=metadata, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update(encode_metadata(metadata))
        table = table.replace_schema_metadata(merged)
    tmp = _tmp_name(path)
    # random floats never fit a dictionary: trying one first leaves the first MB of embeddings dictionary-coded,
    # 4 % bigger and slower to decode (benchmarks/bags.py); every other column keeps pyarrow's default
    if use_dictionary is None:
        use_dictionary = [n for n in table.column_names if n != "embedding"]
    try:
        pq.write_table(
            table,
            tmp,
            compression=compression,
            row_group_size=row_group_size,
            use_dictionary=use_dictionary,
            write_statistics=True,
        )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``slide2expr.*`` metadata of a store file (local or object store), decoded."""
    return decode_metadata(read_parquet_schema(path).metadata)


# ---- schemas -------------------------------------------------------------------------------------------------

SLIDES_SCHEMA = pa.schema(
    [
        pa.field("slide_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string()),
        pa.field("path", pa.string()),
        pa.field("file_size", pa.int64()),
        pa.field("file_mtime_ns", pa.int64()),
        pa.field("head_sha256", pa.string()),
        pa.field("vendor", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("mpp_x", pa.float64()),
        pa.field("mpp_y", pa.float64()),
        pa.field("mpp_source", pa.string()),  # metadata | override
        pa.field("objective_power", pa.float64()),
        pa.field("levels", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # ok | no_tissue | too_small | failed
        pa.field("error", pa.string()),
        pa.field("n_tiles", pa.int64()),
        pa.field("tissue_area_mm2", pa.float64()),
        pa.field("tiling", pa.string()),
        pa.field("encoder", pa.string()),
        pa.field("seconds_read", pa.float64()),
        pa.field("seconds_total", pa.float64()),
        pa.field("featurized_at", pa.timestamp("us", tz="UTC")),
    ]
)

TILES_SCHEMA = pa.schema(
    [
        pa.field("slide_id", pa.string(), nullable=False),
        pa.field("tile_id", pa.int32(), nullable=False),
        pa.field("x", pa.int64(), nullable=False),  # level-0 px, top-left
        pa.field("y", pa.int64(), nullable=False),
        pa.field("w", pa.int64(), nullable=False),  # level-0 px
        pa.field("h", pa.int64(), nullable=False),
        pa.field("tissue_frac", pa.float32(), nullable=False),
    ]
)


def embeddings_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """Schema of ``embeddings/<tiling>/<encoder>/<slide_id>.parquet``: a non-nullable fixed-size list."""
    value_type = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.schema(
        [
            pa.field("slide_id", pa.string(), nullable=False),
            pa.field("tile_id", pa.int32(), nullable=False),
            pa.field("x", pa.int64(), nullable=False),
            pa.field("y", pa.int64(), nullable=False),
            pa.field(
                "embedding",
                pa.list_(pa.field("element", value_type, nullable=False), int(dim)),
                nullable=False,
            ),
        ]
    )


TARGETS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("gene", pa.string(), nullable=False),
        pa.field("value", pa.float64()),  # transformed (e.g. log1p)
        pa.field("raw_value", pa.float64()),
        pa.field("gene_id", pa.string()),  # Ensembl id(s) of a GDC STAR-counts gene ("+"-joined when summed)
        pa.field(
            "gene_type", pa.string()
        ),  # GENCODE gene type (protein_coding, lncRNA, …) from the STAR file
    ]
)
