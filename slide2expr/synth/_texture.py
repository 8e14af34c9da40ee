"""H&E-like textures of the synthetic compartments, rendered as periodic stain-density atlases.

Each compartment is rendered once per cohort (and pixel size) as a square, *periodic* (toroidal) atlas of
hematoxylin and eosin optical densities at the slide's physical scale: nuclei 5–16 µm wide, collagen fibres a few
µm across, glands 100–200 µm wide. A slide then looks pixels up in the atlases by absolute position (so textures
are seamless across tiles) and turns densities into RGB with its own jittered stain vectors (Beer–Lambert), which is
how stain intensity and hue vary between slides without re-rendering any texture.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
from scipy import ndimage

#: Optical density represented by quantised level 255 of the atlases.
OD_MAX = 2.5

# Reference stain vectors (optical density per unit stain in R, G, B), fitted by eye to the CMU Aperio slide.
_H_VEC = np.array([0.55, 0.76, 0.35])
_E_VEC = np.array([0.10, 0.90, 0.42])


# ---- building blocks ---------------------------------------------------------------------------------------------


def _gauss_spectrum(n: int, sigma: float, *, angle: float | None = None, along: float = 1.0) -> np.ndarray:
    """Fourier transform of a (possibly elongated) Gaussian kernel on the (n, n) torus, rfft layout, float32."""
    ky = np.fft.fftfreq(n).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    if angle is None:
        k2 = (kx * kx + ky * ky) * np.float32(sigma**2)
    else:
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        u = (kx * c + ky * s) * np.float32(sigma * along)
        v = (ky * c - kx * s) * np.float32(sigma)
        k2 = u * u + v * v
    k2 *= np.float32(-2.0 * math.pi**2)
    return np.exp(k2, out=k2)


def periodic_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a square (n, n) array with periodic boundaries (FFT), float32."""
    spec = scipy.fft.rfft2(np.asarray(x, np.float32), workers=1)
    spec *= _gauss_spectrum(x.shape[0], sigma)
    return scipy.fft.irfft2(spec, s=x.shape, workers=1).astype(np.float32, copy=False)


def periodic_noise(
    rng: np.random.Generator, n: int, sigma: float, *, angle: float | None = None, along: float = 1.0
):
    """Periodic smooth Gaussian noise, (n, n) float32, zero mean and unit sd.

    ``sigma`` is the correlation length in px; with ``angle`` the field is stretched ``along`` times along that
    direction (fibres).
    """
    spec = scipy.fft.rfft2(rng.standard_normal((n, n), dtype=np.float32), workers=1)
    spec *= _gauss_spectrum(n, sigma, angle=angle, along=along)
    out = scipy.fft.irfft2(spec, s=(n, n), workers=1).astype(np.float32, copy=False)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


def _smoothstep(x):
    return np.clip(x, 0.0, 1.0) ** 2 * (3.0 - 2.0 * np.clip(x, 0.0, 1.0))


def _ellipse(
    a: float, b: float, theta: float, *, rng: np.random.Generator, rim: float = 0.0, grain: float = 0.25
):
    """One nucleus sprite: an ellipse with half-axes ``a`` (along ``theta``) and ``b`` in px, soft edge, chromatin grain.

    ``rim`` > 0 makes a vesicular nucleus (dark membrane, pale centre).
    """
    r = int(math.ceil(max(a, b))) + 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    c, s = math.cos(theta), math.sin(theta)
    u = xx * c + yy * s
    v = -xx * s + yy * c
    d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    edge = np.clip((1.0 - d) * min(a, b) + 0.5, 0.0, 1.0)
    val = edge * (1.0 - grain + grain * rng.random(edge.shape, dtype=np.float32))
    if rim:
        val *= 1.0 - rim * _smoothstep(1.0 - d / 0.8)
    return val.astype(np.float32)


