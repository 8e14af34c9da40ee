"""Bag loading: one ordered scan of the embeddings files into one preallocated ``(N, d)`` float32 array.

The plan (which files, in which order, how many rows each, which patient) comes from the Parquet footers only; the
scan then copies each slide's ``embedding`` values straight into its slot of the flat array. Bags are views into
that array. For the files featurize writes (uncompressed, plain-encoded float32) the values are read from the data
pages directly (:mod:`sql._pages`, near ``numpy.fromfile`` speed); any other layout goes through pyarrow. Nothing
here goes through DuckDB, whose Arrow export is the slower path for this (``benchmarks/bags.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from slide2expr.contract import (
    EMBEDDINGS_DIR,
    SLIDES_DIR,
    TARGETS_DIR,
    Cohort,
    ObjectPath,
    StoreError,
    decode_metadata,
    is_remote,
    open_input,
    pair_slides,
    parse_tcga,
    pyarrow_filesystem,
    read_parquet_metadata,
    read_parquet_table,
    read_range,
    sample_type_name,
    store_path,
    tcga_patient,
)
from slide2expr.sql._pages import read_plain_float_column, read_plain_float_column_ranged

BAG_UNITS = ("patient", "slide")
#: Default reader threads: page reads release the GIL, and a few threads keep one disk or page cache busy.
MAX_READER_THREADS = 4
#: Ids listed in an error message before "…".
SHOWN_IDS = 10
#: Derived bag caches live here (hidden: no view or glob of the store ever reads them).
CACHE_DIR = ".cache/bags"
CACHE_MODES = (False, True, "mmap")


class MissingTargetsWarning(UserWarning):
    """Some bags have tiles but no target values; they are listed in ``Cohort.missing_targets``."""


class UnpairedSlidesWarning(UserWarning):
    """Some slides pair with none of their patient's samples and are left out of its bag (listed, with the reason,
    in ``Cohort.meta["slides_not_paired"]``)."""


@dataclass(frozen=True)
class _SlideFile:
    slide_id: str
    patient_id: str
    path: Path
    n_rows: int
    meta: dict


@dataclass(frozen=True)
class _Plan:
    files: tuple[_SlideFile, ...]  # in bag order: patient, then slide id
    bag_ids: tuple[str, ...]
    groups: tuple[str, ...]
    bag_of_file: tuple[int, ...]
    dim: int
    encoder: str
    tiling: str
    meta: dict


def _list_parquet(folder: Path) -> list[Path]:
    # `*.parquet` only: the atomic writer's temporary files are hidden and end in `.tmp`
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def resolve_tiling(store: str | os.PathLike, *, encoder: str, tiling: str | None) -> str:
    """The tiling that holds ``encoder``'s embeddings; ``None`` picks it when only one tiling has it."""
    root = store_path(store) / EMBEDDINGS_DIR
    if not root.is_dir():
        raise StoreError(f"{store} has no {EMBEDDINGS_DIR}/ folder: run `slide2expr featurize` first")
    have = sorted(p.parent.name for p in root.glob(f"*/{encoder}") if p.is_dir())
    if tiling is not None:
        if tiling not in have:
            all_pairs = sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*") if p.is_dir())
            raise StoreError(
                f"no embeddings for encoder {encoder!r} at tiling {tiling!r} in {store}; "
                f"available tiling/encoder pairs: {', '.join(all_pairs) or 'none'}"
            )
        return tiling
    if not have:
        encoders = sorted({p.name for p in root.glob("*/*") if p.is_dir()})
        raise StoreError(
            f"no embeddings for encoder {encoder!r} in {store}; encoders in the store: {', '.join(encoders) or 'none'}"
        )
    if len(have) > 1:
        raise StoreError(
            f"encoder {encoder!r} has embeddings at several tilings ({', '.join(have)}): pick one with --tiling "
            "on the command line (tiling= in Python)"
        )
    return have[0]


