"""Low-resolution compartment label maps: tissue outline, blob-shaped compartments, planted hotspots."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from slide2expr.synth._compartments import BACKGROUND, LABEL, MAIN_COMPARTMENTS

#: Typical radius range (µm) of one planted hotspot blob, per hotspot compartment.
HOTSPOT_RADIUS_UM = {"tls": (110.0, 230.0), "high_grade": (80.0, 190.0)}
#: Compartments a hotspot prefers to sit in (tertiary lymphoid structures in stroma near the tumour, high-grade
#: epithelium at the invasive front between tumour and stroma).
HOTSPOT_HOSTS = {"tls": ("stroma", "lymphocytes", "tumour"), "high_grade": ("tumour", "stroma")}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian noise of correlation length ``sigma`` px, zero mean and unit sd, (h, w) float32.

    Filtered on a grid coarser by about sigma / 4 and upsampled bilinearly, which keeps it cheap for large sigma.
    """
    f = max(1, int(sigma // 4))
    small = (shape[0] // f + 2, shape[1] // f + 2)
    g = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / f, mode="reflect")
    if f > 1:
        g = ndimage.zoom(g, f, order=1, grid_mode=False)
    g = np.ascontiguousarray(g[: shape[0], : shape[1]])
    g -= g.mean()
    g /= g.std() + 1e-12
    return g


def tissue_mask(
    rng: np.random.Generator, *, shape: tuple[int, int], tissue_frac: float, n_pieces: int
) -> np.ndarray:
    """An irregular tissue outline covering about ``tissue_frac`` of a (h, w) grid, in 1 or 2 pieces.

    Returns
    -------
    (h, w) bool.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coarse = _smooth_noise(rng, shape, 0.07 * min(h, w))
    fine = _smooth_noise(rng, shape, max(1.0, 0.012 * min(h, w)))
    long_axis_x = w >= h
    dists = []
    for i in range(n_pieces):
        t = (i + 0.5) / n_pieces if n_pieces > 1 else 0.5
        t += rng.uniform(-0.04, 0.04)
        cy = h * (rng.uniform(0.45, 0.55) if long_axis_x else t)
        cx = w * (t if long_axis_x else rng.uniform(0.45, 0.55))
        # each piece gets a share of the long side
        ay = h * (0.5 if long_axis_x else 0.5 / n_pieces) * rng.uniform(0.8, 1.0)
        ax = w * (0.5 / n_pieces if long_axis_x else 0.5) * rng.uniform(0.8, 1.0)
        ang = rng.uniform(-0.35, 0.35)
        c, s = math.cos(ang), math.sin(ang)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        dists.append(np.sqrt((u / ax) ** 2 + (v / ay) ** 2))
    d = np.minimum.reduce(dists) if len(dists) > 1 else dists[0]
    # keep clear of the slide edges: a penalty that grows smoothly within 15 % of the frame of each edge
    edge = np.minimum(np.minimum(yy, h - 1 - yy) / h, np.minimum(xx, w - 1 - xx) / w)
    penalty = 1.5 * (np.clip(0.15 - edge, 0.0, None) / 0.15) ** 2
    penalty[edge < 0.02] = np.inf
    lo, hi = 0.2, 3.0
    for _ in range(30):  # bisect the size so the tissue covers tissue_frac of the grid
        scale = 0.5 * (lo + hi)
        mask = d / scale + 0.22 * coarse + 0.06 * fine + penalty < 1.0
        if mask.mean() < tissue_frac:
            lo = scale
        else:
            hi = scale
    return mask


def _fit_argmax(fields: np.ndarray, targets: np.ndarray, *, iters: int = 40) -> np.ndarray:
    """Biases b so that argmax(fields + b) gives each class about its target share; returns the labels."""
    bias = np.zeros(len(targets), np.float32)
    logt = np.log(targets + 1e-3)
    lab = np.argmax(fields, axis=0)
    for _ in range(iters):
        lab = np.argmax(fields + bias[:, None], axis=0)
        share = np.bincount(lab, minlength=len(targets)) / lab.size
        bias += 0.6 * (logt - np.log(share + 1e-3))
    return np.argmax(fields + bias[:, None], axis=0)


def _blob(rng: np.random.Generator, radius: float) -> np.ndarray:
    """An irregular round blob of about ``radius`` px, (2r+1, 2r+1) bool."""
    r = int(math.ceil(radius * 1.35)) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    th = np.arctan2(yy, xx)
    rad = np.full_like(th, radius)
    for _ in range(3):
        rad *= 1.0 + rng.uniform(0.03, 0.12) * np.sin(rng.integers(2, 6) * th + rng.uniform(0, 2 * math.pi))
    return np.sqrt(yy**2 + xx**2) <= rad


def label_map(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int],
    label_mpp: float,
    composition: dict[str, float],
    hotspots: dict[str, float],
    tissue_frac: float,
    n_pieces: int,
    region_um: float = 350.0,
) -> np.ndarray:
    """Compartment label map of one slide.

    Parameters
    ----------
    shape : (h, w) of the map in label px.
    label_mpp : µm per label px.
    composition : target share of each main compartment in the tissue (sums to 1).
    hotspots : target share of the tissue for each hotspot compartment (0 to ~0.1).
    tissue_frac : share of the slide covered by tissue.
    n_pieces : 1 or 2 tissue pieces.
    region_um : correlation length of the compartment regions.

    Returns
    -------
    (h, w) uint8 of label values (see ``COMPARTMENTS``).
    """
    mask = tissue_mask(rng, shape=shape, tissue_frac=tissue_frac, n_pieces=n_pieces)
    labels = np.zeros(shape, np.uint8)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return labels
    sigma = max(1.0, region_um / label_mpp)
    fields = np.stack([_smooth_noise(rng, shape, sigma).ravel()[idx] for _ in MAIN_COMPARTMENTS])
    targets = np.array([composition[c] for c in MAIN_COMPARTMENTS], np.float64)
    lab = _fit_argmax(fields, targets / targets.sum())
    codes = np.array([LABEL[c] for c in MAIN_COMPARTMENTS], np.uint8)
    labels.ravel()[idx] = codes[lab]

    n_tissue = idx.size
    h, w = shape
    for name, frac in hotspots.items():
        if frac <= 0:
            continue
        target = frac * n_tissue
        lo_um, hi_um = HOTSPOT_RADIUS_UM[name]
        cap = math.sqrt(target / (2.5 * math.pi))  # at least a few blobs per slide, whatever its size
        code = LABEL[name]
        hosts = np.isin(labels, [LABEL[c] for c in HOTSPOT_HOSTS[name]])
        painted = 0
        for _ in range(1000):
            if painted >= target:
                break
            cand = np.flatnonzero(hosts & (labels != code))
            if cand.size == 0:
                cand = np.flatnonzero(mask & (labels != code))
                if cand.size == 0:
                    break
            radius = max(1.0, min(rng.uniform(lo_um, hi_um) / label_mpp, cap))
            blob = _blob(rng, radius)
            area = int(blob.sum())
            if painted + area / 2 > target and painted > 0:
                break
            cy, cx = divmod(int(cand[rng.integers(0, cand.size)]), w)
            r = blob.shape[0] // 2
            y0, y1 = max(0, cy - r), min(h, cy + r + 1)
            x0, x1 = max(0, cx - r), min(w, cx + r + 1)
            sub = blob[y0 - (cy - r) : y1 - (cy - r), x0 - (cx - r) : x1 - (cx - r)]
            win = labels[y0:y1, x0:x1]
            paint = sub & mask[y0:y1, x0:x1] & (win != code)
            # keep planted hotspots apart from each other's kind
            for other in HOTSPOT_RADIUS_UM:
                paint &= win != LABEL[other]
            win[paint] = code
            painted += int(paint.sum())
    labels[~mask] = BACKGROUND
    return labels