class _Canvas:
    """A periodic (n, n) canvas with a margin, so sprites can be stamped across its edges (then folded back)."""

    def __init__(self, n: int, margin: int):
        self.n, self.m = n, margin
        self.pad = np.zeros((n + 2 * margin, n + 2 * margin), np.float32)

    def stamp(self, sprite: np.ndarray, y: int, x: int, amp: float = 1.0) -> None:
        r = sprite.shape[0] // 2
        y0, x0 = y % self.n + self.m - r, x % self.n + self.m - r
        sl = self.pad[y0 : y0 + sprite.shape[0], x0 : x0 + sprite.shape[1]]
        np.maximum(sl, sprite * amp if amp != 1.0 else sprite, out=sl)

    def folded(self) -> np.ndarray:
        n, m, p = self.n, self.m, self.pad
        np.maximum(p[n : n + m], p[:m], out=p[n : n + m])
        np.maximum(p[m : 2 * m], p[n + m :], out=p[m : 2 * m])
        np.maximum(p[:, n : n + m], p[:, :m], out=p[:, n : n + m])
        np.maximum(p[:, m : 2 * m], p[:, n + m :], out=p[:, m : 2 * m])
        return p[m : m + n, m : m + n].copy()


def _scatter(canvas: _Canvas, bank: list[np.ndarray], rng: np.random.Generator, count: int, amp=(1.0, 1.0)):
    """Stamp ``count`` sprites drawn from ``bank`` at uniform random positions."""
    n = canvas.n
    ys = rng.integers(0, n, count)
    xs = rng.integers(0, n, count)
    ids = rng.integers(0, len(bank), count)
    amps = rng.uniform(amp[0], amp[1], count)
    for y, x, i, a in zip(ys.tolist(), xs.tolist(), ids.tolist(), amps.tolist(), strict=True):
        canvas.stamp(bank[i], y, x, a)


def _round_bank(rng, r_lo: float, r_hi: float, k: int = 24, **kw) -> list[np.ndarray]:
    out = []
    for _ in range(k):
        a = rng.uniform(r_lo, r_hi)
        out.append(_ellipse(a, a * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi), rng=rng, **kw))
    return out


def _warp(rng, field: np.ndarray, amp: float, sigma: float) -> np.ndarray:
    """Periodic domain warp of ``field`` by a smooth random displacement of about ``amp`` px."""
    n = field.shape[0]
    dy = amp * periodic_noise(rng, n, sigma)
    dx = amp * periodic_noise(rng, n, sigma)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return ndimage.map_coordinates(field, [yy + dy, xx + dx], order=1, mode="grid-wrap").astype(np.float32)


def _fibres(rng, n: int, px_per_um: float):
    """Wavy collagen-like fibre field in [0, ~1.5] and the local fibre angle field."""
    a1 = rng.uniform(0, math.pi)
    a2 = a1 + rng.uniform(0.6, 1.2)
    f1 = periodic_noise(rng, n, 1.4 * px_per_um, angle=a1, along=10.0)
    f2 = periodic_noise(rng, n, 1.4 * px_per_um, angle=a2, along=10.0)
    w = 1.0 / (1.0 + np.exp(-3.0 * periodic_noise(rng, n, 50 * px_per_um)))
    f = _warp(rng, w * f1 + (1.0 - w) * f2, 9 * px_per_um, 25 * px_per_um)
    fib = np.clip(f, 0.0, None) ** 1.2
    return fib, np.where(w > 0.5, a1, a2).astype(np.float32)


# ---- compartments ------------------------------------------------------------------------------------------------