def _slide_patients(store: Path) -> dict[str, str]:
    """slide_id → patient_id from ``slides/*.parquet`` (rows with a null patient are left out)."""
    files = _list_parquet(store / SLIDES_DIR)
    if not files:
        return {}
    if is_remote(store):  # pyarrow's S3 filesystem fetches the files in parallel
        fs = pyarrow_filesystem(store)[0]
        dataset = ds.dataset([f.fs_path for f in files], format="parquet", filesystem=fs)
    else:
        dataset = ds.dataset([str(f) for f in files], format="parquet")
    table = dataset.to_table(columns=["slide_id", "patient_id"])
    return {
        s: p for s, p in zip(table["slide_id"].to_pylist(), table["patient_id"].to_pylist(), strict=True) if p
    }


def _plan(store: str | os.PathLike, *, encoder: str, tiling: str | None, by: str) -> _Plan:
    if by not in BAG_UNITS:
        raise ValueError(f"by={by!r}: use 'patient' (all tiles of a patient's slides) or 'slide'")
    root = store_path(store)
    tiling = resolve_tiling(root, encoder=encoder, tiling=tiling)
    folder = root / EMBEDDINGS_DIR / tiling / encoder
    paths = _list_parquet(folder)
    if not paths:
        raise StoreError(
            f"{folder} holds no embeddings files: run `slide2expr featurize` for encoder {encoder!r}"
        )
    patients = _slide_patients(root)
    files, unknown, empty = [], [], []
    ref: dict | None = None
    ref_path: Path | None = None
    for path in paths:
        md = read_parquet_metadata(path)
        meta = decode_metadata(md.metadata)
        slide_id = path.stem  # the file name is the slide id (embeddings_path)
        dim = _dim_of(md.schema.to_arrow_schema(), path)
        meta["dim"] = int(meta.get("dim") or dim)
        if int(meta["dim"]) != dim:
            raise StoreError(
                f"{path}: metadata says dim={meta['dim']} but the embedding column has {dim} values"
            )
        if ref is None:
            ref, ref_path = meta, path
        else:
            for key in ("dim", "weights_sha256", "encoder"):
                if meta.get(key) != ref.get(key):
                    raise StoreError(
                        f"encoder {encoder!r} at {tiling}: {path.name} has {key}={meta.get(key)!r} but "
                        f"{ref_path.name} has {key}={ref.get(key)!r}; embeddings from different weights or "
                        "dimensions must not be mixed — re-featurize the odd slides with --force or move them to "
                        "another encoder name"
                    )
        if md.num_rows == 0:  # featurize writes an empty file for a slide with no tissue: no bag from it
            empty.append(slide_id)
            continue
        patient = patients.get(slide_id) or tcga_patient(slide_id)
        if patient is None:
            unknown.append(slide_id)
            continue
        files.append(_SlideFile(slide_id, patient, path, md.num_rows, meta))
    if unknown:
        shown = ", ".join(unknown[:SHOWN_IDS]) + (" …" if len(unknown) > SHOWN_IDS else "")
        raise StoreError(
            f"{len(unknown)} slide(s) have no patient id (not a TCGA barcode and no patient_id in slides/): "
            f"{shown}; featurize them with a slide→patient CSV"
        )
    files.sort(key=lambda f: (f.patient_id, f.slide_id))
    bag_ids, groups, bag_of_file = [], [], []
    for f in files:
        key = f.patient_id if by == "patient" else f.slide_id
        if not bag_ids or bag_ids[-1] != key:
            bag_ids.append(key)
            groups.append(f.patient_id)
        bag_of_file.append(len(bag_ids) - 1)
    if not files:
        raise StoreError(
            f"{folder} holds only empty embeddings files (slides without tissue): {', '.join(empty)}"
        )
    meta = {k: v for k, v in ref.items() if k not in ("slide_id", "fingerprint", "config_hash")}
    meta["slides_without_tiles"] = empty
    return _Plan(
        tuple(files),
        tuple(bag_ids),
        tuple(groups),
        tuple(bag_of_file),
        int(ref["dim"]),
        encoder,
        tiling,
        meta,
    )


