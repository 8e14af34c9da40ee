"""A TCGA-sized cohort on one machine: a benchmark store larger than memory, and what each stage costs on it.

``write`` writes a valid store straight from the contract (``init_store``, ``write_table_atomic``, the slides,
tiles and embeddings schemas, the Parquet metadata featurize writes), without slides: by default 600 patients
(a third with two slides, 800 slides), tile counts per slide between 2,000 and 30,000 (median about 8,000; a
mixture of small sections and whole resections), 1,536-d embeddings in float16 (float32 with ``--dtype float32``),
tiles on a grid (level-0 px of 224-px tiles at 0.5 µm/px on 0.25 µm/px slides), and targets for the paper's 35
genes imported through ``slide2expr.regress.import_targets``. About 9.3 M tiles, 28.6 GB of float16 embeddings.

The planted signal (``STORE/.cohort_scale/truth.json`` records it):

- each tile belongs to a tissue compartment of :data:`slide2expr.synth.TISSUE_COMPARTMENTS`, laid out in blocks of
  6 × 6 tiles drawn from the patient's composition, with the two hotspot compartments (``tls``, ``high_grade``) as
  blobs covering 0–10 % of the tissue;
- a tile's embedding is its compartment's centroid, plus within-compartment variation in a low-rank basis of its
  own (spatially correlated through its 6 × 6 block), plus variation shared by every compartment, a per-slide
  stain offset, and isotropic noise;
- each gene follows :data:`slide2expr.synth.GENE_DRIVERS`: ``compartment`` genes the patient's share of a main
  compartment (a tissue-wide shift of the pooled embedding), ``hotspot`` genes the share of a hotspot compartment
  (a small fraction of tiles), ``noise`` genes nothing; drivers explain 70–85 % of each driven gene's variance.

Every slide's files are written in featurize's order (slide row, tiles, then embeddings: the commit marker), each
atomically; a rerun skips finished slides whose embeddings carry this configuration's hash (resumable), and
removes the hidden temporaries a killed run left. The write is measured: embedding GB/s and tiles/s.

Run::

    python benchmarks/cohort_scale.py write --out /work/scale-store          # the full store (check df -h first)
    python benchmarks/cohort_scale.py write --out /tmp/s --patients 30       # a small store in seconds
    python benchmarks/cohort_scale.py compare --store /work/scale-store --save # compare read on access

``compare`` runs ``regress.compare`` of mil, lgbm and ridge (5 folds; MIL reads 512 tiles of a bag per step) on
the store read on access, in a fresh process, and records wall time and peak RSS per stage and the pooled r per
planted gene kind; ``--in-memory`` runs it again with the cohort loaded, for the peak RSS beside it (small stores).

``explain`` writes a compare run for the store without fitting (``mil`` and the floor, 5 folds, predictions from the
targets, and held-out attention for 4 genes per fold over every tile, as compare's memory bound records it at this
scale; embeddings are not read, so a ``--dim 64`` store serves), then runs explain on it at ``slide2expr explain``'s
defaults (above 200 slides: maps, hotspots and detections for the map slides only), again with ``--no-gallery``,
again with ``--genes`` the genes that have attention, and ``slide2expr report``, each in a fresh process: wall time and peak RSS, seconds per stage, what was written and
the report's size (target ≤ 20 MB)::

    python benchmarks/cohort_scale.py write --out /work/scale64 --dim 64
    python benchmarks/cohort_scale.py explain --store /work/scale64 --save   # the run in /work/scale64_run

The store is never written inside the repository; delete it when done (``rm -rf DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slide2expr.contract import (  # noqa: E402
    SLIDES_SCHEMA,
    STORE_FORMAT,
    TILES_SCHEMA,
    Tiling,
    embeddings_path,
    embeddings_schema,
    init_store,
    package_version,
    read_metadata,
    slide_path,
    tiles_path,
    write_table_atomic,
)
from slide2expr.synth import GENE_DRIVERS, GENES, HOTSPOT_COMPARTMENTS, MAIN_COMPARTMENTS  # noqa: E402
from slide2expr.synth import TISSUE_COMPARTMENTS as COMPARTMENTS  # noqa: E402

#: Bumped when the generator changes what it writes (part of the configuration hash: resume redoes old slides).
GENERATOR_VERSION = 1
TILING = Tiling(mpp=0.5, tile_px=224)
SLIDE_MPP = 0.25  # level 0 of a 40x scan
TILE_PX0 = round(TILING.tile_px * TILING.mpp / SLIDE_MPP)  # 448 level-0 px per tile
MARGIN_PX0 = 4 * TILE_PX0
TARGETS_NAME = "expression"
TRUTH_DIR = ".cohort_scale"
RESULTS = ROOT / "benchmarks" / "results" / "cohort_scale.json"
#: Tile counts per slide: a mixture of small sections and whole resections, each log-normal, truncated to
#: [MIN_TILES, MAX_TILES]; (share, median, sigma) per component. 800 slides give 9.33 M tiles, median 8,090.
TILE_MIXTURE = ((0.62, 5200.0, 0.5), (0.38, 21000.0, 0.22))
MIN_TILES, MAX_TILES = 2000, 30000
BLOCK = 6  # tiles per side of a compartment block
#: Embedding design: centroid norm, within-compartment rank and scale, shared rank and scale, stain offset sd,
#: isotropic (uniform) noise sd per dimension, block share of a tile's within-compartment latent.
CENTROID_NORM, RANK_OWN, SCALE_OWN, RANK_SHARED, SCALE_SHARED = 6.0, 24, 1.5, 32, 1.0
STAIN_SD, NOISE_SD, BLOCK_SHARE = 0.5, 0.08, 0.6
COMPOSITION_ALPHA = {"tumour": 3.0, "stroma": 3.0, "lymphocytes": 1.2, "mucin": 0.8, "necrosis": 0.8}
HOTSPOT_ZERO_P, HOTSPOT_MIN, HOTSPOT_MAX = 0.15, 0.005, 0.10
R2_RANGE = (0.70, 0.85)


@dataclass(frozen=True)
class Design:
    """Everything that fixes the store's content (its hash is each file's ``config_hash``)."""

    patients: int
    dim: int
    dtype: str
    seed: int
    tile_scale: float

    @property
    def encoder(self) -> str:
        return f"synthetic-{self.dim}"

    @property
    def config(self) -> dict:
        return {"generator": GENERATOR_VERSION, "dim": self.dim, "dtype": self.dtype, "seed": self.seed,
                "tile_scale": self.tile_scale, "tiling": TILING.name}  # fmt: skip

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def weights_sha256(self) -> str:
        return hashlib.sha256(f"cohort_scale basis seed={self.seed} dim={self.dim}".encode()).hexdigest()


@dataclass(frozen=True)
class SlideSpec:
    slide_id: str
    patient_id: str
    index: int
    n_tiles: int


def _truncated_lognormal(n: int, median: float, sigma: float) -> np.ndarray:
    """``n`` evenly spaced quantiles of a log-normal truncated to [MIN_TILES, MAX_TILES] (deterministic)."""
    nd = NormalDist()
    lo = nd.cdf((np.log(MIN_TILES) - np.log(median)) / sigma)
    hi = nd.cdf((np.log(MAX_TILES) - np.log(median)) / sigma)
    q = lo + (np.arange(n) + 0.5) / n * (hi - lo)
    return np.exp(np.log(median) + sigma * np.array([nd.inv_cdf(float(v)) for v in q]))


def cohort_slides(design: Design) -> list[SlideSpec]:
    """The cohort's slides in patient order: every third patient has two slides; tile counts from
    :data:`TILE_MIXTURE`, shuffled by the seed and scaled by ``tile_scale``."""
    ids = []
    for p in range(design.patients):
        pid = f"TCGA-CS-{p + 1:04d}"
        ids += [(f"{pid}-01Z-00-DX{s + 1}", pid) for s in range(2 if p % 3 == 0 else 1)]
    n = len(ids)
    sizes = [round(share * n) for share, _, _ in TILE_MIXTURE[:-1]]
    sizes.append(n - sum(sizes))
    counts = np.concatenate(
        [_truncated_lognormal(k, m, s) for k, (_, m, s) in zip(sizes, TILE_MIXTURE, strict=True)]
    )
    counts = np.random.default_rng([design.seed, 1]).permutation(counts)
    counts = np.maximum(1, np.round(counts * design.tile_scale)).astype(int)
    return [SlideSpec(sid, pid, i, int(c)) for i, ((sid, pid), c) in enumerate(zip(ids, counts, strict=True))]


def patient_composition(design: Design, patient: int) -> np.ndarray:
    """Shares of :data:`COMPARTMENTS` the patient's tissue is drawn from (hotspots carved out of the rest)."""
    rng = np.random.default_rng([design.seed, 2, patient])
    main = rng.dirichlet([COMPOSITION_ALPHA[c] for c in MAIN_COMPARTMENTS])
    hot = [
        0.0 if rng.random() < HOTSPOT_ZERO_P else rng.uniform(HOTSPOT_MIN, HOTSPOT_MAX)
        for _ in HOTSPOT_COMPARTMENTS
    ]
    return np.concatenate([main * (1.0 - sum(hot)), hot])