def _tumour(rng, n, ppu):
    fib, _ = _fibres(rng, n, ppu)
    h = np.full((n, n), 0.05, np.float32)
    e = (0.22 + 0.22 * fib).astype(np.float32)
    spacing_um = rng.uniform(110, 150)
    sp = spacing_um * ppu
    r_max = int(sp * 0.75) + 4
    outer = _Canvas(n, r_max)
    ring = _Canvas(n, r_max)
    lumen_sec = _Canvas(n, r_max)
    nuclei = _Canvas(n, int(8 * ppu) + 4)
    angles = np.linspace(0, math.pi, 16, endpoint=False)
    nbank = [[_ellipse(5.5 * ppu * s, 2.0 * ppu * s, t, rng=rng) for t in angles] for s in (0.85, 1.0, 1.15)]
    # random close packing of gland centres on the torus (dart throwing)
    centres = np.empty((0, 2))
    for _ in range(int(40 * (n / sp) ** 2)):
        c = rng.uniform(0, n, 2)
        if centres.size:
            d = np.abs(centres - c)
            d = np.minimum(d, n - d)
            if (np.hypot(d[:, 0], d[:, 1]) < 0.9 * sp).any():
                continue
        centres = np.vstack([centres, c])
    for cy, cx in centres.tolist():
        big = rng.uniform(0.36, 0.45) * sp
        thick = min(rng.uniform(20, 30) * ppu, big * 0.75)
        harm = [(rng.integers(2, 6), rng.uniform(0.03, 0.10), rng.uniform(0, 2 * math.pi)) for _ in range(3)]
        win = int(big * 1.35) + 2
        yy, xx = np.mgrid[-win : win + 1, -win : win + 1].astype(np.float32)
        iy, ix = int(round(cy)), int(round(cx))
        yy += iy - cy
        xx += ix - cx
        th = np.arctan2(yy, xx)
        rad = np.full_like(th, big)
        for f, a, p in harm:
            rad *= 1.0 + a * np.sin(f * th + p)
        d = np.sqrt(yy**2 + xx**2)
        out_m = np.clip(rad - d + 0.5, 0, 1)
        in_m = np.clip((rad - thick) - d + 0.5, 0, 1)
        outer.stamp(out_m, iy, ix)
        ring.stamp(out_m - in_m, iy, ix)
        lumen_sec.stamp(in_m * np.clip(0.5 + 0.5 * rng.standard_normal(in_m.shape), 0, 1), iy, ix)
        # columnar nuclei along the ring, oriented radially, crowded (pseudostratified)
        circ = 2 * math.pi * (big - thick / 2)
        cnt = int(circ / (2.2 * ppu))
        ths = rng.uniform(0, 2 * math.pi, cnt)
        rfac = np.ones(cnt)
        for f, a, p in harm:
            rfac *= 1.0 + a * np.sin(f * ths + p)
        rr = big * rfac - thick * rng.uniform(0.25, 0.75, cnt)
        for t, r_ in zip(ths.tolist(), rr.tolist(), strict=True):
            ai = int(round((t % math.pi) / math.pi * 16)) % 16
            spr = nbank[rng.integers(0, 3)][ai]
            nuclei.stamp(
                spr,
                iy + int(round(r_ * math.sin(t))),
                ix + int(round(r_ * math.cos(t))),
                rng.uniform(0.9, 1.3),
            )
    outer_m, ring_m, sec = outer.folded(), ring.folded(), lumen_sec.folded()
    sec = periodic_blur(sec, 2.0 * ppu)
    cyto_grain = 0.85 + 0.15 * periodic_noise(rng, n, 1.5 * ppu)
    e = e * (1 - outer_m) + ring_m * 0.36 * cyto_grain + 0.10 * sec
    h = h * (1 - outer_m) + ring_m * 0.30 * cyto_grain + 0.04 * sec
    # stroma nuclei between glands
    st = _Canvas(n, int(8 * ppu) + 4)
    sbank = [_ellipse(5 * ppu, 1.4 * ppu, t, rng=rng) for t in angles]
    _scatter(st, sbank, rng, int((n / ppu) ** 2 / 900), amp=(0.8, 1.1))
    nuc = np.maximum(nuclei.folded(), st.folded() * (1 - outer_m))
    return h + 1.2 * nuc, e * (1 - 0.6 * np.clip(nuc, 0, 1))


def _stroma(rng, n, ppu):
    fib, ang = _fibres(rng, n, ppu)
    gaps = _smoothstep(1.2 + periodic_noise(rng, n, 6 * ppu))
    e = (0.08 + 0.36 * fib) * (0.45 + 0.55 * gaps) + 0.05
    h = np.full((n, n), 0.03, np.float32) + 0.02 * fib
    canvas = _Canvas(n, int(9 * ppu) + 4)
    angles = np.linspace(0, math.pi, 16, endpoint=False)
    bank = [_ellipse(rng.uniform(5, 8) * ppu, rng.uniform(1.1, 1.6) * ppu, t, rng=rng) for t in angles]
    count = int((n / ppu) ** 2 / 700)
    ys = rng.integers(0, n, count)
    xs = rng.integers(0, n, count)
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
        ai = int(round(float(ang[y, x]) / math.pi * 16)) % 16
        canvas.stamp(bank[ai], y, x, rng.uniform(0.8, 1.2))
    nuc = canvas.folded()
    return h + 1.1 * nuc, e * (1 - 0.5 * np.clip(nuc, 0, 1))


