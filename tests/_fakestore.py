"""A small store written straight from the schemas, for testing the read side without slides or encoders.

Tiles carry a latent compartment (0..n_compartments-1) planted in the embedding (one-hot times 3 in the first
dimensions, plus Gaussian noise); each gene's value is the patient's fraction of tiles in its driver compartment
(scaled) plus noise, so the truth is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from slide2expr.contract import (
    SLIDES_SCHEMA,
    TARGETS_SCHEMA,
    TILES_SCHEMA,
    embeddings_path,
    embeddings_schema,
    init_store,
    slide_path,
    targets_path,
    tiles_path,
    write_table_atomic,
)

TILING = "mpp1.00_px224_ov0"
ENCODER = "fake-encoder"
TILE_PX0 = 448  # level-0 px of a 224 px tile at 1 µm/px on a 0.5 µm/px slide


@dataclass
class FakeStore:
    root: Path
    tiling: str
    encoder: str
    dim: int
    genes: tuple[str, ...]
    drivers: dict[str, int | None]  # gene -> driver compartment (None: noise gene)
    slides: list[tuple[str, str]]  # (slide_id, patient_id)
    compartments: dict[str, np.ndarray]  # slide_id -> (n_tiles,) latent compartment per tile
    embeddings: dict[str, np.ndarray]  # slide_id -> (n_tiles, dim) float32
    targets: dict[str, dict[str, float]]  # patient_id -> gene -> value


def make_fake_store(
    root: str | Path,
    *,
    n_patients: int = 12,
    dim: int = 16,
    n_compartments: int = 4,
    tiles_per_slide: tuple[int, int] = (30, 60),
    genes: tuple[str, ...] = ("GNLY", "FBN1", "SPINK4", "NOISE1"),
    seed: int = 0,
    dtype: str = "float32",
    targets_name: str = "expr",
    failed_slide: bool = True,
) -> FakeStore:
    """Write a store under ``root``: ``slides/``, ``tiles/``, ``embeddings/``, ``targets/<targets_name>``.

    Every third patient has two slides. When ``failed_slide`` is true one extra slide row has status ``failed``
    (no tiles, no embeddings), as featurize records unreadable slides.
    """
    rng = np.random.default_rng(seed)
    root = init_store(root)
    drivers = {g: (i % n_compartments if not g.startswith("NOISE") else None) for i, g in enumerate(genes)}
    slides, comps, embs, targets = [], {}, {}, {}
    for p in range(n_patients):
        pid = f"TCGA-FK-{p + 1:04d}"
        n_slides = 2 if p % 3 == 0 else 1
        # patient-level compartment mix
        mix = rng.dirichlet(np.ones(n_compartments) * 0.8)
        pcomps = []
        for s in range(n_slides):
            sid = f"{pid}-01Z-00-DX{s + 1}"
            n = int(rng.integers(tiles_per_slide[0], tiles_per_slide[1] + 1))
            comp = rng.choice(n_compartments, size=n, p=mix).astype(np.int32)
            emb = rng.normal(0, 0.5, size=(n, dim)).astype(np.float32)
            emb[np.arange(n), comp] += 3.0
            cols = 8
            tid = np.arange(n, dtype=np.int32)
            x = (tid % cols).astype(np.int64) * TILE_PX0
            y = (tid // cols).astype(np.int64) * TILE_PX0
            tiles = pa.table(
                {
                    "slide_id": [sid] * n,
                    "tile_id": tid,
                    "x": x,
                    "y": y,
                    "w": np.full(n, TILE_PX0, np.int64),
                    "h": np.full(n, TILE_PX0, np.int64),
                    "tissue_frac": rng.uniform(0.5, 1.0, n).astype(np.float32),
                },
                schema=TILES_SCHEMA,
            )
            meta = {"kind": "tiles", "slide_id": sid, "tiling": TILING}
            write_table_atomic(tiles, tiles_path(root, TILING, sid), metadata=meta)
            flat = pa.array(emb.astype(dtype).ravel(), type=pa.from_numpy_dtype(np.dtype(dtype)))
            schema = embeddings_schema(dim, dtype)
            emb_col = pa.FixedSizeListArray.from_arrays(flat, type=schema.field("embedding").type)
            table = pa.table(
                {"slide_id": [sid] * n, "tile_id": tid, "x": x, "y": y, "embedding": emb_col}, schema=schema
            )
            write_table_atomic(
                table,
                embeddings_path(root, TILING, ENCODER, sid),
                metadata={
                    "kind": "embeddings",
                    "slide_id": sid,
                    "tiling": TILING,
                    "encoder": ENCODER,
                    "dim": dim,
                    "dtype": dtype,
                    "weights_sha256": "0" * 64,
                },
            )
            row = {f.name: None for f in SLIDES_SCHEMA}
            row.update(
                slide_id=sid,
                patient_id=pid,
                path=f"/slides/{sid}.svs",
                vendor="aperio",
                width=8 * TILE_PX0,
                height=int(y.max()) + TILE_PX0,
                mpp_x=0.5,
                mpp_y=0.5,
                mpp_source="metadata",
                objective_power=20.0,
                levels=3,
                status="ok",
                n_tiles=n,
                tissue_area_mm2=n * (TILE_PX0 * 0.5 / 1000) ** 2,
                tiling=TILING,
                encoder=ENCODER,
            )
            write_table_atomic(
                pa.Table.from_pylist([row], schema=SLIDES_SCHEMA),
                slide_path(root, sid),
                metadata={"kind": "slides"},
            )
            slides.append((sid, pid))
            comps[sid], embs[sid] = comp, emb
            pcomps.append(comp)
        allc = np.concatenate(pcomps)
        targets[pid] = {
            g: float(
                (4.0 * np.mean(allc == d) if d is not None else 0.0)
                + 1.0
                + rng.normal(0, 0.1 if d is not None else 1.0)
            )
            for g, d in drivers.items()
        }
    if failed_slide:
        sid = "TCGA-FK-9999-01Z-00-DX1"
        row = {f.name: None for f in SLIDES_SCHEMA}
        row.update(
            slide_id=sid,
            patient_id="TCGA-FK-9999",
            path=f"/slides/{sid}.svs",
            status="failed",
            error="OpenSlideUnsupportedFormatError: not a slide",
            n_tiles=0,
        )
        write_table_atomic(pa.Table.from_pylist([row], schema=SLIDES_SCHEMA), slide_path(root, sid))
    rows = [
        {"sample_id": f"{pid}-01A", "patient_id": pid, "gene": g, "value": v, "raw_value": float(np.expm1(v))}
        for pid, gv in targets.items()
        for g, v in gv.items()
    ]
    write_table_atomic(
        pa.Table.from_pylist(rows, schema=TARGETS_SCHEMA),
        targets_path(root, targets_name),
        metadata={"kind": "targets"},
    )
    return FakeStore(root, TILING, ENCODER, dim, tuple(genes), drivers, slides, comps, embs, targets)


def add_encoder(fs: FakeStore, encoder: str, *, dim: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Write a second encoder's embeddings (``dim`` dimensions, random) for every tile of ``fs``'s slides, with the
    same tile ids and positions; returns slide_id -> (n_tiles, dim) float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for sid, emb in fs.embeddings.items():
        n = len(emb)
        values = rng.normal(size=(n, dim)).astype(np.float32)
        tid = np.arange(n, dtype=np.int32)
        schema = embeddings_schema(dim)
        col = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), type=schema.field("embedding").type)
        x = (tid % 8).astype(np.int64) * TILE_PX0
        y = (tid // 8).astype(np.int64) * TILE_PX0
        table = pa.table(
            {"slide_id": [sid] * n, "tile_id": tid, "x": x, "y": y, "embedding": col}, schema=schema
        )
        meta = {"kind": "embeddings", "slide_id": sid, "tiling": fs.tiling, "encoder": encoder, "dim": dim}
        meta |= {"dtype": "float32", "weights_sha256": "1" * 64}
        write_table_atomic(table, embeddings_path(fs.root, fs.tiling, encoder, sid), metadata=meta)
        out[sid] = values
    return out


def fake_cohort(root: Path, *, n_patients: int, dim: int = 16, lazy: bool = False):
    """A fake store of ``n_patients`` (no failed slide) under ``root``, opened as a cohort with its ``expr``
    targets: loaded, or read on access (``lazy``)."""
    import warnings

    from slide2expr import sql

    store = make_fake_store(root, n_patients=n_patients, dim=dim, failed_slide=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_ = sql.lazy_cohort if lazy else sql.load_cohort
        return open_(store.root, encoder=store.encoder, targets="expr")