def slide_layout(design: Design, spec: SlideSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grid columns, rows, compartment labels and 6 × 6 block ids of a slide's tiles, in tile_id (row-major) order.

    The tissue is one bumpy ellipse of ``n_tiles`` grid cells; main compartments fill whole blocks, drawn from the
    patient's composition; each hotspot compartment takes the tiles nearest a few random centres.
    """
    rng = np.random.default_rng([design.seed, 3, spec.index])
    n = spec.n_tiles
    side = int(np.ceil(np.sqrt(n / 0.55))) + 2
    gy, gx = np.divmod(np.arange(side * side), side)
    dx, dy = gx - side / 2, (gy - side / 2) / rng.uniform(0.6, 1.0)
    ang = np.arctan2(dy, dx)
    bump = 1.0 + sum(rng.uniform(0, 0.08) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    keep = np.sort(np.argsort(np.hypot(dx, dy) / bump, kind="stable")[:n])
    col, row = gx[keep], gy[keep]
    nb = side // BLOCK + 1
    block = (row // BLOCK) * nb + col // BLOCK
    comp = patient_composition(design, int(spec.patient_id.rsplit("-", 1)[1]) - 1)
    main = comp[: len(MAIN_COMPARTMENTS)] / comp[: len(MAIN_COMPARTMENTS)].sum()
    labels = rng.choice(len(MAIN_COMPARTMENTS), size=nb * nb, p=main)[block].astype(np.int8)
    for h in range(len(HOTSPOT_COMPARTMENTS)):
        m = int(round(comp[len(MAIN_COMPARTMENTS) + h] * n))
        if m == 0:
            continue
        centres = rng.choice(n, size=1 + m // 400, replace=False)
        d = np.min(np.hypot(col[:, None] - col[centres], row[:, None] - row[centres]), axis=1)
        labels[np.argsort(d, kind="stable")[:m]] = len(MAIN_COMPARTMENTS) + h
    return col.astype(np.int64), row.astype(np.int64), labels, block


class Basis:
    """The fixed directions of the embedding space (from the seed): centroids, within-compartment bases, shared
    basis, and their scales. Hotspot centroids lie near their parent's (tls near lymphocytes, high_grade near
    tumour)."""

    def __init__(self, design: Design):
        rng = np.random.default_rng([design.seed, 4])
        d = design.dim
        unit = rng.standard_normal((len(COMPARTMENTS), d))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        parent = {"tls": "lymphocytes", "high_grade": "tumour"}
        for h, p in parent.items():
            i, j = COMPARTMENTS.index(h), COMPARTMENTS.index(p)
            unit[i] = 0.7 * unit[j] + 0.71 * unit[i]
        self.centroids = (CENTROID_NORM * unit).astype(np.float32)
        decay = lambda r, s: (s * (np.arange(r) + 1.0) ** -0.5).astype(np.float32)  # noqa: E731
        self.own = (rng.standard_normal((len(COMPARTMENTS), RANK_OWN, d)) / np.sqrt(d)).astype(np.float32)
        self.own *= decay(RANK_OWN, SCALE_OWN)[None, :, None]
        self.shared = (rng.standard_normal((RANK_SHARED, d)) / np.sqrt(d)).astype(np.float32)
        self.shared *= decay(RANK_SHARED, SCALE_SHARED)[:, None]


def slide_embeddings(
    design: Design, basis: Basis, spec: SlideSpec, labels: np.ndarray, block: np.ndarray
) -> np.ndarray:
    """``(n_tiles, dim)`` float32 embeddings of one slide (see the module docstring)."""
    rng = np.random.default_rng([design.seed, 5, spec.index])
    n, d = len(labels), design.dim
    emb = rng.random((n, d), dtype=np.float32)  # uniform noise of sd NOISE_SD: 8× cheaper than normal draws
    emb -= 0.5
    emb *= np.float32(NOISE_SD * np.sqrt(12.0))
    stain = rng.standard_normal(RANK_SHARED, dtype=np.float32) * STAIN_SD
    z = rng.standard_normal((n, RANK_SHARED), dtype=np.float32) + stain
    emb += z @ basis.shared
    _, block_of_tile = np.unique(block, return_inverse=True)
    z_block = rng.standard_normal((int(block_of_tile.max()) + 1, RANK_OWN), dtype=np.float32)
    other = np.sqrt(1.0 - BLOCK_SHARE**2, dtype=np.float32)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        zc = BLOCK_SHARE * z_block[block_of_tile[idx]] + other * rng.standard_normal(
            (len(idx), RANK_OWN), dtype=np.float32
        )
        emb[idx] += zc @ basis.own[c] + basis.centroids[c]
    return emb


# ---- writing ---------------------------------------------------------------------------------------------------


def _file_meta(design: Design, spec: SlideSpec, kind: str) -> dict:
    """The ``slide2expr.*`` metadata featurize writes for ``kind`` (slides, tiles, embeddings)."""
    meta = {
        "format": STORE_FORMAT,
        "version": package_version(),
        "kind": kind,
        "slide_id": spec.slide_id,
        "tiling": TILING.name,
        "tiling_params": {**TILING.as_dict(), "min_tissue": 0.5, "tissue_mpp": 8.0, "tissue_version": 0},
        "fingerprint": _fingerprint(design, spec),
        "config_hash": design.config_hash,
    }
    if kind in ("embeddings", "slides"):
        meta.update(
            {
                "encoder": design.encoder,
                "encoder_spec": {
                    "name": design.encoder,
                    "architecture": "synthetic (benchmarks/cohort_scale.py)",
                    "dim": design.dim,
                    "output_mode": "synthetic",
                    "preprocessing": None,
                    "licence": "CC0-1.0",
                    "out_px": TILING.tile_px,
                    "precision": design.dtype,
                    "compiled": False,
                },
                "weights_sha256": design.weights_sha256,
                "dim": design.dim,
                "dtype": design.dtype,
            }
        )
    return meta


def _fingerprint(design: Design, spec: SlideSpec) -> dict:
    head = hashlib.sha256(f"{design.config_hash}/{spec.slide_id}".encode()).hexdigest()
    return {"size": spec.n_tiles * TILE_PX0 * TILE_PX0 // 40, "mtime_ns": 0, "head_sha256": head}


def _slide_row(design: Design, spec: SlideSpec, col: np.ndarray, row: np.ndarray, seconds: float) -> pa.Table:
    fp = _fingerprint(design, spec)
    values = {
        "slide_id": spec.slide_id,
        "patient_id": spec.patient_id,
        "path": f"/synthetic/cohort_scale/{spec.slide_id}.svs",
        "file_size": fp["size"],
        "file_mtime_ns": fp["mtime_ns"],
        "head_sha256": fp["head_sha256"],
        "vendor": "synthetic",
        "width": int(col.max() + 1) * TILE_PX0 + 2 * MARGIN_PX0,
        "height": int(row.max() + 1) * TILE_PX0 + 2 * MARGIN_PX0,
        "mpp_x": SLIDE_MPP,
        "mpp_y": SLIDE_MPP,
        "mpp_source": "metadata",
        "objective_power": 40.0,
        "levels": 4,
        "status": "ok",
        "error": None,
        "n_tiles": spec.n_tiles,
        "tissue_area_mm2": spec.n_tiles * (TILE_PX0 * SLIDE_MPP / 1000) ** 2,
        "tiling": TILING.name,
        "encoder": design.encoder,
        "seconds_read": 0.0,
        "seconds_total": round(seconds, 4),
        "featurized_at": datetime.now(timezone.utc),
    }
    return pa.Table.from_pylist([values], schema=SLIDES_SCHEMA)


def _paths(store: Path, design: Design, sid: str) -> tuple[Path, Path, Path]:
    return (
        slide_path(store, sid),
        tiles_path(store, TILING, sid),
        embeddings_path(store, TILING, design.encoder, sid),
    )


def is_done(store: Path, design: Design, spec: SlideSpec) -> bool:
    """Whether the slide's three files exist and its embeddings carry this design's hash."""
    sp, tp, ep = _paths(store, design, spec.slide_id)
    if not (sp.is_file() and tp.is_file() and ep.is_file()):
        return False
    try:
        return read_metadata(ep).get("config_hash") == design.config_hash
    except (OSError, pa.ArrowInvalid):
        return False


def write_one(store: Path, design: Design, basis: Basis, spec: SlideSpec) -> int:
    """Write the slide's row, tiles and (last) embeddings; return the embeddings file's size in bytes."""
    t0 = time.perf_counter()
    sp, tp, ep = _paths(store, design, spec.slide_id)
    col, row, labels, block = slide_layout(design, spec)
    emb = slide_embeddings(design, basis, spec, labels, block)
    n = spec.n_tiles
    x, y = col * TILE_PX0 + MARGIN_PX0, row * TILE_PX0 + MARGIN_PX0
    ids = pa.array(np.arange(n, dtype=np.int32))
    sid = pa.array([spec.slide_id] * n, pa.string())
    write_table_atomic(_slide_row(design, spec, col, row, time.perf_counter() - t0), sp,
                       metadata=_file_meta(design, spec, "slides"))  # fmt: skip
    tiles = pa.Table.from_arrays(
        [sid, ids, pa.array(x), pa.array(y), pa.array(np.full(n, TILE_PX0, np.int64)),
         pa.array(np.full(n, TILE_PX0, np.int64)), pa.array(np.ones(n, np.float32))],
        schema=TILES_SCHEMA,
    )  # fmt: skip
    write_table_atomic(tiles, tp, metadata=_file_meta(design, spec, "tiles"))
    schema = embeddings_schema(design.dim, design.dtype)
    flat = emb.astype(design.dtype, copy=False).reshape(-1)
    del emb
    etype = schema.field("embedding").type
    rows = max(1, (16 << 20) // (design.dim * flat.itemsize))  # chunks keep the writer's level buffers small
    col_emb = pa.chunked_array(
        [pa.FixedSizeListArray.from_arrays(pa.array(flat[i * design.dim : (i + rows) * design.dim]), type=etype)
         for i in range(0, n, rows)],
        type=etype,
    )  # fmt: skip
    table = pa.Table.from_arrays([sid, ids, pa.array(x), pa.array(y), col_emb], schema=schema)
    write_table_atomic(table, ep, metadata=_file_meta(design, spec, "embeddings"))
    return ep.stat().st_size


def patient_fractions(design: Design, slides: list[SlideSpec]) -> dict[str, np.ndarray]:
    """patient_id → realised share of its tiles (all slides) in each compartment."""
    counts: dict[str, np.ndarray] = {}
    for spec in slides:
        _, _, labels, _ = slide_layout(design, spec)
        c = counts.setdefault(spec.patient_id, np.zeros(len(COMPARTMENTS)))
        c += np.bincount(labels, minlength=len(COMPARTMENTS))
    return {p: c / c.sum() for p, c in counts.items()}


def expression(design: Design, fractions: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, dict]:
    """Patients, ``(n_patients, 35)`` log1p expression, and the per-gene model (kind, drivers, r2)."""
    rng = np.random.default_rng([design.seed, 6])
    patients = sorted(fractions)
    F = np.stack([fractions[p] for p in patients])
    Y = np.empty((len(patients), len(GENES)))
    model = {}
    for j, g in enumerate(GENES):
        drivers, _ = GENE_DRIVERS[g]
        mean_log = rng.uniform(2.5, 6.0)
        noise = rng.standard_normal(len(patients))
        if drivers:
            signal = F[:, [COMPARTMENTS.index(c) for c in drivers]] @ np.array(list(drivers.values()))
            signal = (signal - signal.mean()) / (signal.std() or 1.0) * rng.uniform(0.5, 0.9)
            r2 = rng.uniform(*R2_RANGE)
            noise *= signal.std() * np.sqrt((1 - r2) / r2)
            kind = "hotspot" if any(c in HOTSPOT_COMPARTMENTS for c in drivers) else "compartment"
        else:
            signal, r2, kind = np.zeros(len(patients)), 0.0, "noise"
            noise *= rng.uniform(0.4, 0.8)
        Y[:, j] = np.clip(mean_log + signal + noise, 0.0, None)
        model[g] = {"kind": kind, "drivers": list(drivers), "r2_design": round(float(r2), 4)}
    return patients, Y, model


def write_targets(store: Path, design: Design, slides: list[SlideSpec]) -> dict:
    """Import the expression table through ``regress.import_targets`` and write ``.cohort_scale/truth.json``."""
    from slide2expr.regress import import_targets

    patients, Y, model = expression(design, patient_fractions(design, slides))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "expression.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", *GENES])
            for p, row in zip(patients, np.expm1(Y), strict=True):
                w.writerow([f"{p}-01A", *(f"{v:.6g}" for v in row)])
        import_targets(path, store=store, name=TARGETS_NAME, orientation="samples-rows", transform="log1p",
                       overwrite=True)  # fmt: skip
    truth = {"design": design.config, "encoder": design.encoder, "tiling": TILING.name, "targets": TARGETS_NAME,
             "compartments": list(COMPARTMENTS), "genes": model}  # fmt: skip
    (store / TRUTH_DIR).mkdir(exist_ok=True)
    (store / TRUTH_DIR / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


class Progress:
    """A one-line progress report on stderr: done/total, GB, GB/s, ETA (at most every ``every`` seconds)."""

    def __init__(self, total_bytes: float, n: int, *, what: str, every: float = 5.0):
        self.total, self.n, self.what, self.every = total_bytes, n, what, every
        self.done_bytes, self.done, self.t0, self.last = 0.0, 0, time.perf_counter(), 0.0
        self.lock = threading.Lock()

    def add(self, nbytes: float) -> None:
        with self.lock:
            self.done_bytes += nbytes
            self.done += 1
            now = time.perf_counter()
            if now - self.last < self.every and self.done < self.n:
                return
            self.last = now
            rate = self.done_bytes / max(now - self.t0, 1e-9)
            eta = (self.total - self.done_bytes) / rate if rate else float("nan")
            print(f"{self.what}: {self.done}/{self.n}  {self.done_bytes / 1e9:.1f}/{self.total / 1e9:.1f} GB  "
                  f"{rate / 1e9:.2f} GB/s  ETA {eta:.0f} s", file=sys.stderr, flush=True)  # fmt: skip


def write_store(out: Path, design: Design, *, workers: int = 2) -> dict:
    """Write (or finish) the benchmark store at ``out``; return its figures."""
    slides = cohort_slides(design)
    itemsize = np.dtype(design.dtype).itemsize
    total = sum(s.n_tiles for s in slides) * design.dim * itemsize
    store = init_store(out)
    todo = [s for s in slides if not is_done(store, design, s)]
    need = sum(s.n_tiles for s in todo) * design.dim * itemsize * 1.02
    free = shutil.disk_usage(store).free
    if need > free:
        raise SystemExit(f"{store}: {need / 1e9:.1f} GB still to write but {free / 1e9:.1f} GB free: "
                         "free space or use --patients/--tile-scale")  # fmt: skip
    for folder in {p.parent for p in _paths(store, design, slides[0].slide_id)}:
        for t in folder.glob(".*.tmp") if folder.is_dir() else ():  # a killed run's hidden temporaries
            with contextlib.suppress(OSError):
                t.unlink()
    basis = Basis(design)
    load_before = os.getloadavg()[0]
    progress = Progress(sum(s.n_tiles for s in todo) * design.dim * itemsize, len(todo), what="write")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        written = 0
        for nbytes in pool.map(lambda s: write_one(store, design, basis, s), todo):
            written += nbytes
            progress.add(nbytes)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    write_targets(store, design, slides)
    n_tiles = np.array([s.n_tiles for s in slides])
    return {
        "patients": design.patients,
        "slides": len(slides),
        "patients_with_two_slides": len(slides) - design.patients,
        "tiles": int(n_tiles.sum()),
        "tiles_per_slide": {
            "min": int(n_tiles.min()),
            "median": float(np.median(n_tiles)),
            "max": int(n_tiles.max()),
        },
        "dim": design.dim,
        "dtype": design.dtype,
        "encoder": design.encoder,
        "tiling": TILING.name,
        "embedding_gb": total / 1e9,
        "store_gb": _tree_bytes(store) / 1e9,
        "slides_written": len(todo),
        "slides_skipped": len(slides) - len(todo),
        "write_s": seconds,
        "write_gbps": written / seconds / 1e9 if todo else None,
        "write_tiles_per_s": sum(s.n_tiles for s in todo) / seconds if todo else None,
        "targets_s": time.perf_counter() - t1,
        "workers": workers,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---- similarity -------------------------------------------------------------------------------------------------


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


#: (lists probed, candidates re-scored, shortlist factor) per query setting measured by ``similar``: the index ranks
#: factor × candidates tiles by its 8-bit codes plus their residual sign codes and re-scores the best candidates (1:
#: no residual stage, the 8-bit codes' best candidates). Recall rises with all three; latency mostly with the
#: candidates (each is one random read of a row of the store).
SIMILAR_SETTINGS = ((128, 200, 1), (256, 200, 1), (256, 400, 1), (256, 2000, 1), (256, 100, 10), (256, 150, 10),
                    (256, 200, 10), (256, 300, 10), (384, 200, 10), (512, 200, 10), (512, 300, 10), (256, 150, 20),
                    (384, 200, 20), (512, 200, 20))  # fmt: skip


def bench_similar(
    store: Path, *, queries: int = 50, k: int = 20, seed: int = 0, rebuild: bool = False
) -> dict:
    """Build the similarity index (timed by stage), then for ``queries`` random tiles: the index's top-k against
    exact search (one batched streaming pass for all queries), latency per query, and one exact query's latency."""
    from slide2expr import sql
    from slide2expr.sql._similar import exact_search, list_embedding_files

    files = list_embedding_files(store)
    out: dict = {"tiles": files.n_tiles, "dim": files.dim, "queries": queries, "k": k}
    t0 = time.perf_counter()
    try:
        if rebuild:
            raise sql.SimilarityError("rebuild")
        with sql.open_similarity_index(store) as index:
            fingerprint = index.files.fingerprint
        # the build figures of this very index, when an earlier run recorded them
        earlier = (
            json.loads(RESULTS.read_text()).get("sections", {}).get("similar", {}) if RESULTS.exists() else {}
        )
        built = earlier.get("build", {})
        # (a record without a fingerprint matches on the tile count)
        same = (
            "seconds" in built
            and built.get("fingerprint", fingerprint) == fingerprint
            and earlier.get("tiles") == files.n_tiles
        )
        out["build"] = {**built, "reused": True} if same else {"reused": True}
    except sql.SimilarityError:
        last = [0.0]

        def progress(stage, done, total):
            if time.perf_counter() - last[0] > 30:
                last[0] = time.perf_counter()
                print(f"index: {done / 1e9:.1f}/{total / 1e9:.1f} GB (float32)", file=sys.stderr, flush=True)

        report = sql.build_similarity_index(store, progress=progress)
        out["build"] = {"seconds": round(time.perf_counter() - t0, 1), "stages_s": {k: round(v, 1) for k, v in report.seconds.items()},
                        "index_gb": report.bytes / 1e9, "params": report.params, "peak_rss_gb": _peak_rss_gb(),
                        "fingerprint": files.fingerprint}  # fmt: skip
    print(f"index ready: {out['build']}", file=sys.stderr, flush=True)
    rng = np.random.default_rng([seed, 7])
    starts = files.starts()
    picks = np.sort(rng.choice(files.n_tiles, size=queries, replace=False))
    fidx = np.searchsorted(starts, picks, side="right") - 1
    with sql.open_similarity_index(store) as index:
        qs = [(files.slide_ids[f], int(index.tile_id[p])) for f, p in zip(fidx, picks, strict=True)]
        vectors = np.stack([index.vector(sid, tid) for sid, tid in qs])
        t = time.perf_counter()
        truth = exact_search(
            files,
            vectors,
            k=k,
            exclude=[(int(f), int(p - starts[f])) for f, p in zip(fidx, picks, strict=True)],
        )
        out["exact_batch_s"] = round(time.perf_counter() - t, 1)
        truth_sets = [{(int(f), int(r)) for f, r, _ in zip(*tr, strict=True)} for tr in truth]
        settings = []
        for n_probe, cands, factor in SIMILAR_SETTINGS:
            lat, cpu, rec = [], [], []
            for (sid, tid), want in zip(qs, truth_sets, strict=True):
                t, c = time.perf_counter(), time.thread_time()
                hits = index.query(sid, tid, k=k, candidates=cands, n_probe=n_probe, shortlist_factor=factor)
                lat.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
                got = {
                    (int(np.searchsorted(files.slide_ids, a)), int(b))
                    for a, b in zip(hits["slide_id"].to_pylist(), hits["tile_id"].to_pylist(), strict=True)
                }
                rec.append(len(got & {(f, int(index.tile_id[starts[f] + r])) for f, r in want}) / k)
            lat_ms = np.array(lat) * 1e3
            settings.append({"n_probe": n_probe, "candidates": cands, "shortlist_factor": factor, "recall_at_k": float(np.mean(rec)),
                             "median_ms": float(np.median(lat_ms)), "p95_ms": float(np.percentile(lat_ms, 95)),
                             "first_query_ms": float(lat_ms[0]), "median_cpu_ms": float(np.median(cpu) * 1e3), "load_average": os.getloadavg()[0]})  # fmt: skip
            print(f"similar: {settings[-1]}", file=sys.stderr, flush=True)
        out["index_queries"] = settings
    t = time.perf_counter()
    sql.similar_tiles(store, slide_id=qs[0][0], tile_id=qs[0][1], k=k, method="exact")
    out["exact_query_s"] = round(time.perf_counter() - t, 1)
    out["peak_rss_gb"] = _peak_rss_gb()
    return out


