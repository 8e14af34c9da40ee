"""``make_cohort``: a deterministic synthetic cohort of H&E-like slides with planted expression drivers."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.synth._compartments import (
    COMPARTMENTS,
    HOTSPOT_COMPARTMENTS,
    MAIN_COMPARTMENTS,
    TISSUE_COMPARTMENTS,
)
from slide2expr.synth._expression import (
    GENES,
    draw_patient_composition,
    expression_model,
    simulate_expression,
)
from slide2expr.synth._labels import label_map
from slide2expr.synth._slide import SlideSpec, verify_slide, write_slide
from slide2expr.synth._texture import periodic_noise, render_atlas, stain_lut
from slide2expr.synth._truth import TRUTH_DIR, TRUTH_JSON, CohortError

#: Pixel size, objective power, file format, OpenSlide vendor and tile size of the two kinds of slide.
SLIDE_KINDS = {
    "svs": {"mpp": 0.25, "mag": 40, "vendor": "aperio", "tile": 256},
    "tiff": {"mpp": 0.5, "mag": 20, "vendor": "generic-tiff", "tile": 512},
}
SYNTH_FORMAT = 1
#: Atlas period relative to ``atlas_um``: glands and fibre bundles are large, so they repeat less often.
_ATLAS_SCALE = {"tumour": 2.0, "stroma": 2.0}
_OUTPUTS = ("slides", TRUTH_DIR, "patients.csv", "slides.csv", "expression.csv", TRUTH_JSON)
#: Bounds of the default texture period in µm: large enough for a gland, small enough for small slides to be quick.
ATLAS_UM_RANGE = (64.0, 512.0)
#: Dirichlet concentration of a slide's composition around its patient's: a second section differs a little.
SECTION_CONCENTRATION = 60
#: Share of slides whose tissue lies in two separate pieces.
TWO_PIECE_SHARE = 0.3


@dataclass(frozen=True)
class CohortInfo:
    """What :func:`make_cohort` wrote.

    Attributes
    ----------
    root : the cohort folder.
    patients : one row per slide: ``patient_id, slide_id, path`` (path relative to ``root``).
    slides : one row per slide: ``slide_id, patient_id, path, vendor, mpp, width, height, levels, format,
        tile_px, tissue_frac, bytes, seconds``.
    expression : (n_patients, 35) TPM-like values, index ``sample_id`` (``TCGA-S2-0001-01A``), columns genes.
    truth : the parsed ``truth.json``.
    seconds : wall time of the whole run.
    """

    root: Path
    patients: pd.DataFrame
    slides: pd.DataFrame
    expression: pd.DataFrame
    truth: dict = field(repr=False)
    seconds: float

    @property
    def slide_paths(self) -> list[Path]:
        return [self.root / p for p in self.slides["path"]]


def patient_id(i: int) -> str:
    """TCGA-style patient barcode of the i-th synthetic patient (1-based): ``TCGA-S2-0001``."""
    return f"TCGA-S2-{i:04d}"


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _atlas_px(um: float, mpp: float) -> int:
    return max(512, math.ceil(um / mpp / 512) * 512)


def _size_range(size) -> tuple[int, int]:
    lo, hi = (size, size) if isinstance(size, (int, np.integer)) else size
    lo, hi = int(lo), int(hi)
    if not 256 <= lo <= hi:
        raise CohortError(
            f"size must be a side length or (min, max) in level-0 px with 256 <= min <= max, got {size}"
        )
    return lo, hi


def make_cohort(
    out: str | os.PathLike,
    *,
    n_patients: int = 40,
    seed: int = 0,
    size: int | tuple[int, int] = (10_000, 16_000),
    svs_fraction: float = 0.5,
    two_slide_fraction: float = 1 / 3,
    tissue_frac: tuple[float, float] = (0.35, 0.55),
    label_um: float = 8.0,
    atlas_um: float | None = None,
    atlas_variants: int = 1,
    quality: int = 80,
    overwrite: bool = False,
    progress: Callable[[int, int, dict | None], None] | None = None,
) -> CohortInfo:
    """Write a synthetic cohort of OpenSlide-readable H&E-like slides, their patients, expression and truth.

    Parameters
    ----------
    out : folder to create (must be missing or empty, unless ``overwrite`` and it holds an earlier cohort).
    n_patients : number of patients; about ``two_slide_fraction`` of them get two slides.
    seed : everything is a function of it: same seed and parameters → identical files.
    size : level-0 side length in px, or a (min, max) range each slide's width and height are drawn from.
    svs_fraction : share of slides written as Aperio ``.svs`` at 0.25 µm/px (40x); the rest are generic pyramidal
        ``.tiff`` at 0.5 µm/px (20x).
    tissue_frac : range of the share of each slide covered by tissue.
    label_um : µm per px of the ground-truth label maps (rounded to a whole number of level-0 px).
    atlas_um : period of the texture atlases in µm (twice that for tumour glands and stroma, whose structures are
        larger), rounded up to a multiple of 512 px; textures repeat with this period. Default: 512 µm, less for
        small slides (an eighth of the largest side at 40x), which keeps small cohorts quick.
    atlas_variants : texture atlases rendered per compartment and pixel size; each slide picks one (and its own
        offsets and stain).
    quality : JPEG quality of the tiles.
    progress : called as ``progress(done, total, slide_row)`` after each slide (and once with ``done=0``).

    Returns
    -------
    CohortInfo. Writes, under ``out``::

        slides/<slide_id>.svs|.tiff   pyramidal JPEG slides (levels downsampled x4, at least 3)
        patients.csv                  patient_id, slide_id, path (relative to out)
        slides.csv                    slide_id, patient_id, path, vendor, mpp, width, height, levels, …
        expression.csv                sample_id x 35 genes, TPM-like (linear scale; take log1p)
        truth.json                    per gene: kind, drivers, coefficients, noise sd; per patient: fractions
        truth/<slide_id>.npz          labels (h, w) uint8 label map, ds, label_mpp, mpp, width, height

    Raises
    ------
    CohortError : bad parameters, or ``out`` is not empty.
    """
    t_start = time.perf_counter()
    out = Path(out)
    params = check_cohort(
        out,
        n_patients=n_patients,
        size=size,
        svs_fraction=svs_fraction,
        two_slide_fraction=two_slide_fraction,
        tissue_frac=tissue_frac,
        label_um=label_um,
        atlas_um=atlas_um,
        atlas_variants=atlas_variants,
        quality=quality,
        overwrite=overwrite,
    )
    _clear_earlier_cohort(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / TRUTH_DIR).mkdir(exist_ok=True)

    rng = _rng(seed, 0)
    patients = _plan_patients(rng, n_patients, two_slide_fraction)
    plan = [(pi, si, sid) for pi, p in enumerate(patients) for si, sid in enumerate(p["slides"])]
    n_svs = round(svs_fraction * len(plan))
    is_svs = np.zeros(len(plan), bool)
    is_svs[rng.permutation(len(plan))[:n_svs]] = True
    fmts = ["svs" if s else "tiff" for s in is_svs]
    banks = {fmt: _texture_bank(fmt, seed=seed, params=params) for fmt in sorted(set(fmts))}

    if progress:
        progress(0, len(plan), None)
    rows, areas = [], {}
    for k, ((pi, si, sid), fmt) in enumerate(zip(plan, fmts, strict=True)):
        row, areas[sid] = _write_one_slide(
            out, sid, fmt, patient=patients[pi], srng=_rng(seed, 100, pi, si), bank=banks[fmt], params=params
        )
        rows.append(row)
        if progress:
            progress(k + 1, len(plan), row)

    fracs = _patient_fractions(patients, areas)
    model = expression_model(_rng(seed, 4))
    tpm = np.round(np.expm1(simulate_expression(fracs, model, _rng(seed, 5))), 4)
    index = pd.Index([p["sample_id"] for p in patients], name="sample_id")
    expression = pd.DataFrame(tpm, index=index, columns=list(GENES))

    slides_df = pd.DataFrame(rows)
    patients_df = slides_df[["patient_id", "slide_id", "path"]].copy()
    patients_df.to_csv(out / "patients.csv", index=False)
    slides_df[[c for c in slides_df.columns if c != "seconds"]].to_csv(out / "slides.csv", index=False)
    expression.to_csv(out / "expression.csv", float_format="%.4f")
    truth = _truth(seed=seed, params=params, model=model, rows=rows, areas=areas, patients=patients)
    (out / TRUTH_JSON).write_text(json.dumps(truth, indent=1, sort_keys=False))
    return CohortInfo(root=out, patients=patients_df, slides=slides_df, expression=expression, truth=truth,
                      seconds=time.perf_counter() - t_start)  # fmt: skip


@dataclass(frozen=True)
class CohortParams:
    """The checked parameters of a synthetic cohort (see :func:`make_cohort`), as recorded in ``truth.json``."""

    n_patients: int
    size: tuple[int, int]
    svs_fraction: float
    two_slide_fraction: float
    tissue_frac: tuple[float, float]
    label_um: float
    atlas_um: float
    atlas_variants: int
    quality: int

    def as_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["tissue_frac"] = list(self.size), list(self.tissue_frac)
        return d


def check_cohort(
    out: str | os.PathLike,
    *,
    n_patients: int = 40,
    size: int | tuple[int, int] = (10_000, 16_000),
    svs_fraction: float = 0.5,
    two_slide_fraction: float = 1 / 3,
    tissue_frac: tuple[float, float] = (0.35, 0.55),
    label_um: float = 8.0,
    atlas_um: float | None = None,
    atlas_variants: int = 1,
    quality: int = 80,
    overwrite: bool = False,
) -> CohortParams:
    """Check :func:`make_cohort`'s parameters and its output folder without writing anything.

    Raises :class:`CohortError` naming the parameter; returns the parameters with their defaults resolved.

    >>> check_cohort("/nonexistent/cohort", n_patients=3, size=2000).atlas_um
    64.0
    """
    out = Path(out)
    if n_patients < 1:
        raise CohortError(f"n_patients must be at least 1, got {n_patients}")
    if not 0.0 <= svs_fraction <= 1.0:
        raise CohortError(f"svs_fraction must be between 0 and 1, got {svs_fraction}")
    lo, hi = _size_range(size)
    if atlas_um is None:
        atlas_um = float(min(ATLAS_UM_RANGE[1], max(ATLAS_UM_RANGE[0], hi * SLIDE_KINDS["svs"]["mpp"] / 8)))
    if atlas_um <= 0 or atlas_variants < 1:
        raise CohortError(
            f"atlas_um must be positive and atlas_variants at least 1, got {atlas_um}, {atlas_variants}"
        )
    if not 0.05 <= tissue_frac[0] <= tissue_frac[1] <= 0.9:
        raise CohortError(f"tissue_frac must be a range within [0.05, 0.9], got {tissue_frac}")
    if out.exists() and not out.is_dir():
        raise CohortError(f"out {out} exists and is not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CohortError(
                f"out {out} exists and is not empty: choose a new folder or pass overwrite (--overwrite)"
            )
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUTS)
        if foreign:
            raise CohortError(
                f"refusing to overwrite {out}: it holds entries a synthetic cohort does not ({', '.join(foreign[:5])})"
            )
    return CohortParams(n_patients, (lo, hi), svs_fraction, two_slide_fraction, tuple(tissue_frac), label_um,
                        atlas_um, atlas_variants, quality)  # fmt: skip


def _clear_earlier_cohort(out: Path) -> None:
    """Delete what an earlier :func:`make_cohort` wrote into ``out`` (checked by :func:`check_cohort`)."""
    for name in _OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _plan_patients(rng: np.random.Generator, n_patients: int, two_slide_fraction: float) -> list[dict]:
    patients = []
    for i in range(1, n_patients + 1):
        comp, hot = draw_patient_composition(rng)
        n_sl = 2 if rng.random() < two_slide_fraction else 1
        pid = patient_id(i)
        slides = [f"{pid}-01Z-00-DX{k}" for k in range(1, n_sl + 1)]
        patients.append({"patient_id": pid, "sample_id": f"{pid}-01A", "slides": slides,
                         "target_composition": comp, "target_hotspots": hot})  # fmt: skip
    return patients


def _texture_bank(fmt: str, *, seed: int, params: CohortParams) -> dict:
    """Texture atlases (per tissue compartment and variant) and a displacement field at one pixel size."""
    mpp = SLIDE_KINDS[fmt]["mpp"]
    key = int(round(mpp * 1000))
    atlas_um = params.atlas_um
    atlases = [
        [
            render_atlas(c, size=_atlas_px(atlas_um * _ATLAS_SCALE.get(c, 1.0), mpp), mpp=mpp, seed=[seed, 1, key, ci, v])
            for v in range(params.atlas_variants)
        ]
        for ci, c in enumerate(TISSUE_COMPARTMENTS)
    ]  # fmt: skip
    displacement = np.stack(
        [periodic_noise(_rng(seed, 2, key, i), _atlas_px(atlas_um, mpp), 4.0 / mpp) for i in range(2)]
    )
    return {"atlases": atlases, "displacement": displacement}


def _write_one_slide(
    out: Path,
    sid: str,
    fmt: str,
    *,
    patient: dict,
    srng: np.random.Generator,
    bank: dict,
    params: CohortParams,
) -> tuple[dict, np.ndarray]:
    """Draw, write and verify one slide and its label map; return its ``slides.csv`` row and µm² per compartment."""
    t0 = time.perf_counter()
    kind = SLIDE_KINDS[fmt]
    mpp, tile = kind["mpp"], kind["tile"]
    lo, hi = params.size
    width, height = (int(v) for v in srng.integers(lo, hi + 1, 2))
    ds = max(1, round(params.label_um / mpp))
    label_mpp = ds * mpp
    comp_t = np.array([patient["target_composition"][c] for c in MAIN_COMPARTMENTS])
    comp_s = srng.dirichlet(SECTION_CONCENTRATION * comp_t + 0.05)
    hot_s = {c: patient["target_hotspots"][c] * float(srng.uniform(0.8, 1.2)) for c in HOTSPOT_COMPARTMENTS}
    labels = label_map(
        srng,
        shape=(math.ceil(height / ds), math.ceil(width / ds)),
        label_mpp=label_mpp,
        composition=dict(zip(MAIN_COMPARTMENTS, comp_s.tolist(), strict=True)),
        hotspots=hot_s,
        tissue_frac=float(srng.uniform(*params.tissue_frac)),
        n_pieces=2 if srng.random() < TWO_PIECE_SHARE else 1,
    )
    lut, bg = stain_lut(srng)
    atlases = [None] + [
        lut[tuple(bank["atlases"][ci][int(srng.integers(params.atlas_variants))])]
        for ci in range(len(TISSUE_COMPARTMENTS))
    ]
    offsets = np.array([srng.integers(0, 1 + (a.shape[0] - 1) // tile, 2) * tile if a is not None else (0, 0)
                        for a in atlases])  # fmt: skip
    disp = np.clip(np.rint(bank["displacement"] * (0.8 * ds)), -2 * ds, 2 * ds).astype(np.int16)
    spec = SlideSpec(labels=labels, ds=ds, width=width, height=height, mpp=mpp, atlases=tuple(atlases),
                     background=bg, offsets=offsets, displacement=disp, tile=tile, quality=params.quality)  # fmt: skip
    rel = f"slides/{sid}.{fmt}"
    info = write_slide(out / rel, spec, fmt=fmt, name=sid)
    verify_slide(out / rel, vendor=kind["vendor"], mpp=mpp, levels=info["levels"], width=width, height=height)
    np.savez_compressed(out / TRUTH_DIR / f"{sid}.npz", labels=labels, ds=ds, label_mpp=label_mpp, mpp=mpp,
                        width=width, height=height)  # fmt: skip
    counts = np.bincount(labels.ravel(), minlength=len(COMPARTMENTS))
    tissue = counts[1:].sum() / labels.size
    row = {"slide_id": sid, "patient_id": patient["patient_id"], "path": rel, "vendor": kind["vendor"], "mpp": mpp,
           "width": width, "height": height, "levels": info["levels"], "format": fmt, "tile_px": tile,
           "tissue_frac": round(float(tissue), 4), "bytes": info["bytes"],
           "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    return row, counts * label_mpp**2


def _patient_fractions(patients: list[dict], areas: dict[str, np.ndarray]) -> np.ndarray:
    """Each patient's tissue share per compartment, all its slides pooled; recorded on the patient dicts too."""
    fracs = np.zeros((len(patients), len(TISSUE_COMPARTMENTS)))
    for pi, p in enumerate(patients):
        a = sum(areas[s] for s in p["slides"])
        tissue = a[1:].sum()
        fracs[pi] = a[1:] / tissue if tissue > 0 else 0.0
        p["tissue_mm2"] = float(tissue / 1e6)
        p["fractions"] = {c: float(fracs[pi, i]) for i, c in enumerate(TISSUE_COMPARTMENTS)}
    return fracs


