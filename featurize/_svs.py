"""Write small Aperio-style pyramidal ``.svs`` files (tiled JPEG, OpenSlide-readable) for tests and benchmarks.

Tiles are generated lazily, so a 16k × 16k slide never exists in memory. The tissue is a deterministic
H&E-like pattern (pink stroma, purple nuclei) inside ellipses; everything else is white glass.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

#: ``(x_frac, y_frac, rx_frac, ry_frac)`` ellipses (fractions of the slide size) that hold tissue by default.
DEFAULT_BLOBS = ((0.35, 0.4, 0.25, 0.3), (0.72, 0.62, 0.18, 0.25))


def he_tile(
    x0: int,
    y0: int,
    w: int,
    h: int,
    *,
    size: tuple[int, int],
    blobs: Sequence[tuple] = DEFAULT_BLOBS,
    seed: int = 0,
) -> np.ndarray:
    """H&E-like RGB pixels of the level-0 box ``(x0, y0, w, h)`` of a ``size = (W, H)`` slide.

    Returns
    -------
    np.ndarray
        ``(h, w, 3)`` uint8; white (≈ 245) outside the tissue ellipses.
    """
    W, H = size
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    inside = np.zeros((h, w), bool)
    for bx, by, rx, ry in blobs:
        inside |= ((xx - bx * W) / (rx * W)) ** 2 + ((yy - by * H) / (ry * H)) ** 2 <= 1.0
    out = np.full((h, w, 3), 245, np.uint8)
    if not inside.any():
        return out
    rng = np.random.default_rng([seed, x0, y0])
    # stroma: pink with a fibrous sinusoidal texture; nuclei: purple dots on a 12 px lattice with jitter
    fib = (np.sin(xx * 0.21 + np.sin(yy * 0.05) * 3.0) * 0.5 + 0.5).astype(np.float32)
    noise = rng.normal(0, 6, (h, w)).astype(np.float32)
    r = 225 - 25 * fib + noise
    g = 150 - 35 * fib + noise
    b = 195 - 15 * fib + noise
    nuc = ((xx % 12 - 6) ** 2 + (yy % 12 - 6) ** 2) < (9 + 6 * np.sin(xx * 0.013) * np.cos(yy * 0.017)) ** 1
    r = np.where(nuc, 95 + noise, r)
    g = np.where(nuc, 60 + noise, g)
    b = np.where(nuc, 150 + noise, b)
    tissue = np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
    out[inside] = tissue[inside]
    return out


def write_svs(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] = (4096, 3072),
    mpp: float | None = 0.25,
    tile: int = 256,
    levels: int = 3,
    pixels: Callable[[int, int, int, int], np.ndarray] | None = None,
    blobs: Sequence[tuple] = DEFAULT_BLOBS,
    seed: int = 0,
    quality: int = 85,
    app_mag: float | None = 40,
) -> Path:
    """Write an Aperio-style pyramidal SVS that OpenSlide opens as vendor ``aperio``.

    Parameters
    ----------
    size
        Level-0 ``(width, height)``.
    mpp
        Level-0 µm/px written as ``MPP = …`` in the description (None: no MPP, to test that error).
    levels
        Pyramid levels, each 4× smaller than the previous (Aperio's usual step).
    pixels
        ``f(x0, y0, w, h) -> (h, w, 3) uint8`` level-0 pixels; default :func:`he_tile`.

    Writes ``path`` (level 0 and the reduced levels as tiled JPEG, plus a stripped thumbnail page).
    """
    import tifffile

    path = Path(path)
    W, H = size
    if pixels is None:

        def pixels(x0, y0, w, h):
            return he_tile(x0, y0, w, h, size=size, blobs=blobs, seed=seed)

    desc = f"Aperio Image Library v12.0.0 \r\n{W}x{H} [0,0 {W}x{H}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    if app_mag is not None:
        desc += f"|AppMag = {app_mag:g}"
    if mpp is not None:
        desc += f"|MPP = {mpp:.4f}"

    def one_tile(ds: int, tx: int, ty: int) -> np.ndarray:
        x0, y0 = tx * ds, ty * ds
        w0, h0 = min(tile * ds, W - x0), min(tile * ds, H - y0)
        px = pixels(x0, y0, w0, h0)
        if ds > 1:
            px = np.asarray(
                Image.fromarray(px).resize((max(1, -(-w0 // ds)), max(1, -(-h0 // ds))), Image.Resampling.BOX)
            )
        t = np.full((tile, tile, 3), 245, np.uint8)
        t[: px.shape[0], : px.shape[1]] = px
        return t

    def level_tiles(ds: int, pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
        """The level's tiles in row-major order, made on ``pool`` a bounded window ahead (numpy and PIL release
        the GIL for most of the work); the bytes do not depend on the number of threads."""
        lw, lh = -(-W // ds), -(-H // ds)
        coords = [(tx, ty) for ty in range(0, lh, tile) for tx in range(0, lw, tile)]
        window: deque[Future] = deque()
        for tx, ty in coords:
            window.append(pool.submit(one_tile, ds, tx, ty))
            if len(window) > 4 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    from slide2expr.featurize._executors import usable_cores

    threads = min(16, usable_cores())
    with tifffile.TiffWriter(path, bigtiff=False) as tw, ThreadPoolExecutor(threads) as pool:
        for level in range(levels):
            ds = 4**level
            lw, lh = -(-W // ds), -(-H // ds)
            if level > 0 and min(lw, lh) < tile // 2:
                break
            tw.write(
                level_tiles(ds, pool),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                maxworkers=threads,
                description=desc
                if level == 0
                else f"Aperio Image Library v12.0.0 \r\n{lw}x{lh} -> level {level}",
                metadata=None,
            )
            if level == 0:
                thumb_w = min(768, W)
                thumb_h = max(1, round(H * thumb_w / W))
                small = pixels(0, 0, W, H) if W * H <= 4096 * 4096 // 4 else None
                if small is not None:
                    th = np.asarray(Image.fromarray(small).resize((thumb_w, thumb_h), Image.Resampling.BOX))
                else:
                    th = np.full((thumb_h, thumb_w, 3), 245, np.uint8)
                tw.write(
                    th, photometric="rgb", compression="jpeg", description="Aperio thumbnail", metadata=None
                )
    return path