def _dim_of(schema: pa.Schema, path: Path) -> int:
    idx = schema.get_field_index("embedding")
    if idx < 0:
        raise StoreError(f"{path} has no 'embedding' column; is it an embeddings file?")
    t = schema.field(idx).type
    if not pa.types.is_fixed_size_list(t):
        raise StoreError(f"{path}: 'embedding' is {t}, expected a fixed-size list (featurize writes one)")
    return int(t.list_size)


def _embedding_leaf(pf: pq.ParquetFile) -> int:
    for i in range(pf.metadata.num_columns):
        if pf.schema.column(i).path.split(".")[0] == "embedding":
            return i
    raise StoreError(f"{pf} has no 'embedding' column")  # unreachable after _dim_of


def read_slide_file(
    path: Path, n_rows: int, out: np.ndarray, tile_ids: np.ndarray, x: np.ndarray, y: np.ndarray
) -> None:
    """Read one slide's embeddings file of ``n_rows`` rows; copy its embeddings into ``out`` (its ``(n_rows, d)``
    slot) and its ids/coords.

    Plain uncompressed float32 pages (what featurize writes) are read straight into ``out`` (:mod:`sql._pages`);
    anything else (float16, compressed, dictionary-coded, with nulls) goes through pyarrow. On an object store
    the footer is read first, then the embedding column's chunks in one ranged GET, parsed by the same page
    reader.
    """
    if isinstance(path, ObjectPath):
        with open_input(path, block_size=1 << 16) as src:
            pf = pq.ParquetFile(src)
            _check_rows(path, pf, n_rows)
            try:
                fast = read_plain_float_column_ranged(
                    lambda start, length: read_range(path, start, length),
                    pf,
                    _embedding_leaf(pf),
                    out.shape[1],
                    out,
                )
            except ValueError as e:
                raise StoreError(f"{path}: {e}; the file is damaged, re-featurize this slide") from None
            _copy_columns(path, pf, fast, out, tile_ids, x, y)
        return
    # one open file for the footer, the pages and pyarrow's reads (ids, coordinates, other layouts' embeddings):
    # featurize may replace the path by rename meanwhile. Memory-mapped: one copy fewer for pyarrow. Everything is
    # copied out before the map closes.
    with pa.memory_map(str(path)) as src:
        pf = pq.ParquetFile(src)
        _check_rows(path, pf, n_rows)
        try:
            fast = read_plain_float_column(src.fileno(), pf, _embedding_leaf(pf), out.shape[1], out)
        except ValueError as e:
            raise StoreError(f"{path}: {e}; the file is damaged, re-featurize this slide") from None
        _copy_columns(path, pf, fast, out, tile_ids, x, y)


def _check_rows(path: Path | ObjectPath, pf: pq.ParquetFile, n_rows: int) -> None:
    if pf.metadata.num_rows != n_rows:
        raise StoreError(
            f"{path} changed while it was read ({n_rows} rows planned, {pf.metadata.num_rows} found)"
        )


def _copy_columns(
    path: Path | ObjectPath,
    pf: pq.ParquetFile,
    fast: bool,
    out: np.ndarray,
    tile_ids: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
) -> None:
    """Copy ``pf``'s ids and coordinates (and, unless the page reader ``fast`` filled ``out``, its embeddings)."""
    cols = ["tile_id", "x", "y"] if fast else ["tile_id", "x", "y", "embedding"]
    table = pf.read(columns=cols, use_threads=False)
    if not fast:
        row = 0
        for chunk in table.column("embedding").chunks:
            if chunk.null_count:
                raise StoreError(
                    f"{path}: {chunk.null_count} null embedding(s); the file is damaged, re-featurize"
                )
            flat = chunk.flatten().to_numpy(zero_copy_only=False)
            n = len(chunk)
            np.copyto(out[row : row + n], flat.reshape(n, -1), casting="same_kind")
            row += n
    tile_ids[:] = table.column("tile_id").to_numpy()
    x[:] = table.column("x").to_numpy()
    y[:] = table.column("y").to_numpy()
    if len(tile_ids) > 1 and not np.all(tile_ids[1:] > tile_ids[:-1]):
        raise StoreError(
            f"{path}: rows are not in increasing tile_id order; the file was not written by featurize"
        )