def _truth(
    *, seed: int, params: CohortParams, model: dict, rows: list[dict], areas: dict, patients: list
) -> dict:
    """The content of ``truth.json``."""

    def fractions(a: np.ndarray) -> dict:
        return {c: float(a[i + 1] / max(a[1:].sum(), 1e-12)) for i, c in enumerate(TISSUE_COMPARTMENTS)}

    patient_keys = ("sample_id", "slides", "tissue_mm2", "fractions", "target_composition", "target_hotspots")
    return {
        "format": SYNTH_FORMAT,
        "seed": seed,
        "params": params.as_dict(),
        "compartments": {name: i for i, name in enumerate(COMPARTMENTS)},
        "hotspot_compartments": list(HOTSPOT_COMPARTMENTS),
        "label_maps": f"{TRUTH_DIR}/<slide_id>.npz: labels (h, w) uint8; label px (i, j) covers level-0 px "
        "[i*ds, (i+1)*ds) x [j*ds, (j+1)*ds); label_mpp = ds * mpp",
        "expression": {
            "file": "expression.csv",
            "scale": "TPM-like, linear; the model is on log1p(TPM)",
            "model": "log1p(TPM[p, g]) = intercept[g] + sum_c coefficients[g][c] * frac[p, c] + N(0, noise_sd[g]^2), "
            "clipped at 0",
            "frac": "share of the patient's tissue area in compartment c, all its slides pooled (patients[..].fractions)",
        },
        "genes": model,
        "slides": {
            r["slide_id"]: {
                "patient_id": r["patient_id"],
                "format": r["format"],
                "tissue_mm2": float(areas[r["slide_id"]][1:].sum() / 1e6),
                "fractions": fractions(areas[r["slide_id"]]),
            }
            for r in rows
        },
        "patients": {p["patient_id"]: {k: p[k] for k in patient_keys} for p in patients},
    }