def _lymphocytes(rng, n, ppu):
    fib, _ = _fibres(rng, n, ppu)
    e = 0.20 + 0.16 * fib
    h = np.full((n, n), 0.06, np.float32)
    canvas = _Canvas(n, int(6 * ppu) + 4)
    bank = _round_bank(rng, 2.5 * ppu, 3.3 * ppu)
    r2 = (2.9 * ppu) ** 2 * math.pi
    # clustered density: more cells where a smooth field is high
    dens = periodic_noise(rng, n, 25 * ppu)
    count = int(0.32 * n * n / r2)
    ys = rng.integers(0, n, count * 2)
    xs = rng.integers(0, n, count * 2)
    keep = rng.random(count * 2) < 1 / (1 + np.exp(-1.5 * dens[ys, xs]))
    for y, x in zip(ys[keep].tolist(), xs[keep].tolist(), strict=True):
        canvas.stamp(bank[rng.integers(0, len(bank))], y, x, rng.uniform(1.1, 1.4))
    # a few larger pale macrophage / plasma cell nuclei
    big = _round_bank(rng, 3.8 * ppu, 4.6 * ppu, k=8, rim=0.4)
    _scatter(canvas, big, rng, int(count * 0.04), amp=(0.7, 0.9))
    nuc = canvas.folded()
    return h + 1.3 * nuc, e * (1 - 0.7 * np.clip(nuc, 0, 1))


def _tls(rng, n, ppu):
    e = 0.14 + 0.04 * periodic_noise(rng, n, 3 * ppu)
    h = 0.22 + 0.03 * periodic_noise(rng, n, 3 * ppu)
    canvas = _Canvas(n, int(6 * ppu) + 4)
    bank = _round_bank(rng, 2.3 * ppu, 2.9 * ppu)
    r2 = (2.6 * ppu) ** 2 * math.pi
    _scatter(canvas, bank, rng, int(0.95 * n * n / r2), amp=(1.3, 1.7))
    nuc = canvas.folded()
    return h + 1.4 * nuc, e * (1 - 0.6 * np.clip(nuc, 0, 1))


def _mucin(rng, n, ppu):
    a = rng.uniform(0, math.pi)
    w1 = np.clip(periodic_noise(rng, n, 2.5 * ppu, angle=a, along=10.0), 0, None)
    w2 = np.clip(periodic_noise(rng, n, 6 * ppu, angle=a + 0.6, along=6.0), 0, None)
    pools = _smoothstep(0.8 + 0.6 * periodic_noise(rng, n, 30 * ppu))
    wisp = (0.5 * w1 + 0.5 * w2) * pools
    h = (0.10 + 0.16 * wisp).astype(np.float32)
    e = (0.04 + 0.06 * wisp).astype(np.float32)
    # a few floating clusters of tumour cells
    canvas = _Canvas(n, int(12 * ppu) + 4)
    bank = _round_bank(rng, 3.0 * ppu, 4.0 * ppu, k=12)
    area_um2 = (n / ppu) ** 2
    for _ in range(int(area_um2 / 12000)):
        cy, cx = rng.integers(0, n, 2)
        for _ in range(int(rng.integers(3, 8))):
            dy, dx = rng.normal(0, 5 * ppu, 2)
            canvas.stamp(
                bank[rng.integers(0, len(bank))], int(cy + dy) % n, int(cx + dx) % n, rng.uniform(0.8, 1.1)
            )
    nuc = canvas.folded()
    cyto = periodic_blur(nuc, 3 * ppu)
    return h + 1.1 * nuc + 0.3 * cyto, e + 0.8 * cyto


def _necrosis(rng, n, ppu):
    blotch = periodic_noise(rng, n, 8 * ppu)
    e = 0.34 + 0.12 * blotch + 0.05 * periodic_noise(rng, n, 1.5 * ppu)
    h = 0.16 + 0.06 * periodic_noise(rng, n, 12 * ppu)
    canvas = _Canvas(n, int(6 * ppu) + 4)
    frag = _round_bank(rng, 0.6 * ppu, 1.8 * ppu, grain=0.1)
    area = (n / ppu) ** 2
    # fragments cluster around dead cells
    centres = int(area / 120)
    ys = rng.integers(0, n, centres)
    xs = rng.integers(0, n, centres)
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
        for _ in range(int(rng.integers(1, 5))):
            dy, dx = rng.normal(0, 2.5 * ppu, 2)
            canvas.stamp(
                frag[rng.integers(0, len(frag))], int(y + dy) % n, int(x + dx) % n, rng.uniform(0.7, 1.2)
            )
    ghosts = _round_bank(rng, 3.0 * ppu, 4.0 * ppu, k=8, rim=0.8)
    _scatter(canvas, ghosts, rng, int(area / 400), amp=(0.2, 0.35))
    nuc = canvas.folded()
    return h + 1.1 * nuc, e