def _scan(files: Sequence[_SlideFile], dim: int, *, n_threads: int | None) -> tuple[np.ndarray, ...]:
    counts = np.array([f.n_rows for f in files], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    n = int(starts[-1])
    features = np.empty((n, dim), dtype=np.float32)
    tile_ids = np.empty(n, dtype=np.int32)
    x = np.empty(n, dtype=np.int64)
    y = np.empty(n, dtype=np.int64)

    def work(i: int) -> None:
        s = slice(int(starts[i]), int(starts[i + 1]))
        read_slide_file(files[i].path, files[i].n_rows, features[s], tile_ids[s], x[s], y[s])

    threads = n_threads if n_threads is not None else min(MAX_READER_THREADS, os.cpu_count() or 1)
    if threads <= 1 or len(files) <= 1:
        for i in range(len(files)):
            work(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(len(files))))
    slide_ids = np.repeat(np.array([f.slide_id for f in files], dtype=object), counts)
    return features, tile_ids, x, y, slide_ids, starts


def plan_fingerprint(plan: _Plan) -> str:
    """Hash of everything the bag arrays depend on: each file's name, size, mtime, rows, patient, and the order."""
    h = hashlib.sha256()
    h.update(json.dumps([plan.tiling, plan.encoder, plan.dim, plan.meta.get("weights_sha256")]).encode())
    for f in plan.files:
        st = f.path.stat()
        h.update(
            json.dumps([f.slide_id, f.patient_id, f.path.name, st.st_size, st.st_mtime_ns, f.n_rows]).encode()
        )
    return h.hexdigest()[:24]


def _cache_root(store: str | os.PathLike, plan: _Plan) -> Path:
    return Path(store) / CACHE_DIR / plan.tiling / plan.encoder


