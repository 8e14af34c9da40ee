"""``stain-texture``: a weight-free encoder of stain and multi-scale texture statistics, fast on a CPU.

A tile is unmixed into haematoxylin / eosin / DAB optical densities (Ruifrok & Johnston colour deconvolution, the
matrix scikit-image uses), then described by

- stain statistics: mean, std and quantiles of each OD channel and of the total OD; background, dark,
  haematoxylin- and eosin-dominant pixel fractions; RGB means and saturation; the H–E correlation;
- a fixed Gaussian-derivative filter bank on the H and E channels at scales σ = 1, 2, 4, 8 px (σ = 1 on each level
  of a 2× average-pooled pyramid): gradient magnitude (mean and RMS), scale-normalised Laplacian of Gaussian
  (positive part = OD blobs such as nuclei, negative part = gaps and lumina, spread), the energy left at each
  scale, and structure-tensor coherence in 8×8 blocks (oriented fibres of stroma);
- nuclei-sized blob detection on H (local maxima of the scale-normalised LoG at σ = 1.5, 2.5, 4, 6 px): density
  per 1000 px and mean strength;
- spatial autocorrelation of H and E at lags of 2, 4, 8 and 16 px.

These separate the compartments of H&E tissue: glands (H-rich, medium blobs, lumen gaps), stroma (E-rich,
coherent orientation), lymphocyte-dense regions (dense small dark blobs), mucin (pale, low OD, little texture),
necrosis (E-rich with fragmented debris). Filters run as "valid" separable convolutions written as products with
banded matrices (BLAS-fast on a CPU, no padding artefacts); statistics cover the valid interior.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Texture scales (px at the input resolution): σ = 1 on each level of a 2× average-pooled pyramid.
SIGMAS = (1.0, 2.0, 4.0, 8.0)
#: Blob (nucleus) scales as (pyramid level, σ at that level): σ = 1.5, 2.5, 4 and 6 px at the input resolution.
BLOB_SCALES = ((0, 1.5), (1, 1.25), (1, 2.0), (2, 1.5))
BLOB_SIGMAS = tuple(s * 2**lvl for lvl, s in BLOB_SCALES)
LAGS = (2, 4, 8, 16)
QUANTILES = (0.1, 0.5, 0.9)
#: summed optical density below which a pixel is glass, and above which it is dark (dense nuclei, pigment, folds)
GLASS_OD, DARK_OD = 0.15, 1.5
#: a blob is a local maximum of the scale-normalised Laplacian of Gaussian above this (weaker maxima are noise)
BLOB_MIN_LOG = 0.05
INPUT_SIZE = 224
_BANK = ("grad_mean", "grad_rms", "log_pos", "log_neg", "log_std", "energy", "coherence")


def feature_names() -> list[str]:
    """Names of the ``stain-texture`` dimensions, in output order."""
    names: list[str] = []
    for ch in ("H", "E", "D", "OD"):
        names += [f"{ch}_mean", f"{ch}_std"] + [f"{ch}_q{int(q * 100):02d}" for q in QUANTILES]
    names += ["frac_background", "frac_dark", "frac_H_dominant", "frac_E_dominant"]
    names += ["R_mean", "G_mean", "B_mean", "sat_mean", "sat_std", "corr_H_E"]
    for ch in ("H", "E"):
        for s in SIGMAS:
            names += [f"{ch}_s{s:g}_{stat}" for stat in _BANK]
    for s in BLOB_SIGMAS:
        names += [f"blob_s{s:g}_density", f"blob_s{s:g}_strength"]
    for ch in ("H", "E"):
        names += [f"{ch}_acorr_lag{lag}" for lag in LAGS]
    return names


DIM = len(feature_names())


def _banded(n: int, sigma: float, *, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(n, n - 2r)`` matrices applying the Gaussian, its first and its second derivative ("valid" mode)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    d1 = -t / sigma**2 * g  # d/dx G
    d2 = (t**2 / sigma**4 - 1 / sigma**2) * g  # d²/dx² G
    d2 -= d2.mean()  # zero response to a constant, as the continuous kernel
    out = n - 2 * r
    mats = []
    for k in (g, d1, d2):
        m = torch.zeros(n, out, dtype=torch.float64)
        for j in range(out):
            # correlation: output j sees inputs j .. j+2r; flip so the derivative sign is d/dx
            m[j : j + 2 * r + 1, j] = k.flip(0)
        mats.append(m.to(device=device, dtype=torch.float32))
    return mats[0], mats[1], mats[2]


def _moments_std(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    mean = x.mean(dims)
    return (x.square().mean(dims) - mean.square()).clamp_min(0.0).sqrt()


def _local_max(x: Tensor, k: int) -> Tensor:
    """Separable ``k × k`` running maximum over the last two dims ("valid" mode: ``k - 1`` px smaller)."""
    w = x.shape[-1] - k + 1
    m = x[..., :w]
    for i in range(1, k):
        m = torch.maximum(m, x[..., i : i + w])
    h = m.shape[-2] - k + 1
    out = m[..., :h, :]
    for i in range(1, k):
        out = torch.maximum(out, m[..., i : i + h, :])
    return out


class StainTexture(nn.Module):
    """The hand-crafted backbone: ``(B, 3, H, W)`` float RGB in [0, 1] → ``(B, DIM)`` float32.

    Weight-free (no parameters, nothing in its state dict). Runs in float32 whatever autocast is active, since
    quantiles and small OD differences need the precision. Inputs of at least 64 × 64 px are expected.
    """

    def __init__(self) -> None:
        super().__init__()
        from skimage.color import hed_from_rgb

        self.register_buffer(
            "hed_from_rgb", torch.as_tensor(hed_from_rgb, dtype=torch.float32), persistent=False
        )
        self._mats: dict[tuple[int, float, str], tuple[Tensor, Tensor, Tensor]] = {}
        self.num_features = DIM
        self.feature_names = feature_names()
        # read by timm.data.resolve_model_data_config: the input is plain RGB in [0, 1]
        self.pretrained_cfg = {
            "input_size": (3, INPUT_SIZE, INPUT_SIZE),
            "interpolation": "bilinear",
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "crop_pct": 1.0,
            "crop_mode": "center",
        }

    def _filters(self, n: int, sigma: float, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        key = (n, sigma, str(device))
        if key not in self._mats:
            self._mats[key] = _banded(n, sigma, device=device)
        return self._mats[key]

    def _derivatives(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gaussian-smoothed ``x`` and its σ-normalised gradient (gx, gy) and Laplacian, all "valid"."""
        gh, d1h, d2h = self._filters(x.shape[-1], sigma, x.device)
        gv, d1v, d2v = self._filters(x.shape[-2], sigma, x.device)
        a = x @ gh  # smooth along x
        g = gv.T @ a
        gx = gv.T @ (x @ d1h)
        gy = d1v.T @ a
        lap = gv.T @ (x @ d2h) + d2v.T @ a
        return g, sigma * gx, sigma * gy, (sigma * sigma) * lap

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 64:
            raise ValueError(f"stain-texture needs tiles of at least 64 × 64 px, got {tuple(x.shape[-2:])}")
        with torch.autocast(x.device.type, enabled=False):
            return self._features(x.float())

    def _features(self, rgb: Tensor) -> Tensor:
        b = rgb.shape[0]
        rgb = rgb.clamp(0.0, 1.0)
        od = -torch.log((rgb * 255.0 + 1.0) / 256.0)  # (B, 3, H, W), ≥ 0
        hed = torch.einsum("bchw,cd->bdhw", od, self.hed_from_rgb).clamp_min(0.0)  # H, E, D
        od_sum = od.sum(dim=1, keepdim=True)
        feats = _stain_features(rgb, hed, od_sum)

        he = hed[:, :2]  # (B, 2, H, W)
        pyramid = [he]
        for _ in SIGMAS[1:]:
            pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
        bank = []
        for level in pyramid:  # σ = 1 at each level: 1, 2, 4, 8 px at the input resolution
            g, gx, gy, lap = self._derivatives(level, 1.0)
            mag2 = gx * gx + gy * gy
            log = -lap
            # structure tensor averaged in 8×8 blocks (4×4 on the coarsest levels); coherence 0 (isotropic)..1
            blk = 8 if min(gx.shape[-2:]) >= 32 else 4
            jxx, jyy, jxy = (F.avg_pool2d(t, blk, ceil_mode=True) for t in (gx * gx, gy * gy, gx * gy))
            coh = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)
            bank.append(
                torch.stack(
                    [
                        mag2.sqrt().mean((2, 3)),
                        mag2.mean((2, 3)).sqrt(),
                        log.clamp_min(0).mean((2, 3)),
                        (-log).clamp_min(0).mean((2, 3)),
                        _moments_std(log, (2, 3)),
                        _moments_std(g, (2, 3)),
                        coh.mean((2, 3)),
                    ],
                    dim=2,
                )
            )  # (B, 2, 7)
        feats.append(torch.stack(bank, dim=2).reshape(b, -1))  # channel-major, then scale, then stat

        blobs = []
        area = float(he.shape[-2] * he.shape[-1])
        for lvl, s in BLOB_SCALES:
            _, _, _, lap = self._derivatives(pyramid[lvl][:, :1], s)
            log = -lap
            k = 2 * int(math.ceil(s)) + 1
            inner = log[..., k // 2 : log.shape[-2] - k // 2, k // 2 : log.shape[-1] - k // 2]
            peak = (inner == _local_max(log, k)) & (inner > BLOB_MIN_LOG)
            n = peak.float().sum((1, 2, 3))
            scale = 1000.0 / area  # peaks per 1000 px of the input (the same area at every level)
            blobs.append(torch.stack([n * scale, (inner * peak).sum((1, 2, 3)) / n.clamp_min(1)], 1))
        feats.append(torch.cat(blobs, 1))

        feats.append(_autocorrelation(he))
        return torch.cat(feats, dim=1)


def _stain_features(rgb: Tensor, hed: Tensor, od_sum: Tensor) -> list[Tensor]:
    """Stain and colour features: per H, E, D and total optical density its mean, std and quantiles; the shares of
    glass, dark, haematoxylin- and eosin-dominated pixels; mean RGB, saturation and the H–E correlation."""
    b = rgb.shape[0]
    feats: list[Tensor] = []
    chans = torch.cat([hed, od_sum], dim=1)  # (B, 4, H, W)
    small = F.avg_pool2d(chans, 4).flatten(2)  # quantiles of 4×4 means: 1/16 of the sorting
    q = torch.quantile(small, torch.tensor(QUANTILES, device=rgb.device), dim=2)  # (3, B, 4)
    stats = torch.stack([chans.mean((2, 3)), _moments_std(chans, (2, 3))], dim=0)  # (2, B, 4)
    feats.append(torch.cat([stats, q], dim=0).permute(1, 2, 0).reshape(b, -1))  # per channel: mean, std, q…

    h, e = hed[:, 0], hed[:, 1]
    fg = od_sum[:, 0] > GLASS_OD
    feats.append(
        torch.stack(
            [
                (~fg).float().mean((1, 2)),
                (od_sum[:, 0] > DARK_OD).float().mean((1, 2)),
                (fg & (h > e)).float().mean((1, 2)),
                (fg & (e >= h)).float().mean((1, 2)),
            ],
            dim=1,
        )
    )
    mx, mn = rgb.amax(1), rgb.amin(1)
    sat = (mx - mn) / mx.clamp_min(1e-3)
    cov = (h * e).mean((1, 2)) - h.mean((1, 2)) * e.mean((1, 2))
    corr = cov / (_moments_std(h, (1, 2)) * _moments_std(e, (1, 2)) + 1e-6)
    feats.append(
        torch.cat(
            [
                rgb.mean((2, 3)),
                sat.mean((1, 2))[:, None],
                _moments_std(sat, (1, 2))[:, None],
                corr[:, None],
            ],
            1,
        )
    )

    return feats


def _autocorrelation(he: Tensor) -> Tensor:
    """Autocorrelation of the H and E channels at :data:`LAGS` (periodic texture such as glands)."""
    centred = he - he.mean((2, 3), keepdim=True)
    var = centred.square().mean((2, 3)) + 1e-6
    ac = []
    for lag in LAGS:
        cx = (centred[..., :, lag:] * centred[..., :, :-lag]).mean((2, 3))
        cy = (centred[..., lag:, :] * centred[..., :-lag, :]).mean((2, 3))
        ac.append(0.5 * (cx + cy) / var)
    return torch.stack(ac, dim=2).reshape(he.shape[0], -1)


def build_stain_texture(spec: object, *, depth: int | None = None) -> StainTexture:
    """Builder for the registry (``depth`` does not apply)."""
    return StainTexture()