def bench_ann_choice(
    store: Path, *, n: int = 50_000, queries: int = 100, k: int = 20, candidates: int = 200
) -> dict:
    """The three index libraries on the same sample: ``n`` tiles of the store (whole slides, in order), projected
    on 128 principal axes; add rate (tiles/s), query time and recall@k after exact re-scoring of ``candidates``.

    HNSW graphs (hnswlib, usearch, faiss HNSW) against faiss's inverted lists (IVF, 8-bit codes): the add rate
    decides whether ~9 M tiles can be indexed in the time allowed.
    """
    import faiss
    import hnswlib
    from usearch.index import Index

    from slide2expr.sql._similar import _projection, _Reader, _unit, list_embedding_files

    files = list_embedding_files(store)
    parts, got = [], 0
    for path in files.paths:
        r = _Reader(path)
        try:
            parts.append(_unit(r.all_rows()))
        finally:
            r.close()
        got += len(parts[-1])
        if got >= n:
            break
    X = np.concatenate(parts)[:n]
    rng = np.random.default_rng(0)
    qi = rng.choice(len(X), queries, replace=False)
    S = X[qi] @ X.T
    S[np.arange(queries), qi] = -np.inf
    truth = [set(np.argpartition(-row, k)[:k].tolist()) for row in S]
    del S
    dp = min(128, X.shape[1])
    Y = np.ascontiguousarray(X @ _projection(X[rng.choice(len(X), min(len(X), 30_000), replace=False)], dp))

    def recall(cands) -> float:
        out = []
        for j, c in enumerate(cands):
            c = np.array([i for i in c if 0 <= i != qi[j]])
            top = c[np.argsort(-(X[c] @ X[qi[j]]))[:k]]
            out.append(len(set(top.tolist()) & truth[j]) / k)
        return float(np.mean(out))

    def measure(add, search, train=None) -> dict:
        out = {}
        if train is not None:  # a one-off cost on the sample, not per tile
            t = time.perf_counter()
            train()
            out["train_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        add()
        out["add_per_s"] = round(len(Y) / (time.perf_counter() - t))
        t = time.perf_counter()
        cands = [search(Y[q]) for q in qi]
        out["query_ms"] = round((time.perf_counter() - t) / queries * 1e3, 2)
        out["recall_at_k"] = recall(cands)
        return out

    faiss.omp_set_num_threads(2)
    res = {}
    lists = int(2 * np.sqrt(len(Y)))
    ivf = faiss.index_factory(dp, f"IVF{lists}_HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(ivf).cp.niter = 10
    ivf.nprobe = max(1, lists // 16)

    res[f"faiss IVF{lists}_HNSW32,SQ8 nprobe {ivf.nprobe}"] = measure(
        lambda: ivf.add(Y), lambda q: ivf.search(q[None], candidates)[1][0], train=lambda: ivf.train(Y)
    )
    hn = faiss.index_factory(dp, "HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
    hn.hnsw.efConstruction, hn.hnsw.efSearch = 64, 128

    res["faiss HNSW32,SQ8"] = measure(
        lambda: hn.add(Y), lambda q: hn.search(q[None], candidates)[1][0], train=lambda: hn.train(Y)
    )
    h = hnswlib.Index(space="ip", dim=dp)
    h.init_index(max_elements=len(Y), M=16, ef_construction=64)
    h.set_num_threads(2)
    h.set_ef(2 * candidates)
    res["hnswlib M16"] = measure(lambda: h.add_items(Y), lambda q: h.knn_query(q[None], k=candidates)[0][0])
    u = Index(
        ndim=dp, metric="ip", dtype="i8", connectivity=16, expansion_add=64, expansion_search=2 * candidates
    )
    res["usearch i8 M16"] = measure(
        lambda: u.add(np.arange(len(Y)), Y, threads=2), lambda q: u.search(q, candidates).keys
    )
    for r in res.values():
        r["hours_to_add_9.33M_tiles_at_this_rate"] = round(9.33e6 / r["add_per_s"] / 3600, 2)
    return {"sample_tiles": len(Y), "queries": queries, "k": k, "candidates": candidates, "libraries": res,
            "load_average": os.getloadavg()[0]}  # fmt: skip


def bench_pooled(store: Path, *, n_folds: int = 5, seed: int = 0) -> dict:
    """Pooled features of every patient in one streaming pass (``sql.pooled_features``, timed, peak RSS), then a
    patient-grouped ``n_folds``-fold ridge on mean+max features (scaler and penalty fitted on training patients only):
    the pooled Pearson r per gene and its median per planted gene kind."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from slide2expr import sql

    truth = json.loads((store / TRUTH_DIR / "truth.json").read_text())
    t = time.perf_counter()
    pooled = sql.pooled_features(store, stats=("mean", "max"), cache=False)
    pass_s = time.perf_counter() - t
    t = time.perf_counter()
    pooled = sql.pooled_features(store, stats=("mean", "max"))
    cached_s = time.perf_counter() - t
    genes = list(truth["genes"])
    cohort = sql.lazy_cohort(store, encoder=pooled.encoder, targets=truth["targets"], genes=genes)
    assert list(cohort.bag_ids) == list(pooled.bag_ids)
    X, Y = pooled.features, cohort.y_true
    pred = np.full_like(Y, np.nan)
    for train, test in GroupKFold(n_splits=n_folds).split(X, Y, groups=pooled.groups):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        pred[test] = model.fit(X[train], Y[train]).predict(X[test])
    r = {g: float(np.corrcoef(Y[:, j], pred[:, j])[0, 1]) for j, g in enumerate(genes)}
    kinds: dict[str, list[float]] = {}
    for g, v in r.items():
        kinds.setdefault(truth["genes"][g]["kind"], []).append(v)
    return {
        "bags": len(pooled.bag_ids),
        "features": X.shape[1],
        "stream_pass_s": round(pass_s, 1),
        "stream_gbps": cohort.nbytes / 2 / pass_s / 1e9
        if truth["design"]["dtype"] == "float16"
        else cohort.nbytes / pass_s / 1e9,
        "cached_s": round(cached_s, 2),
        "peak_rss_gb": _peak_rss_gb(),
        "ridge_pooled_r_median_by_kind": {k: float(np.median(v)) for k, v in kinds.items()},
        "ridge_pooled_r_by_gene": r,
        "n_folds": n_folds,
    }


def bench_mil_epoch(
    store: Path, *, max_tiles: int = 512, batch_size: int = 8, pca: int = 16, seed: int = 0, threads: int = 1
) -> dict:
    """One attention-MIL training epoch over every patient with the cohort on disk (``sql.lazy_cohort``): each step
    reads ``max_tiles`` uniformly drawn tiles of ``batch_size`` bags from the pages (prefetched on two threads while
    the network trains), projects them with a standardisation + PCA fitted on a bounded sample of tiles, and runs
    AttentionMILRegressor's network forward and backward. Reports seconds per epoch and the share spent waiting on
    reads: the loop regress's fit would run on a store larger than memory."""
    import torch

    from slide2expr import sql
    from slide2expr.regress import AttentionMILRegressor

    torch.set_num_threads(
        threads
    )  # on a loaded machine OpenMP hand-offs cost more than a small step's matmuls
    truth = json.loads((store / TRUTH_DIR / "truth.json").read_text())
    cohort = sql.lazy_cohort(
        store, encoder=truth["encoder"], targets=truth["targets"], genes=list(truth["genes"])
    )
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    sample = np.concatenate([cohort.sample(i, 200, rng) for i in range(len(cohort))])
    mean, sd = sample.mean(axis=0), sample.std(axis=0) + 1e-6
    z = (sample - mean) / sd
    _, vecs = np.linalg.eigh(z.T @ z / len(z))
    axes = (vecs[:, ::-1][:, :pca] / sd[:, None]).astype(np.float32)
    shift = (mean / sd) @ vecs[:, ::-1][:, :pca]
    projection_s = time.perf_counter() - t
    Y = cohort.y_true
    y = torch.from_numpy(((Y - np.nanmean(Y, 0)) / np.nanstd(Y, 0)).astype(np.float32))
    net = AttentionMILRegressor(pca_components=pca).build_network(pca, Y.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    order = rng.permutation(len(cohort))
    batches = [order[a : a + batch_size] for a in range(0, len(order), batch_size)]

    def load(batch):
        t0 = time.perf_counter()
        bags = [cohort.sample(int(i), max_tiles, rng.integers(2**32)) @ axes - shift for i in batch]
        return bags, time.perf_counter() - t0

    wait = compute = read = 0.0
    rows = 0
    t_epoch = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(load, b) for b in batches[:2]]
        for k in range(len(batches)):
            t0 = time.perf_counter()
            bags, read_s = pending.pop(0).result()
            wait += time.perf_counter() - t0
            read += read_s
            if k + 2 < len(batches):
                pending.append(pool.submit(load, batches[k + 2]))
            t0 = time.perf_counter()
            L = max(len(b) for b in bags)
            x = torch.zeros(len(bags), L, pca)
            mask = torch.zeros(len(bags), L, dtype=torch.bool)
            for j, b in enumerate(bags):
                x[j, : len(b)] = torch.from_numpy(b.astype(np.float32))
                mask[j, : len(b)] = True
                rows += len(b)
            pred = net(x, mask)[0]
            loss = torch.nn.functional.mse_loss(pred, y[torch.as_tensor(batches[k])])
            opt.zero_grad()
            loss.backward()
            opt.step()
            compute += time.perf_counter() - t0
    epoch = time.perf_counter() - t_epoch
    return {"bags": len(cohort), "max_tiles": max_tiles, "batch_size": batch_size, "pca_components": pca,
            "projection_fit_s": round(projection_s, 1), "projection_sample_tiles": len(sample),
            "epoch_s": round(epoch, 1), "io_wait_s": round(wait, 1), "io_wait_share": round(wait / epoch, 3),
            "compute_s": round(compute, 1), "read_s_summed_over_threads": round(read, 1),
            "tiles_read_per_s": round(rows / epoch), "peak_rss_gb": _peak_rss_gb(),
            "cohort_gb_if_loaded": cohort.nbytes / 1e9, "torch_threads": threads,
            "load_average": os.getloadavg()[0]}  # fmt: skip


# ---- named queries -----------------------------------------------------------------------------------------------

#: The named queries that read a compare run rather than the store.
RUN_QUERIES = ("model_summary", "top_attention_tiles", "well_predicted_genes")
_QUERY_SCRIPT = """
import json, sys, time
from slide2expr import sql
store, name, params, run = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] or None
con = sql.connect(store, run=run)
con.execute("set threads = 2")
con.execute("set memory_limit = '6GB'")
out = {}
for run in ("first_s", "second_s"):
    t = time.perf_counter()
    table = sql.run_query(con, name, params=params)
    out[run] = round(time.perf_counter() - t, 3)
out["rows"] = table.num_rows
from slide2expr.sql._routed import ROUTED_QUERIES
out["answered_by"] = "cache or similarity search" if name in ROUTED_QUERIES else "SQL"
print(json.dumps(out))
"""


def bench_queries(store: Path, *, timeout: int = 900, run: Path | None = None) -> dict:
    """Each named query on the store, in a fresh process (first and second run), with ``timeout`` seconds each,
    as ``sql.run_query`` answers it: the scanning queries from the pooled cache and the similarity search (run the
    ``similar`` section first, or the first nearest-tiles query builds the index inside its timeout). The queries
    against a run need ``run``: a compare run of this store (``compare --run-dir``)."""
    from slide2expr import sql
    from slide2expr.sql._similar import list_embedding_files

    files = list_embedding_files(store)
    sid = files.slide_ids[0]
    params = {
        "nearest_tiles": {"slide_id": sid, "tile_id": 0, "k": 20},
        "nearest_tiles_to_vector": None,
        "patient_bag": {"patient_id": sid[:12], "encoder": files.encoder},
        "targets_with_tiles": {"name": TARGETS_NAME},
        "top_attention_tiles": {"model": "mil", "gene": "", "rank_by": "relative", "k": 20},
        "well_predicted_genes": {"model": "mil"},
    }
    out = {}
    for name in sql.list_queries():
        info = sql.get_query(name)
        if name in RUN_QUERIES and run is None:
            out[name] = {"skipped": "reads a run directory (compare): give --run"}
            continue
        p = params.get(name, {})
        if name == "nearest_tiles_to_vector":
            from slide2expr.sql._similar import _Reader

            reader = _Reader(files.paths[0])
            try:
                vector = reader.rows(np.array([0]))[0].astype(np.float32)
            finally:
                reader.close()
            p = {"vector": vector.tolist(), "encoder": files.encoder, "k": 20}
        missing = set(info.params) - set(p)
        if missing:
            out[name] = {"skipped": f"no value for {sorted(missing)}"}
            continue
        t = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, "-c", _QUERY_SCRIPT, str(store), name, json.dumps(p), str(run or "")],
                                 capture_output=True, text=True, timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired:
            out[name] = {"timeout_s": timeout}
        else:
            if res.returncode:
                out[name] = {
                    "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode
                }
            else:
                out[name] = json.loads(res.stdout.strip().splitlines()[-1])
        out[name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(f"query {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


# ---- reporting -------------------------------------------------------------------------------------------------


# ---- compare ------------------------------------------------------------------------------------------------------

#: The compare section's models and their parameters: MIL reads 512 tiles of a bag per step (``max_tiles``) and
#: early-stops on 2,048 tiles of each validation bag (``val_max_tiles``; bags here have ~15,500).
COMPARE_MODELS = ("mil", "lgbm", "ridge")
COMPARE_PARAMS = {"mil": {"max_tiles": 512, "val_max_tiles": 2048}}


#: Seconds between the samples of resident memory that place compare's peak.
RSS_EVERY_S = 1.0


def _rss_gb() -> float:
    """This process's resident memory now, in GB (``/proc/self/statm``; NaN where there is none)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


class _MemoryTrace(threading.Thread):
    """Resident memory every :data:`RSS_EVERY_S` seconds and, with a run directory, when each finished model ×
    fold lands in ``RUN/partial/`` (``model/fold<k>``, a null fit ``model.null/fold<k>``): where in the run the
    peak fell."""

    def __init__(self, run: Path | None):
        super().__init__(daemon=True)
        self.run_dir, self.t0, self.done = run, time.perf_counter(), threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.landed: dict[str, float] = {}

    def run_once(self) -> None:
        t = time.perf_counter() - self.t0
        self.samples.append((t, _rss_gb()))
        partial = None if self.run_dir is None else self.run_dir / "partial"
        if partial is not None and partial.is_dir():
            for f in partial.glob("*/*.predictions.parquet"):
                self.landed.setdefault(f"{f.parent.name}/{f.name.split('.')[0]}", t)

    def run(self) -> None:  # noqa: D102
        while not self.done.wait(RSS_EVERY_S):
            self.run_once()

    def stop(self) -> dict:
        """Stop sampling: the peak sampled, when, the fits that landed just before and after it, and the largest
        sample in each minute."""
        self.done.set()
        self.join()
        self.run_once()
        t_peak, peak = max(self.samples, key=lambda s: s[1])
        landed = sorted(self.landed.items(), key=lambda kv: kv[1])
        before = [name for name, t in landed if t <= t_peak]
        after = [name for name, t in landed if t > t_peak]
        minutes: dict[int, float] = {}
        for t, gb in self.samples:
            minutes[int(t // 60)] = max(minutes.get(int(t // 60), 0.0), gb)
        return {
            "peak_sampled_gb": round(peak, 3),
            "peak_at_s": round(t_peak, 1),
            "landed_before_peak": before[-1] if before else None,
            "landed_after_peak": after[0] if after else None,
            "landed_s": {name: round(t, 1) for name, t in landed},
            "max_gb_by_minute": [round(minutes.get(m, float("nan")), 3) for m in range(max(minutes) + 1)],
        }


def _holdings_gb(cohort, n_folds: int, params: dict, max_memory_gb: float | None, seed: int) -> dict:
    """What compare's memory bound counts on for this cohort (``regress._streaming.streaming_bytes``: one fold's
    projected bags, the projection's tile sample, the largest bag, the pooled rows) and the held-out attention of
    every fold (held until the run is written), in GB: the accounted part of the peak."""
    from slide2expr.regress._compare import plan_compare
    from slide2expr.regress._streaming import ATTENTION_ROW_BYTES, streaming_bytes

    plan = plan_compare(cohort, models=COMPARE_MODELS, n_folds=n_folds, seed=seed, model_params=params,
                        max_memory_gb=max_memory_gb)  # fmt: skip
    held = {k: v / 1e9 for k, v in streaming_bytes(cohort, plan).items()}
    # the held-out attention rows, kept until the run is written: each fold's tiles × its attention genes
    tiles = np.asarray(cohort.n_tiles)[np.asarray(plan.keep)]
    rows = sum(
        float(tiles[plan.folds == k].sum()) * len(genes) for k, genes in enumerate(plan.attention_genes)
    )
    held["attention_all_folds"] = rows * ATTENTION_ROW_BYTES / 1e9
    return {k: round(v, 3) for k, v in held.items()}


def compare_once(store: Path, *, path: str, n_folds: int, params: dict, max_memory_gb: float | None,
                 seed: int = 0, out: Path | None = None) -> dict:  # fmt: skip
    """One ``regress.compare`` of :data:`COMPARE_MODELS` in this process, the cohort read on access (``path`` =
    ``"lazy"``) or loaded (``"memory"``): wall time and peak RSS per stage, pooled r per gene and its median per
    planted gene kind and model. With ``out`` the run is written there as ``compare`` writes it: each finished
    model × fold lands in ``out/partial/`` with its seconds, so a run stopped early still shows how far it got."""
    import warnings

    from slide2expr import regress, sql

    truth = json.loads((store / TRUTH_DIR / "truth.json").read_text())
    kw = dict(encoder=truth["encoder"], targets=truth["targets"], genes=list(truth["genes"]))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = sql.lazy_cohort(store, **kw) if path == "lazy" else sql.load_cohort(store, **kw)
    opened = {"seconds": time.perf_counter() - t, "peak_rss_gb": regress.peak_rss_gb()}
    trace = _MemoryTrace(out)
    trace.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", regress.MemoryBoundWarning)
        result = regress.compare(cohort, models=COMPARE_MODELS, n_folds=n_folds, seed=seed, model_params=params,
                                 max_memory_gb=max_memory_gb, progress=False, device="cpu", out=out,
                                 save_models=False)  # fmt: skip
    memory = trace.stop()
    if path == "lazy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            memory["accounted_gb"] = _holdings_gb(cohort, n_folds, params, max_memory_gb, seed)
    pooled = result.metrics[result.metrics["fold"] == -1]
    r_by_gene = {
        m: dict(zip(g["gene"], g["pearson_r"].astype(float), strict=True)) for m, g in pooled.groupby("model")
    }
    by_kind: dict[str, dict[str, float]] = {}
    for model, genes in r_by_gene.items():
        kinds: dict[str, list[float]] = {}
        for gene, r in genes.items():
            kinds.setdefault(truth["genes"][gene]["kind"], []).append(r)
        by_kind[model] = {k: float(np.nanmedian(v)) for k, v in sorted(kinds.items())}
    stages = {"open": opened, **result.stages}
    return {
        "path": path,
        "bags": len(result.folds),
        "tiles": int(np.sum(cohort.n_tiles)) if path == "lazy" else int(len(cohort.features)),
        "feature_gb_float32": round((cohort.nbytes if path == "lazy" else cohort.features.nbytes) / 1e9, 3),
        "stages": {
            k: {"seconds": round(v["seconds"], 2), "peak_rss_gb": round(v["peak_rss_gb"], 3)}
            for k, v in stages.items()
        },  # fmt: skip
        "wall_s": round(sum(v["seconds"] for v in stages.values()), 1),
        "peak_rss_gb": round(max(v["peak_rss_gb"] for v in stages.values()), 3),
        "fit_seconds_by_model": {k: round(v, 1) for k, v in result.seconds.items()},
        "pooled_r_median_by_kind": by_kind,
        "pooled_r_by_gene": r_by_gene,
        "attention_rows": result.attention_rows,
        "memory": memory,
        "memory_warnings": [
            str(w.message) for w in caught if issubclass(w.category, regress.MemoryBoundWarning)
        ],
    }


def bench_compare(store: Path, *, n_folds: int = 5, params: dict | None = None, max_memory_gb: float | None = None,
                  in_memory: bool = False, run_dir: Path | None = None) -> dict:  # fmt: skip
    """``compare --models mil,lgbm,ridge`` on the store read on access (and, with ``in_memory``, loaded, for the
    peak RSS beside it), each in a fresh process so each peak RSS is its own; with ``run_dir``, each run is written
    under it (``run_dir/lazy``, ``run_dir/memory``)."""
    params = COMPARE_PARAMS if params is None else params
    runs = {}
    for path in ("lazy", "memory") if in_memory else ("lazy",):
        cmd = [sys.executable, __file__, "compare-once", "--store", str(store), "--path", path,
               "--n-folds", str(n_folds), "--params", json.dumps(params)]  # fmt: skip
        if max_memory_gb is not None:
            cmd += ["--max-memory-gb", str(max_memory_gb)]
        if run_dir is not None:
            cmd += ["--out", str(run_dir / path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"compare ({path}) failed:\n{done.stderr[-4000:]}")
        runs[path] = json.loads(done.stdout)
    figures = {"models": list(COMPARE_MODELS), "n_folds": n_folds, "params": params,
               "max_memory_gb": max_memory_gb, "load_average": list(os.getloadavg()), **runs}  # fmt: skip
    if in_memory:
        figures["peak_rss_ratio_lazy_to_memory"] = round(
            runs["lazy"]["peak_rss_gb"] / runs["memory"]["peak_rss_gb"], 3
        )
    return figures


# ---- explain ------------------------------------------------------------------------------------------------------

#: The explain section's run: held-out attention for this many genes per fold (as many as compare's memory bound
#: records on the 9.3 M-tile store with ``--max-memory-gb 8``: ``regress``'s attention cap), in 5 folds, of the
#: attention model and the training-mean floor compare always adds.
EXPLAIN_GENES = 4
EXPLAIN_FOLDS = 5
EXPLAIN_MODELS = ("mil", "mean")
#: Attention logit added on a gene's planted driver tiles; sd of the smooth per-slide field under it (6 × 6 blocks)
#: and of the tile-level noise.
DRIVER_LOGIT, FIELD_SD, TILE_SD = 2.5, 1.0, 0.3
#: Noise of the fabricated held-out MIL predictions, as a share of each gene's sd.
PRED_NOISE = 0.5
#: The file that marks a folder as the explain section's own (a rerun replaces such a folder, and no other).
RUN_MARKER = ".cohort_scale_explain"


def _store_design(store: Path) -> tuple[dict, Design, list[SlideSpec]]:
    """The store's truth, the design that wrote it and its slides, checked against the store's slides table."""
    from slide2expr import sql

    truth = json.loads((store / TRUTH_DIR / "truth.json").read_text())
    rows = sql.read_slides(store)
    cfg = truth["design"]
    design = Design(
        int(rows["patient_id"].nunique()), cfg["dim"], cfg["dtype"], cfg["seed"], cfg["tile_scale"]
    )
    slides = cohort_slides(design)
    if {s.slide_id: s.n_tiles for s in slides} != dict(zip(rows["slide_id"], rows["n_tiles"], strict=True)):
        raise SystemExit(f"{store}: its slides are not those `cohort_scale.py write` writes for its design")
    return truth, design, slides


def _predictions(
    bag_ids, patients, y: np.ndarray, folds: np.ndarray, genes: list[str], kinds: dict, *, seed: int
):
    """Held-out predictions as compare's fold outputs (``predictions.parquet`` columns plus ``y_baseline``, the
    fold's training mean): ``mil`` is the truth plus noise on driven genes and the training mean plus noise on noise
    genes; ``mean`` is the floor."""
    import pandas as pd

    rng = np.random.default_rng([seed, 8])
    sd = np.std(y, axis=0)
    parts = []
    for k in range(EXPLAIN_FOLDS):
        test = np.flatnonzero(folds == k)
        base = y[folds != k].mean(axis=0)
        for j, g in enumerate(genes):
            noise = rng.standard_normal(len(test)) * PRED_NOISE * sd[j]
            mil = (base[j] if kinds[g] == "noise" else y[test, j]) + noise
            for model, pred in (("mil", mil), ("mean", np.full(len(test), base[j]))):
                parts.append(pd.DataFrame({"model": model, "fold": np.int32(k), "bag_id": bag_ids[test],
                                           "patient_id": patients[test], "gene": g, "y_true": y[test, j],
                                           "y_pred": pred, "y_baseline": base[j]}))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _comparisons(metrics, predictions, genes: list[str], *, seed: int):
    """``comparisons.parquet`` rows of the model pairs, from ``regress``'s paired statistics (as compare's)."""
    import pandas as pd

    from slide2expr import regress

    pooled = metrics[metrics["fold"] == -1].pivot(index="gene", columns="model", values="pearson_r")
    per_gene = regress.gene_comparisons(predictions, models=list(EXPLAIN_MODELS), genes=genes)
    rows = []
    for i, a in enumerate(EXPLAIN_MODELS):
        for b in EXPLAIN_MODELS[i + 1 :]:
            g = per_gene[(per_gene["model_a"] == a) & (per_gene["model_b"] == b)]
            sig = regress.bh_fdr(g["p"].to_numpy()) < 0.05  # regress's FDR level
            rows.append({"model_a": a, "model_b": b, "metric": "pearson_r",
                         **regress.paired_comparison(pooled[a].to_numpy(), pooled[b].to_numpy(), seed=seed),
                         "n_genes_a_better": int((sig & (g["diff"] > 0)).sum()),
                         "n_genes_b_better": int((sig & (g["diff"] < 0)).sum()),
                         "n_genes_tied": int(g["tie"].sum())})  # fmt: skip
    return pd.DataFrame(rows)


def _as_table(df, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


class AttentionWriter:
    """``attention.parquet`` written bag by bag as ``predict`` writes it (``regress``'s row-group appender, in row
    groups of ``ATTENTION_ROW_GROUP_ROWS`` rows), to a hidden temporary file renamed into place by :meth:`close`;
    :attr:`rows` counts the rows written."""

    def __init__(self, path: Path):
        from slide2expr.contract import ATTENTION_ROW_GROUP_ROWS, ATTENTION_SCHEMA
        from slide2expr.regress._persist import _RowGroupWriter

        self.path, self.rows = path, 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.writer = _RowGroupWriter(self.tmp, ATTENTION_SCHEMA, rows=ATTENTION_ROW_GROUP_ROWS)

    def write(self, table: pa.Table) -> None:
        self.writer.append(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)


def _bag_attention(design: Design, specs: list[SlideSpec], store: Path, genes: list[str], drivers: dict,
                   y_pred: dict, *, bag_id: str, fold: int) -> pa.Table:  # fmt: skip
    """One bag's attention rows, gene-major (tiles in slide then tile_id order within each gene), as
    ``regress``'s fold outputs: per gene a softmax over the bag's tiles of a logit high on the gene's planted
    driver tiles, over a smooth random field of the slide; ``tile_pred`` the bag's prediction shifted by it."""
    from slide2expr import sql
    from slide2expr.contract import ATTENTION_SCHEMA

    cols: dict[str, list] = {"slide_id": [], "tile_id": [], "x": [], "y": [], "labels": [], "field": []}
    for spec in specs:
        tiles = sql.read_tiles(store, TILING.name, spec.slide_id)
        _, _, labels, block = slide_layout(design, spec)
        tid = tiles["tile_id"].to_numpy()
        rng = np.random.default_rng([design.seed, 9, spec.index])
        _, block_of = np.unique(block[tid], return_inverse=True)
        field = rng.standard_normal((len(genes), block_of.max() + 1))[:, block_of] * FIELD_SD
        field += rng.standard_normal((len(genes), len(tid))) * TILE_SD
        for k, v in (("slide_id", np.full(len(tid), spec.slide_id, dtype=object)), ("tile_id", tid),
                     ("x", tiles["x"].to_numpy()), ("y", tiles["y"].to_numpy()), ("labels", labels[tid]),
                     ("field", field)):  # fmt: skip
            cols[k].append(v)
    c = {k: np.concatenate(v, axis=-1) for k, v in cols.items()}
    n, G = len(c["tile_id"]), len(genes)
    logit = c["field"] + DRIVER_LOGIT * np.stack([np.isin(c["labels"], drivers[g]) for g in genes])
    att = np.exp(logit - logit.max(axis=1, keepdims=True))
    att /= att.sum(axis=1, keepdims=True)
    z = (logit - logit.mean(axis=1, keepdims=True)) / (logit.std(axis=1, keepdims=True) + 1e-9)
    tile_pred = np.array([y_pred[g] for g in genes])[:, None] + 0.3 * z
    return pa.table(
        {
            "model": pa.array(np.full(n * G, "mil", dtype=object), pa.string()),
            "fold": pa.array(np.full(n * G, fold, np.int32)),
            "bag_id": pa.array(np.full(n * G, bag_id, dtype=object), pa.string()),
            "slide_id": pa.array(np.tile(c["slide_id"], G), pa.string()),
            "tile_id": pa.array(np.tile(c["tile_id"], G).astype(np.int32)),
            "x": pa.array(np.tile(c["x"], G).astype(np.int64)),
            "y": pa.array(np.tile(c["y"], G).astype(np.int64)),
            "gene": pa.array(np.repeat(np.asarray(genes, dtype=object), n), pa.string()),
            "attention": pa.array(att.ravel().astype(np.float32)),
            "attention_logit": pa.array(logit.ravel().astype(np.float32)),
            "tile_pred": pa.array(tile_pred.ravel().astype(np.float32)),
        },
        schema=ATTENTION_SCHEMA,
    )


def fabricate_run(store: Path, run: Path, *, n_genes: int = EXPLAIN_GENES, seed: int = 0) -> dict:
    """Write a valid compare run directory for the benchmark store without fitting anything: ``config.json``,
    ``folds`` (the store's patients in :data:`EXPLAIN_FOLDS` folds), ``predictions`` and ``metrics`` (from
    ``regress.metrics_table``) of :data:`EXPLAIN_MODELS` for the 35 genes, ``comparisons``, and ``attention`` of
    ``mil`` for the ``n_genes`` genes of highest variance on each fold's training patients, over every tile of
    every held-out bag (written fold by fold and bag by bag, memory bounded by one bag)."""
    import pandas as pd

    from slide2expr import regress, sql
    from slide2expr.contract import (
        COMPARISONS_SCHEMA,
        FOLDS_SCHEMA,
        METRICS_SCHEMA,
        PREDICTIONS_SCHEMA,
        RunLayout,
        package_version,
        write_bytes_atomic,
    )

    t0 = time.perf_counter()
    truth, design, specs = _store_design(store)
    genes = list(truth["genes"])
    cohort = sql.lazy_cohort(store, encoder=truth["encoder"], targets=truth["targets"], genes=genes)
    y = np.asarray(cohort.y_true, dtype=np.float64)
    bag_ids, patients = np.asarray(cohort.bag_ids, dtype=object), np.asarray(cohort.groups, dtype=object)
    order = np.random.default_rng([seed, 7]).permutation(len(bag_ids))
    folds = np.empty(len(bag_ids), np.int32)
    folds[order] = np.arange(len(bag_ids)) % EXPLAIN_FOLDS
    kinds = {g: truth["genes"][g]["kind"] for g in genes}
    pred = _predictions(bag_ids, patients, y, folds, genes, kinds, seed=seed)
    metrics = regress.metrics_table(pred, genes=genes, models=list(EXPLAIN_MODELS))
    metrics["folds_selected"] = np.int32(EXPLAIN_FOLDS)
    att_genes = [
        [genes[j] for j in regress.top_genes_of(y[folds != k], top=n_genes)] for k in range(EXPLAIN_FOLDS)
    ]
    lay = RunLayout(run)
    run.mkdir(parents=True, exist_ok=True)
    config = {"store": str(store), "targets": truth["targets"], "encoder": truth["encoder"], "tiling": TILING.name,
              "by": "patient", "models": list(EXPLAIN_MODELS), "model_params": {}, "n_folds": EXPLAIN_FOLDS,
              "seed": seed, "genes": genes,
              "gene_selection": {"genes_per_fold": [len(genes)] * EXPLAIN_FOLDS,
                                 "attention_genes": sorted({g for a in att_genes for g in a})},
              "transform": "log1p", "version": package_version(), "encoder_meta": {}, "dropped_bags": []}  # fmt: skip
    write_bytes_atomic(lay.config, json.dumps(config, indent=2).encode())
    fold_table = pd.DataFrame({"bag_id": bag_ids, "patient_id": patients, "fold": folds})
    write_table_atomic(_as_table(fold_table, FOLDS_SCHEMA), lay.folds)
    write_table_atomic(_as_table(pred, PREDICTIONS_SCHEMA), lay.predictions, compression="zstd")
    write_table_atomic(_as_table(metrics, METRICS_SCHEMA), lay.metrics)
    write_table_atomic(
        _as_table(_comparisons(metrics, pred, genes, seed=seed), COMPARISONS_SCHEMA), lay.comparisons
    )
    tables_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    slides_of: dict[str, list[SlideSpec]] = {}
    for s in specs:
        slides_of.setdefault(s.patient_id, []).append(s)
    drivers = {g: [COMPARTMENTS.index(c) for c in truth["genes"][g]["drivers"]] for g in genes}
    mil = pred[pred["model"] == "mil"].set_index(["bag_id", "gene"])["y_pred"]
    writer = AttentionWriter(lay.attention)
    shown = time.perf_counter()
    try:
        for k in range(EXPLAIN_FOLDS):
            for b in np.flatnonzero(folds == k):
                bag = str(bag_ids[b])
                bag_slides = sorted(slides_of[bag], key=lambda s: s.slide_id)
                table = _bag_attention(design, bag_slides, store, att_genes[k], drivers,
                                       {g: mil[(bag, g)] for g in att_genes[k]}, bag_id=bag, fold=k)  # fmt: skip
                writer.write(table)
                if time.perf_counter() - shown > 10:
                    shown = time.perf_counter()
                    print(f"attention: fold {k + 1}/{EXPLAIN_FOLDS}, {writer.rows:,} rows written, "
                          f"{shown - t1:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        writer.close()
    finally:
        Path(writer.tmp).unlink(missing_ok=True)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(lay.attention).metadata
    return {
        "models": list(EXPLAIN_MODELS),
        "n_folds": EXPLAIN_FOLDS,
        "genes": len(genes),
        "attention_genes_per_fold": n_genes,
        "attention_genes": config["gene_selection"]["attention_genes"],
        "attention_rows": meta.num_rows,
        "attention_row_groups": meta.num_row_groups,
        "attention_mb": round(lay.attention.stat().st_size / 1e6, 1),
        "tables_s": round(tables_s, 1),
        "attention_write_s": round(time.perf_counter() - t1, 1),
    }


def _note_kind(note: str) -> str:
    """What an explain note says, without its slide and gene (notes are counted by kind)."""
    if note.startswith("gallery of"):
        return "gallery left out: " + (
            "no attention for the gene" if "no attention rows" in note else "slide file"
        )
    if "without the H&E thumbnail" in note:
        return "map drawn without the slide's thumbnail (no slide file)"
    if "no map drawn" in note:
        return "map slide without the gene's attention: no map"
    return note if len(note) <= 100 else note[:100] + " …"


def explain_once(
    run: Path, store: Path, out: Path, *, top_slides: int, hotspots_on: str, gallery: bool, genes=None
) -> dict:
    """``plan_explain`` then ``run_plan`` with ``slide2expr explain``'s defaults but the arguments given (the two
    calls the command makes), in this process: seconds and peak RSS per stage (each line of explain's progress
    starts one), what it wrote, the plan's notes and the notes written on the way, counted by kind."""
    import collections

    marks: list[tuple[str, float, float]] = []
    t0 = time.perf_counter()

    def mark(stage: str) -> None:
        marks.append((stage, time.perf_counter(), _peak_rss_gb()))
        print(f"explain: {stage} … ({marks[-1][1] - t0:.1f} s)", file=sys.stderr, flush=True)

    mark("import")
    from slide2expr.explain import plan_explain, run_plan

    mark("plan")
    plan = plan_explain(
        run,
        store=store,
        out=out,
        genes=genes,
        top_slides=top_slides,
        hotspots_on=hotspots_on,
        gallery=gallery,
    )
    res = run_plan(plan, progress=mark)
    mark("end")
    stages = {
        name: {"seconds": round(t_next - t, 2), "peak_rss_gb": round(rss_next, 3)}
        for (name, t, _), (_, t_next, rss_next) in zip(marks, marks[1:], strict=False)
    }
    heatmaps = [p for _, p in res.figures.get("heatmaps", [])]
    later = res.notes[len(plan.notes) :]
    return {
        "genes": len(plan.genes),
        "hotspots_on": hotspots_on,
        "gallery": gallery,
        "wall_s_inside": round(marks[-1][1] - t0, 1),
        "stages": stages,
        "map_slides": len({s for v in plan.map_slides.values() for s in v}),
        "map_slides_by": plan.map_slides_by,
        "hotspot_slides": len(plan.hotspot_slides),
        "heatmaps": len(heatmaps),
        "heatmap_slides": len({p.stem.rsplit("_", 1)[0] for p in heatmaps}),
        "hotspots": 0 if res.hotspots is None else len(res.hotspots),
        "geojson": len(res.geojson),
        "detections": len(res.detections),
        "gallery_figures": len(res.figures.get("gallery", [])),
        "report_mb": None if res.report is None else round(res.report.stat().st_size / 1e6, 3),
        "out_mb": round(_tree_bytes(res.out) / 1e6, 1),
        "plan_notes": list(plan.notes),
        "notes_while_writing": dict(collections.Counter(map(_note_kind, later))),
    }


def _timed(cmd: list[str]) -> dict:
    """Run ``cmd`` (its stderr echoed here as it comes): wall time, the child's own peak RSS (``wait4``), exit
    code, and its stdout's last line parsed as JSON when it is."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stderr:
            tail[:] = [*tail[-40:], line]
            sys.stderr.write(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    thread.join()
    proc.stdout.close()
    proc.stderr.close()
    out = {"wall_s": round(time.perf_counter() - t, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3),
           "returncode": proc.returncode}  # fmt: skip
    if proc.returncode:
        out["error"] = "".join(tail[-5:]).strip()
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    with contextlib.suppress(ValueError):
        parsed = json.loads(last)
        out.update(parsed if isinstance(parsed, dict) else {"stdout": parsed})
    if "stdout" not in out and last and not last.startswith("{"):
        out["stdout"] = last
    return out


def _fresh_run_dir(path: Path) -> Path:
    """``path`` empty and marked as this section's (an earlier one of its own is replaced, anything else refused)."""
    if path.exists() and any(path.iterdir()):
        if not (path / RUN_MARKER).exists():
            raise SystemExit(
                f"--run-dir {path} holds files this benchmark did not write: choose another folder"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MARKER).write_text("written by benchmarks/cohort_scale.py explain; delete when done\n")
    return path


def bench_explain(
    store: Path, *, n_genes: int = EXPLAIN_GENES, top_slides: int = 3, run_dir: Path | None = None
) -> dict:
    """Fabricate a run with attention over every tile of the store (:func:`fabricate_run`) in ``run_dir`` (default
    ``STORE_run`` beside the store), then, each in a fresh process with its wall time and peak RSS: explain at
    ``slide2expr explain``'s defaults with ``top_slides`` (``RUN/explain``: every gene of the run), the same
    without the gallery (``run_dir/explain-no-gallery``) and with ``--genes`` the genes that have attention
    (``run_dir/explain-attention-genes``), and ``slide2expr report RUN``, which rewrites
    ``RUN/explain/report.html``."""
    from slide2expr import sql

    store = store.resolve()
    run_dir = _fresh_run_dir(_check_out(str(run_dir or store.with_name(f"{store.name}_run"))))
    run = run_dir / "run"
    slides = sql.read_slides(store)
    figures: dict = {"store": {"patients": int(slides["patient_id"].nunique()), "slides": len(slides),
                               "tiles": int(slides["n_tiles"].sum())}}  # fmt: skip
    figures["run"] = fabricate_run(store, run, n_genes=n_genes)
    once = [sys.executable, str(Path(__file__).resolve()), "explain-once", "--run", str(run), "--store", str(store),
            "--top-slides", str(top_slides)]  # fmt: skip
    figures["explain"] = _timed([*once, "--out", str(run / "explain")])
    figures["explain_no_gallery"] = _timed(
        [*once, "--out", str(run_dir / "explain-no-gallery"), "--no-gallery"]
    )
    genes = ",".join(figures["run"]["attention_genes"])
    figures["explain_attention_genes"] = _timed(
        [*once, "--out", str(run_dir / "explain-attention-genes"), "--genes", genes]
    )
    report = _timed(
        [sys.executable, "-m", "slide2expr.cli", "report", str(run)]
    )  # what `slide2expr report` runs
    html_path = run / "explain" / "report.html"
    report["report_mb"] = round(html_path.stat().st_size / 1e6, 3) if html_path.exists() else None
    figures["report"] = report
    figures["report_mb_target"] = 20
    figures["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return figures


def machine() -> dict:
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "platform": platform.platform(), "python": platform.python_version()}  # fmt: skip


def commit() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head


def save(section: str, figures: dict, *, path: Path = RESULTS) -> None:
    """Merge ``figures`` under ``section`` into the results JSON (with date, machine and commit, at the top for the
    file and in the section for its own measurement); steps run in parallel take turns (a lock file in the
    temporary folder)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "slide2expr-cohort_scale-results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"benchmark": "cohort_scale"}
        stamp = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit()}
        data.update({**stamp, "machine": machine()})
        data.setdefault("sections", {})[section] = {**figures, **stamp}
        path.write_text(json.dumps(data, indent=2) + "\n")


def _check_out(out: str) -> Path:
    path = Path(out).resolve()
    if path == ROOT or ROOT in path.parents:
        raise SystemExit(f"--out {out} is inside the repository: write the benchmark store elsewhere")
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    w = sub.add_parser("write", help="write (or finish) the benchmark store")
    w.add_argument("--out", required=True, help="the store directory (outside the repository)")
    w.add_argument("--patients", type=int, default=600)
    w.add_argument("--dim", type=int, default=1536)
    w.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--tile-scale", type=float, default=1.0, help="multiply every slide's tile count (quick runs)"
    )
    w.add_argument("--workers", type=int, default=2)
    m = sub.add_parser(
        "similar", help="build the similarity index; query latency and recall against exact search"
    )
    m.add_argument("--store", required=True)
    m.add_argument("--queries", type=int, default=50)
    m.add_argument("--rebuild", action="store_true")
    c = sub.add_parser("ann-choice", help="faiss, hnswlib and usearch on the same sample of the store")
    c.add_argument("--store", required=True)
    c.add_argument("--sample", type=int, default=50_000)
    pl = sub.add_parser(
        "pooled", help="streaming pooled features and a grouped-CV ridge on them (planted signal)"
    )
    pl.add_argument("--store", required=True)
    me = sub.add_parser(
        "mil-epoch", help="one attention-MIL epoch with the cohort on disk: seconds and I/O wait"
    )
    me.add_argument("--store", required=True)
    cp = sub.add_parser(
        "compare",
        help="compare mil,lgbm,ridge on the store read on access: time and peak RSS per stage, r by gene kind",
    )
    cp.add_argument("--store", required=True)
    cp.add_argument("--n-folds", type=int, default=5)
    cp.add_argument("--params", default=json.dumps(COMPARE_PARAMS), help="model parameters as JSON")
    cp.add_argument("--max-memory-gb", type=float, default=None)
    cp.add_argument(
        "--in-memory", action="store_true", help="also run it with the cohort loaded (small stores)"
    )
    cp.add_argument(
        "--run-dir", help="write each run there (outside the repository): finished fits land as they go"
    )
    one = sub.add_parser("compare-once", help=argparse.SUPPRESS)
    one.add_argument("--store", required=True)
    one.add_argument("--path", choices=("lazy", "memory"), required=True)
    one.add_argument("--n-folds", type=int, default=5)
    one.add_argument("--params", default=json.dumps(COMPARE_PARAMS))
    one.add_argument("--max-memory-gb", type=float, default=None)
    one.add_argument("--out", default=None)
    q = sub.add_parser("queries", help="time every named query on the store")
    q.add_argument("--store", required=True)
    q.add_argument("--timeout", type=int, default=900)
    q.add_argument("--run", help="a compare run of this store, for the queries that read a run")
    ex = sub.add_parser(
        "explain",
        help="a run with attention on every tile of the store, then explain, explain --no-gallery and report on it",
    )
    ex.add_argument("--store", required=True)
    ex.add_argument("--genes", type=int, default=EXPLAIN_GENES, help="attention genes per fold")
    ex.add_argument("--top-slides", type=int, default=3)
    ex.add_argument(
        "--run-dir", help="where the run and explain's outputs go (default STORE_run beside the store)"
    )
    eo = sub.add_parser("explain-once", help=argparse.SUPPRESS)
    eo.add_argument("--run", required=True)
    eo.add_argument("--store", required=True)
    eo.add_argument("--out", required=True)
    eo.add_argument("--top-slides", type=int, default=3)
    eo.add_argument("--hotspots-on", default="auto")
    eo.add_argument("--no-gallery", action="store_true")
    eo.add_argument("--genes", default=None, help="comma-separated (default: every gene of the run)")
    for p in (w, m, c, pl, me, cp, q, ex):
        p.add_argument(
            "--save", action="store_true", help=f"merge the figures into {RESULTS.relative_to(ROOT)}"
        )
    args = ap.parse_args(argv)
    if args.step == "write":
        design = Design(args.patients, args.dim, args.dtype, args.seed, args.tile_scale)
        figures = write_store(_check_out(args.out), design, workers=args.workers)
    elif args.step == "similar":
        figures = bench_similar(Path(args.store), queries=args.queries, rebuild=args.rebuild)
    elif args.step == "mil-epoch":
        figures = bench_mil_epoch(Path(args.store))
    elif args.step == "pooled":
        figures = bench_pooled(Path(args.store))
    elif args.step == "compare":
        figures = bench_compare(Path(args.store), n_folds=args.n_folds, params=json.loads(args.params),
                                max_memory_gb=args.max_memory_gb, in_memory=args.in_memory,
                                run_dir=args.run_dir and _check_out(args.run_dir))  # fmt: skip
    elif args.step == "compare-once":
        figures = compare_once(Path(args.store), path=args.path, n_folds=args.n_folds, params=json.loads(args.params),
                               max_memory_gb=args.max_memory_gb, out=args.out and Path(args.out))  # fmt: skip
        print(json.dumps(figures))
        return figures
    elif args.step == "explain":
        figures = bench_explain(Path(args.store), n_genes=args.genes, top_slides=args.top_slides,
                                run_dir=args.run_dir and Path(args.run_dir))  # fmt: skip
    elif args.step == "explain-once":
        figures = explain_once(Path(args.run), Path(args.store), Path(args.out), top_slides=args.top_slides,
                               hotspots_on=args.hotspots_on, gallery=not args.no_gallery,
                               genes=args.genes and args.genes.split(","))  # fmt: skip
        print(json.dumps(figures))
        return figures
    elif args.step == "ann-choice":
        figures = bench_ann_choice(Path(args.store), n=args.sample)
    else:
        figures = bench_queries(Path(args.store), timeout=args.timeout, run=args.run and Path(args.run))
    if args.save:
        save(args.step, figures)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