def _write_cache(store: str | os.PathLike, plan: _Plan, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``features.npy`` + ``tiles.npz`` for the whole plan into ``<fingerprint>/``, atomically (dir rename).

    Older fingerprints of the same tiling/encoder are removed: the cache is derived, never the source of truth.
    """
    root = _cache_root(store, plan)
    root.mkdir(parents=True, exist_ok=True)
    final = root / plan_fingerprint(plan)
    tmp = root / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        np.save(tmp / "features.npy", arrays["features"])
        np.savez(tmp / "tiles.npz", tile_ids=arrays["tile_ids"], x=arrays["x"], y=arrays["y"])
        for name in ("features.npy", "tiles.npz"):
            with open(tmp / name, "rb+") as fh:
                os.fsync(fh.fileno())
        if not final.exists():  # same fingerprint, same content: a concurrent writer's copy is as good
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.exists():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():
        if old != final and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _read_cache(store: str | os.PathLike, plan: _Plan, *, mmap: bool) -> dict[str, np.ndarray] | None:
    """The cached arrays of the whole plan, or None when there is no cache for the current fingerprint."""
    folder = _cache_root(store, plan) / plan_fingerprint(plan)
    if not (folder / "features.npy").exists() or not (folder / "tiles.npz").exists():
        return None
    features = np.load(folder / "features.npy", mmap_mode="r" if mmap else None)
    n = sum(f.n_rows for f in plan.files)
    if features.shape != (n, plan.dim) or features.dtype != np.float32:
        del features
        shutil.rmtree(folder, ignore_errors=True)  # damaged or foreign: the caller rebuilds it
        return None
    with np.load(folder / "tiles.npz") as z:
        return {"features": features, "tile_ids": z["tile_ids"], "x": z["x"], "y": z["y"]}


def _scan_plan(
    store: str | os.PathLike,
    plan: _Plan,
    file_idx: Sequence[int],
    *,
    n_threads: int | None,
    cache: bool | str,
) -> tuple[np.ndarray, ...]:
    """Arrays for the files ``file_idx`` of ``plan``: from the Parquet files, or through the derived cache."""
    if cache not in CACHE_MODES:
        raise ValueError(
            f"cache={cache!r}: use False (read Parquet), True (cache, loaded into memory) or 'mmap'"
        )
    files = [plan.files[j] for j in file_idx]
    if not cache:
        return _scan(files, plan.dim, n_threads=n_threads)
    if is_remote(store):
        raise ValueError(
            f"cache={cache!r}: the bag cache is written beside a local store; {store} is on an object store, "
            "so read it with cache=False"
        )
    arrays = _read_cache(store, plan, mmap=cache == "mmap")
    if arrays is None:
        features, tile_ids, x, y, _, _ = _scan(plan.files, plan.dim, n_threads=n_threads)
        arrays = {"features": features, "tile_ids": tile_ids, "x": x, "y": y}
        _write_cache(store, plan, arrays)
    counts = np.array([f.n_rows for f in plan.files], dtype=np.int64)
    all_starts = np.concatenate([[0], np.cumsum(counts)])
    sel_counts = counts[list(file_idx)]
    starts = np.concatenate([[0], np.cumsum(sel_counts)])
    if list(file_idx) == list(range(len(plan.files))):
        out = arrays
    else:  # a subset (drop_missing): one gather into new arrays
        rows = np.concatenate(
            [np.arange(all_starts[j], all_starts[j + 1]) for j in file_idx] or [np.zeros(0, int)]
        )
        out = {k: v[rows] for k, v in arrays.items()}
    slide_ids = np.repeat(np.array([f.slide_id for f in files], dtype=object), sel_counts)
    return out["features"], out["tile_ids"], out["x"], out["y"], slide_ids, starts


def read_targets(store: str | os.PathLike, targets: str | os.PathLike) -> pa.Table:
    """The long targets table: a name under ``targets/`` or a path to a Parquet file in TARGETS_SCHEMA."""
    p = store_path(targets)
    if p.suffix != ".parquet" or not p.exists():
        p = store_path(store) / TARGETS_DIR / f"{targets}.parquet"
    if not p.exists():
        names = sorted(q.stem for q in _list_parquet(store_path(store) / TARGETS_DIR))
        raise StoreError(
            f"no targets named {str(targets)!r} in {store}; available: {', '.join(names) or 'none'} "
            "(import with `slide2expr targets import FILE --store S --name NAME`)"
        )
    return read_parquet_table(p)


def _pairing_settings(table: pa.Table) -> tuple[str, list[str] | None]:
    """``(pair_by, slide_types)`` recorded by the targets import; the finest pairing and every slide otherwise."""
    pairing = decode_metadata(table.schema.metadata).get("pairing") or {}
    return pairing.get("pair_by", "portion"), pairing.get("slide_types")


def _sample_type(sample: str) -> str | None:
    b = parse_tcga(sample)
    return None if b is None else b.sample_type


def _bag_values(samples: set[str], per_sample: pd.DataFrame, *, bag: str, n_genes: int) -> np.ndarray:
    """The mean of ``samples``' values (one sample type only) as ``(n_genes,)``; NaN without samples."""
    if not samples:
        return np.full(n_genes, np.nan)
    types = {_sample_type(s) for s in samples}
    if len(types) > 1:
        found = "; ".join(
            f"{sample_type_name(t)}: {', '.join(sorted(s for s in samples if _sample_type(s) == t))}"
            for t in sorted(types, key=str)
        )
        raise StoreError(
            f"bag {bag} pairs with samples of several sample types ({found}); a bag never averages across sample "
            "types: load one bag per slide (by='slide', --by slide), or import one sample type "
            "(`slide2expr targets import … --sample-types 01`)"
        )
    return per_sample.loc[sorted(samples)].mean(axis=0).to_numpy(dtype=np.float64)


def _target_matrix(
    table: pa.Table, *, genes: Sequence[str] | None, plan: _Plan
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...], dict, tuple[int, ...]]:
    """Bag-level targets by the pairing rule the targets import recorded (:func:`~slide2expr.contract.pair_slides`).

    Returns ``y`` ``(n_bags, n_genes)`` (a bag's value is the mean of the samples its slides pair with, per gene;
    NaN without any), the genes, the bags without values, info for ``Cohort.meta``, and the plan's files left out:
    slides that pair with no sample while other slides of their bag do.
    """
    all_genes = pc.unique(table["gene"]).to_pylist()  # order of first appearance
    if genes is not None:
        order_genes = list(genes)
        unknown = [g for g in order_genes if g not in set(all_genes)]
        if unknown:
            raise StoreError(f"gene(s) not in the targets: {', '.join(unknown)}")
    else:
        order_genes = all_genes
    patients = list(dict.fromkeys(plan.groups))
    all_patients = set(pc.unique(table["patient_id"]).to_pylist())
    mask = pc.and_(
        pc.is_in(table["gene"], value_set=pa.array(order_genes, pa.string())),
        pc.is_in(table["patient_id"], value_set=pa.array(patients, pa.string())),
    )
    columns = ["sample_id", "patient_id", "gene", "value"]
    has_types = "gene_type" in table.column_names and table["gene_type"].null_count < len(table)
    df = table.select(columns + ["gene_type"] * has_types).filter(mask).to_pandas()
    per_sample = (
        df.groupby(["sample_id", "gene"], sort=False)["value"].mean().unstack("gene")
        if len(df)
        else pd.DataFrame(index=pd.Index([], name="sample_id"))
    ).reindex(columns=order_genes)
    pair_by, slide_types = _pairing_settings(table)
    pairs = df[["sample_id", "patient_id"]].drop_duplicates("sample_id")
    sample_patient = dict(zip(pairs["sample_id"], pairs["patient_id"], strict=True))
    pairing = pair_slides(
        {f.slide_id: f.patient_id for f in plan.files},
        sample_patient,
        pair_by=pair_by,
        slide_types=slide_types,
    )
    bag_samples: list[set[str]] = [set() for _ in plan.bag_ids]
    for j, f in enumerate(plan.files):
        bag_samples[plan.bag_of_file[j]].update(pairing.samples_of.get(f.slide_id, ()))
    excluded = tuple(
        j
        for j, f in enumerate(plan.files)
        if f.slide_id not in pairing.samples_of and bag_samples[plan.bag_of_file[j]]
    )
    y = np.stack(
        [
            _bag_values(ss, per_sample, bag=plan.bag_ids[b], n_genes=len(order_genes))
            for b, ss in enumerate(bag_samples)
        ]
    ).reshape(len(plan.bag_ids), len(order_genes))
    missing = tuple(b for b, row in zip(plan.bag_ids, y, strict=True) if np.all(np.isnan(row)))
    info = {
        "patients_with_several_samples_averaged": sorted(
            plan.bag_ids[b] for b, ss in enumerate(bag_samples) if len(ss) > 1
        ),
        "targets_without_tiles": sorted(all_patients - set(patients)),
        "pairing": {"pair_by": pair_by, "slide_types": slide_types},
        "slides_not_paired": {
            plan.files[j].slide_id: pairing.unpaired.get(plan.files[j].slide_id, "") for j in excluded
        },
    }
    if has_types:
        types = df.drop_duplicates("gene").set_index("gene")["gene_type"]
        info["gene_types"] = {g: types.get(g) for g in order_genes}
    return y, tuple(order_genes), missing, info, excluded