def _high_grade(rng, n, ppu):
    e = 0.46 + 0.08 * periodic_noise(rng, n, 2 * ppu)
    h = 0.20 + 0.05 * periodic_noise(rng, n, 6 * ppu)
    # thin retraction clefts between cell nests
    clefts = 1.0 - 0.8 * np.exp(-((periodic_noise(rng, n, 18 * ppu) / 0.05) ** 2))
    e = e * clefts
    h = h * clefts
    canvas = _Canvas(n, int(10 * ppu) + 4)
    bank = []
    for _ in range(32):
        a = rng.uniform(5.0, 8.0) * ppu
        spr = _ellipse(a, a * rng.uniform(0.65, 0.95), rng.uniform(0, math.pi), rng=rng, rim=0.45)
        # a nucleolus off centre
        c = spr.shape[0] // 2
        oy, ox = (rng.uniform(-0.3, 0.3, 2) * a).astype(int)
        rr = max(1, int(0.9 * ppu))
        spr[c + oy - rr : c + oy + rr + 1, c + ox - rr : c + ox + rr + 1] = np.maximum(
            spr[c + oy - rr : c + oy + rr + 1, c + ox - rr : c + ox + rr + 1], 1.5
        )
        bank.append(spr)
    r2 = (6.5 * ppu) ** 2 * math.pi * 0.8
    _scatter(canvas, bank, rng, int(0.6 * n * n / r2), amp=(0.9, 1.25))
    nuc = canvas.folded() * clefts
    return h + 1.0 * nuc, e * (1 - 0.4 * np.clip(nuc, 0, 1))


_RENDERERS = {
    "tumour": _tumour,
    "stroma": _stroma,
    "lymphocytes": _lymphocytes,
    "mucin": _mucin,
    "necrosis": _necrosis,
    "tls": _tls,
    "high_grade": _high_grade,
}


def render_atlas(name: str, *, size: int, mpp: float, seed) -> np.ndarray:
    """Render compartment ``name`` as a periodic atlas of quantised stain densities.

    Parameters
    ----------
    name : a tissue compartment (see ``COMPARTMENTS``).
    size : atlas side in px (a multiple of the slide's tile size, so tiles never straddle the wrap).
    mpp : µm per px of the slide level the atlas is sampled at (textures keep their physical size).
    seed : anything ``numpy.random.default_rng`` accepts.

    Returns
    -------
    (2, size, size) uint8: hematoxylin and eosin optical density, ``OD_MAX`` at 255.
    """
    rng = np.random.default_rng(seed)
    h, e = _RENDERERS[name](rng, size, 1.0 / mpp)
    blur = 0.35 / mpp  # optics: a slight blur of about a third of a µm
    h = periodic_blur(h, blur)
    e = periodic_blur(e, blur)
    out = np.empty((2, size, size), np.uint8)
    np.clip(np.rint(h * (255.0 / OD_MAX)), 0, 255, out=h)
    np.clip(np.rint(e * (255.0 / OD_MAX)), 0, 255, out=e)
    out[0] = h
    out[1] = e
    return out


def stain_lut(rng: np.random.Generator, *, jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Beer–Lambert lookup table from quantised (H, E) densities to RGB, with this slide's stain jitter.

    Returns
    -------
    lut : (256, 256, 3) uint8, indexed ``lut[h_q, e_q]``.
    background : (3,) uint8, the colour of empty glass.
    """
    hv, ev = _H_VEC.copy(), _E_VEC.copy()
    sh, se = 1.15, 1.45
    bg = np.array([247.0, 247.0, 247.0])
    if jitter:
        hv = np.clip(hv + rng.normal(0, 0.04, 3), 0.05, None)
        ev = np.clip(ev + rng.normal(0, 0.04, 3), 0.02, None)
        sh *= rng.uniform(0.85, 1.15)
        se *= rng.uniform(0.8, 1.2)
        bg = bg + rng.uniform(-4, 4) + rng.uniform(-2, 2, 3)
    hv /= np.linalg.norm(hv)
    ev /= np.linalg.norm(ev)
    od = np.arange(256) * (OD_MAX / 255.0)
    tot = (od[:, None, None] * hv * sh) + (od[None, :, None] * ev * se)
    lut = np.clip(np.rint(bg * np.exp(-tot)), 0, 255).astype(np.uint8)
    return lut, np.clip(np.rint(bg), 0, 255).astype(np.uint8)