def _targets_for_plan(
    plan: _Plan, table: pa.Table | None, genes: Sequence[str] | None, *, stacklevel: int
) -> tuple[np.ndarray | None, tuple[str, ...], tuple[str, ...], dict, tuple[int, ...]]:
    if table is None:
        if genes is not None:
            raise ValueError("genes= needs targets=: name the targets table to take the genes from")
        return None, (), (), {}, ()
    y, names, missing, info, excluded = _target_matrix(table, genes=genes, plan=plan)
    unpaired = info["slides_not_paired"]
    if unpaired:
        shown = ", ".join(f"{s} ({why})" for s, why in list(unpaired.items())[:SHOWN_IDS])
        warnings.warn(
            f"{len(unpaired)} slide(s) pair with none of their patient's samples and are left out of its bag: "
            + shown
            + (" …" if len(unpaired) > SHOWN_IDS else ""),
            UnpairedSlidesWarning,
            stacklevel=stacklevel + 1,
        )
    return y, names, missing, info, excluded


def _warn_missing(missing: Sequence[str], *, drop_missing: bool, stacklevel: int) -> None:
    if not missing:
        return
    shown = ", ".join(missing[:SHOWN_IDS]) + (" …" if len(missing) > SHOWN_IDS else "")
    action = "dropped (drop_missing=True)" if drop_missing else "kept with NaN targets"
    warnings.warn(
        f"{len(missing)} bag(s) have tiles but no targets, {action}: {shown}",
        MissingTargetsWarning,
        stacklevel=stacklevel + 1,
    )


def _build(
    plan: _Plan,
    file_idx: Sequence[int],
    *,
    by: str,
    y_all: np.ndarray | None,
    genes: tuple[str, ...],
    missing: tuple[str, ...],
    info: dict,
    drop_missing: bool,
    n_threads: int | None,
    store: str | os.PathLike,
    cache: bool | str = False,
) -> Cohort:
    """Scan the files ``file_idx`` of ``plan`` (whole bags, in plan order) into a Cohort."""
    chunk_bags = {plan.bag_ids[plan.bag_of_file[j]] for j in file_idx}
    chunk_missing = tuple(b for b in missing if b in chunk_bags)
    if drop_missing:
        file_idx = [j for j in file_idx if plan.bag_ids[plan.bag_of_file[j]] not in set(chunk_missing)]
    features, tile_ids, x, y, slide_ids, starts = _scan_plan(
        store, plan, file_idx, n_threads=n_threads, cache=cache
    )
    file_bag = np.asarray([plan.bag_of_file[j] for j in file_idx], dtype=np.int64)
    first = (
        np.flatnonzero(np.r_[True, file_bag[1:] != file_bag[:-1]]) if len(file_bag) else np.zeros(0, np.int64)
    )
    offsets = np.append(starts[first], starts[-1]).astype(np.int64)
    bags = file_bag[first]
    bag_ids = np.array([plan.bag_ids[b] for b in bags], dtype=object)
    meta = dict(plan.meta)
    meta.update(info)
    return Cohort(
        features=features,
        offsets=offsets,
        bag_ids=bag_ids,
        groups=np.array([plan.groups[b] for b in bags], dtype=object),
        slide_ids=slide_ids,
        tile_ids=tile_ids,
        x=x,
        y=y,
        y_true=None if y_all is None else y_all[bags],
        genes=genes,
        encoder=plan.encoder,
        tiling=plan.tiling,
        by=by,
        meta=meta,
        missing_targets=chunk_missing,
    )


def load_cohort(
    store: str | os.PathLike,
    *,
    encoder: str,
    tiling: str | None = None,
    targets: str | os.PathLike | None = None,
    by: str = "patient",
    genes: Sequence[str] | None = None,
    drop_missing: bool = False,
    n_threads: int | None = None,
    cache: bool | str = False,
) -> Cohort:
    """Load every bag of ``encoder``'s embeddings into one flat ``(N, d)`` float32 array.

    One ordered scan: slides sorted by (patient_id, slide_id), rows of a slide in ``tile_id`` order, each file's
    ``embedding`` column copied straight into its slot of a preallocated array; bags are views (no per-bag copies).

    Parameters
    ----------
    store
        The store directory.
    encoder
        Encoder name (a folder under ``embeddings/<tiling>/``).
    tiling
        Tiling name; ``None`` picks the only tiling that holds ``encoder``.
    targets
        Name of ``targets/<name>.parquet`` (or a path to such a file); ``None`` loads no targets (``y_true`` None).
    by
        ``"patient"`` (one bag per patient: all tiles of all its slides, as in Graziani et al. 2022) or ``"slide"``.
    genes
        Genes (columns of ``y_true``) in this order; ``None`` takes every gene in the targets, in stored order.
    drop_missing
        Bags with tiles but no target values are kept with NaN rows of ``y_true`` (default) or dropped. Either way
        they are listed in ``Cohort.missing_targets`` and a :class:`MissingTargetsWarning` is issued.
    n_threads
        Reader threads (default: up to :data:`MAX_READER_THREADS`).
    cache
        ``False`` reads the Parquet files. ``True`` keeps a derived copy of the flat arrays under
        ``STORE/.cache/bags/<tiling>/<encoder>/<fingerprint>/`` (``features.npy``, ``tiles.npz``; written on first
        use, read back at ``numpy.fromfile`` speed); ``"mmap"`` memory-maps it read-only instead of loading it.
        The fingerprint covers every embeddings file's name, size, mtime and rows and the slide→patient order,
        so any change to the store rebuilds it; older fingerprints are deleted. Never the source of truth.

    Returns
    -------
    Cohort
        ``features`` (N, d) float32; ``offsets`` (n_bags + 1,); ``y_true`` (n_bags, n_genes) float64 of the stored
        (transformed) values. Bags get targets by the pairing rule the targets import recorded
        (:func:`~slide2expr.contract.pair_slides`): each slide pairs with the samples of its patient of the same
        sample type (and vial and portion where both ids carry them; only slides of the recorded ``slide_types``);
        a bag's value is the mean of the samples its slides pair with (bags averaging several samples are listed in
        ``meta["patients_with_several_samples_averaged"]``), never across sample types (a :class:`StoreError`);
        a slide that pairs with no sample while other slides of its bag do is left out of the bag (listed with the
        reason in ``meta["slides_not_paired"]``, with an :class:`UnpairedSlidesWarning`). ``meta["gene_types"]``
        maps each gene to its GENCODE type when the targets carry one (GDC STAR-counts).

    Raises
    ------
    StoreError
        No such encoder/tiling, files with different ``weights_sha256`` or ``dim`` under one encoder name, slides
        with no patient id, unknown genes.
    """
    plan = _plan(store, encoder=encoder, tiling=tiling, by=by)
    table = read_targets(store, targets) if targets is not None else None
    y_all, gene_names, missing, info, excluded = _targets_for_plan(plan, table, genes, stacklevel=2)
    _warn_missing(missing, drop_missing=drop_missing, stacklevel=2)
    left_out = set(excluded)
    return _build(
        plan,
        [j for j in range(len(plan.files)) if j not in left_out],
        by=by,
        y_all=y_all,
        genes=gene_names,
        missing=missing,
        info=info,
        drop_missing=drop_missing,
        n_threads=n_threads,
        store=store,
        cache=cache,
    )


def iter_cohort(
    store: str | os.PathLike,
    *,
    encoder: str,
    tiling: str | None = None,
    targets: str | os.PathLike | None = None,
    by: str = "patient",
    genes: Sequence[str] | None = None,
    drop_missing: bool = False,
    patients_per_chunk: int = 1,
    n_threads: int | None = None,
) -> Iterator[Cohort]:
    """Stream the cohort ``patients_per_chunk`` patients at a time, for cohorts larger than memory.

    Yields :class:`Cohort` objects with the same fields as :func:`load_cohort` (same order, same gene columns),
    each holding the bags of the next ``patients_per_chunk`` patients (``by="slide"``: all slides of those
    patients). A bag never spans two chunks. Missing targets are reported once, before the first chunk.
    """
    if patients_per_chunk < 1:
        raise ValueError(f"patients_per_chunk={patients_per_chunk}: must be ≥ 1")
    plan = _plan(store, encoder=encoder, tiling=tiling, by=by)
    table = read_targets(store, targets) if targets is not None else None
    y_all, gene_names, missing, info, excluded = _targets_for_plan(plan, table, genes, stacklevel=2)
    _warn_missing(missing, drop_missing=drop_missing, stacklevel=2)
    by_patient: dict[str, list[int]] = {}
    left_out = set(excluded)
    for j, f in enumerate(plan.files):
        if j not in left_out:
            by_patient.setdefault(f.patient_id, []).append(j)
    patients = list(by_patient)
    for i in range(0, len(patients), patients_per_chunk):
        idx = [j for p in patients[i : i + patients_per_chunk] for j in by_patient[p]]
        cohort = _build(
            plan,
            idx,
            by=by,
            y_all=y_all,
            genes=gene_names,
            missing=missing,
            info=info,
            drop_missing=drop_missing,
            n_threads=n_threads,
            store=store,
        )
        if cohort.n_bags:
            yield cohort
