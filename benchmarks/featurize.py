"""Featurization benchmark; prints JSON.

Measures, in one run on the same device, batch size and encoder:

- ``end_to_end_tiles_per_s``: :func:`featurize.featurize_cohort` on a synthetic slide (tissue detection, reading in
  worker processes, embedding, writing), tiles ÷ wall seconds;
- ``encoder_only_tiles_per_s``: the encoder on pre-decoded uint8 tensors (mean of a run before and after);
- their ratio (target ≥ 0.9; ≥ 0.95 with a heavy encoder);
- on a CPU, ``encoder_busy_fraction_runs``: the share of each end-to-end run spent in the encoder's forward passes
  (measured within the run, so it holds on a machine whose speed drifts between runs, where the ratio does not);
- with reader processes (``--workers`` ≥ 1), ``reader_cpu_ms_per_tile_runs``: their CPU time per tile in each
  end-to-end run (planning included; beside a GPU it says how far the readers are from saturating their cores);
- ``read_tiles_per_s_per_worker``: read + decode + resize in one process, as a worker does it (row runs of tiles
  read as one region), and ``openslide_read_region_tiles_per_s``: OpenSlide's plain per-tile ``read_region`` +
  RGBA→RGB + resize, for reference;
- ``peak_rss_mb`` of the main process and of its largest child (a reader process, or g++ while compiling); the
  synthetic slide is written in a child process of its own on first use, so it counts in neither.

Examples::

    python benchmarks/featurize.py --encoder efficientnet-lite0 --size 15000 --slide-mpp 0.5 --mpp 0.5 --tile-px 224
    python benchmarks/featurize.py --encoder resnet50-trunc --size 16384 --slide-mpp 0.25 --mpp 0.5 --tile-px 256

Figures measured with this benchmark (on the 2-core AVX2 development machine unless said otherwise), on which
featurize's defaults and speed tricks rest:

- OpenMP spinning (``featurize/_tuning.py``): libgomp's default 300,000 spin rounds (5–10 ms) held a core after
  every forward pass, so in-process reading ran at one core's speed (952 against 1,389 tiles/s); 10,000 rounds
  (≈ 0.2 ms) left resnet50-trunc's encoder-only speed within the machine's noise (median 75.8 against 73.8
  tiles/s over six alternating runs), 1,000 rounds cost ≈ 5 %.
- Heap trimming: 0.8–1.3 million page faults per 4 s of encoder time, 8–29 % of the CPU time in the kernel;
  keeping freed memory took resnet50-trunc encoder-only from 76–79 to 101–104 tiles/s and efficientnet-lite0 from
  178–186 to 312–318 tiles/s (bf16, batch 8), at the same peak RSS (849–883 MB against 859–876 MB).
- Reading threads' torch calls as a team of their own outnumbered the cores, and libgomp then stopped spinning for
  the encoder's barriers too: efficientnet-lite0 at 112 px ran at half speed.
- ``torch.compile`` on the CPU: compiling takes 8–40 s once per process (10–20 s for the CNNs; about half with a
  warm Inductor cache) and then saves 16–33 % of a CNN's time (fp32, batch 8: resnet50-trunc 23.1–23.6 tiles/s
  against 19.6–20.0 eager, efficientnet-lite0 86 against 72, resnet18 45 against 41), so it pays from 40–70 s of
  eager work with a warm cache and 60–125 s with a cold one: ``COMPILE_MIN_EAGER_SECONDS`` is 60 s (resnet50-trunc,
  2,328 tiles at 22 tiles/s, ≈ 105 s, compiles; efficientnet-lite0, one 2,562-tile slide at 78 tiles/s, ≈ 33 s,
  does not). The weight-free encoder took 38 s to compile for 8 %.
- Default batch sizes: small CPU batches beat large ones on 2 cores; on an H200, 256 beat 64 by 8 % (ViT-L/16,
  2,912 against 2,695 tiles/s), 64 % (efficientnet-lite0) and 75 % (ResNet50).
- Reading beside the encoder on 2 cores (resnet50-trunc, 40x slide at 20x / 256 px): end-to-end ÷ encoder-only
  0.926–0.936 reading in-process against 0.837–0.851 with one reader process; bursts of 4 to 32 chunks measured
  the same.
- Decoding JPEG-tiled levels directly is ≈ 3–4× faster than OpenSlide's ``read_region``; a 128 MiB OpenSlide cache
  shared by a slide's handles read a 40,000 px wide 20x slide at 224 px 1.19× faster; a count-limited cache of
  64–96 decoded tiles decoded each JPEG tile of that slide twice; with a decoded-tile cache per reading thread the
  demo cohort's featurize ran at 0.6× its single-thread speed; row runs dealt to 8 reader processes decoded 1.59
  JPEG tiles per 224 px tile against 0.79 for one reader (blocks of rows decode them once).
- torch's antialiased bilinear resize of uint8 batches is ≈ 5× faster than PIL's.
- Tissue detection's lookup tables: ≈ 0.25 GB instead of ≈ 0.9 GB at the peak on a 2,875² thumbnail (a 23 mm slide
  at 8 µm/px); numpy's reduction over a last axis of 3 ran ≈ 20× slower than channel by channel.
- The QC PNG at zlib level 1: 13 ms against 54 ms at the default 6, 12 % larger.
- One 38,000-tile chunk of 1,280-d embeddings took 430 MB of Parquet levels beside the 186 MB of embeddings at the
  write; in chunks, 130 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from slide2expr import featurize  # noqa: E402 - before torch: sets GOMP_SPINCOUNT (see featurize/_tuning.py)
from slide2expr.featurize import FeaturizeOptions, featurize_cohort  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"
#: Large ellipses: most of the slide is tissue, some glass remains for the tissue detector to find.
BLOBS = ((0.3, 0.3, 0.28, 0.28), (0.7, 0.35, 0.25, 0.3), (0.35, 0.72, 0.3, 0.25), (0.72, 0.72, 0.25, 0.25))


def synthetic_slide_path(size: int, slide_mpp: float) -> Path:
    return WORK / f"bench_{size}_{slide_mpp:.2f}.svs"


def synthetic_slide(size: int, slide_mpp: float, *, here: bool = False) -> Path:
    """The benchmark slide, written on first use: in a child process unless ``here``, so the peak RSS this
    process reports is featurizing's, not the slide writer's (≈ 2.6 GB for a 16 k slide)."""
    path = synthetic_slide_path(size, slide_mpp)
    if path.exists():
        return path
    if not here:
        cmd = [sys.executable, __file__, "--make-slide", "--size", str(size), "--slide-mpp", str(slide_mpp)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return path
    from slide2expr.featurize._svs import write_svs

    WORK.mkdir(exist_ok=True)
    write_svs(path, size=(size, size), mpp=slide_mpp, levels=3, blobs=BLOBS, seed=7, quality=80)
    return path


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's children that have exited and been waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def copies(path: Path, n: int) -> list:
    """``n`` slide ids (``copy000``…, one patient each) for the same file: a cohort made of one slide."""
    return [featurize.SlideInput(path=path, slide_id=f"copy{i:03d}", patient_id=f"p{i}") for i in range(n)]


def encoder_only(
    enc, tiles: np.ndarray, *, batch: int, autocast_dtype, device: str, seconds: float = 8.0
) -> float:
    import torch

    x_all = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    dev = torch.device(device)
    if dev.type != "cpu":
        x_all = x_all.to(dev)
    ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None else None
    n = 0
    with torch.inference_mode():
        if ctx is not None:
            ctx.__enter__()
        try:
            enc(x_all[:batch]).float().cpu()  # warm-up
            t0 = time.perf_counter()
            i = 0
            while time.perf_counter() - t0 < seconds or n < 4 * batch:
                s = (i * batch) % max(1, len(x_all) - batch + 1)
                enc(x_all[s : s + batch]).float().cpu().numpy()
                n += batch
                i += 1
            el = time.perf_counter() - t0
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    return n / el


def encoder_gflop(enc, out_px: int, *, device: str, autocast_dtype) -> float | None:
    """Floating-point operations of one tile's forward pass, in GFLOP (a multiply-add counts 2), from torch's
    operator-level counter; None where it cannot count the encoder."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, 3, out_px, out_px), dtype=torch.uint8, device=device)
    ctx = torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype else None
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            if ctx is not None:
                with ctx:
                    enc(x)
            else:
                enc(x)
    except Exception:  # noqa: BLE001 - a figure for the report, not the benchmark's point
        return None
    return fc.get_total_flops() / 1e9 or None


def matmul_gflops(*, device: str, dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """The device's dense-math rate, GFLOP/s: square ``n`` matmuls in ``dtype`` (fp32 on a CPU without bf16),
    best of five timings; the yardstick for how close the encoder runs to what the device can compute."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    for _ in range(5):
        t0, k = time.perf_counter(), 0
        while k < 2 or time.perf_counter() - t0 < seconds / 5:
            a @ b
            k += 1
        sync()
        best = max(best, k * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        if time.perf_counter() > t_end:
            break
    return best


def read_rate(
    path: Path, grid, *, level: int, out_px: int, chunk: int, n_max: int
) -> tuple[float, np.ndarray]:
    import torch

    from slide2expr.featurize._plan import make_chunks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per worker: a reader process runs one thread (the resize is torch's)
    r = featurize.open_slide(path)
    chunks = make_chunks(grid, max_tiles=chunk)
    keep = []
    n = 0
    t0 = time.perf_counter()
    for c in chunks:
        t = r.read_tiles(
            grid.x[c.start : c.stop], grid.y[c.start : c.stop], grid.w0, grid.h0, level=level, out_px=out_px
        )
        n += len(t)
        if sum(len(k) for k in keep) < 512:
            keep.append(t)
        if n >= n_max:
            break
    el = time.perf_counter() - t0
    r.close()
    torch.set_num_threads(threads)
    return n / el, np.concatenate(keep)


def openslide_rate(path: Path, grid, *, level: int, out_px: int, n_max: int) -> float:
    import openslide
    from PIL import Image

    o = openslide.OpenSlide(str(path))
    d = o.level_downsamples[level]
    lw = round(grid.w0 / d)
    n = min(n_max, len(grid))
    t0 = time.perf_counter()
    for i in range(n):
        im = o.read_region((int(grid.x[i]), int(grid.y[i])), level, (lw, lw)).convert("RGB")
        if lw != out_px:
            im = im.resize((out_px, out_px), Image.Resampling.BILINEAR)
        np.asarray(im)
    el = time.perf_counter() - t0
    o.close()
    return n / el


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument(
        "--size",
        type=int,
        default=15000,
        help="synthetic slide side, level-0 px (15,000 at 0.5 µm/px: ≈ 3,400 tiles)",
    )
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="level-0 µm/px of the synthetic slide")
    ap.add_argument(
        "--slide", type=Path, default=None, help="benchmark this slide instead of a synthetic one"
    )
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument(
        "--compile",
        default="auto",
        choices=("auto", "on", "off"),
        help="featurize's compile= (the encoder-only runs use the encoder the end-to-end run used)",
    )
    ap.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="load real weights (speed does not depend on them; default: random init)",
    )
    ap.add_argument("--encoder-seconds", type=float, default=8.0)
    ap.add_argument(
        "--copies",
        type=int,
        default=1,
        help="end to end: featurize the slide this many times, as that many slide ids (a cohort; GPUs need it)",
    )
    ap.add_argument(
        "--encoder-batches",
        default="",
        help="comma-separated batch sizes: also report encoder-only tiles/s at each (choosing a default)",
    )
    ap.add_argument("--overlap-px", type=int, default=0)
    ap.add_argument(
        "--repeats", type=int, default=2, help="end-to-end runs, each between two encoder-only runs"
    )
    ap.add_argument(
        "--input-px", type=int, default=None, help="encoder input size (default: its data config)"
    )
    ap.add_argument(
        "--memory",
        type=int,
        default=0,
        metavar="N",
        help="memory mode: featurize the slide N times (as N slide ids) and sample RSS instead of timing",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--make-slide", action="store_true", help="only write the synthetic slide, then exit")
    args = ap.parse_args(argv)
    if args.make_slide:
        print(synthetic_slide(args.size, args.slide_mpp, here=True))
        return {}
    if args.memory:
        return memory(args)

    import torch

    from slide2expr.featurize.encoders import create_encoder

    t_make = time.perf_counter()
    made = args.slide is None and not synthetic_slide_path(args.size, args.slide_mpp).exists()
    path = args.slide or synthetic_slide(args.size, args.slide_mpp)
    make_s = time.perf_counter() - t_make
    # the device, batch size and readers a run would use (planned with the weight-free encoder: nothing is loaded)
    with tempfile.TemporaryDirectory() as tmp:
        given = FeaturizeOptions(
            encoder="stain-texture", device=args.device, batch_size=args.batch, workers=args.workers
        )
        probe = featurize.plan_cohort(path, store=Path(tmp) / "probe", options=given)
    device, batch, workers = probe.device, probe.batch_size, probe.workers
    # featurize_cohort does this on the CPU; do it first, so the encoder-only runs get the same allocator
    malloc_tuned = device == "cpu" and featurize._tuning.keep_freed_memory()
    enc = create_encoder(args.encoder, pretrained=args.pretrained, device=device)
    if args.precision == "auto":
        ac = enc.autocast_dtype(torch.device(device))
    else:
        ac = torch.bfloat16 if args.precision == "bf16" else None
    out_px = enc.input_size[0]

    slide = featurize.collect_slides(path)[0]
    cohort = [slide] if args.copies <= 1 else copies(path, args.copies)
    tiling = FeaturizeOptions(mpp=args.mpp, tile_px=args.tile_px).tiling_params
    plan = featurize.plan_slide(slide, tiling)
    if plan.status != "ok":
        raise SystemExit(f"benchmark slide {path}: {plan.status}: {plan.error}")
    grid = plan.grid
    n_tiles = len(grid)
    read_tps, sample = read_rate(
        path, grid, level=plan.level, out_px=out_px, chunk=min(batch, 16), n_max=3000
    )
    os_tps = openslide_rate(path, grid, level=plan.level, out_px=out_px, n_max=600)

    options = FeaturizeOptions(
        encoder=enc, mpp=args.mpp, tile_px=args.tile_px, device=device, batch_size=batch, workers=workers,
        precision=args.precision, compile=args.compile, force=True,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up, untimed, like the encoder-only one: the first run in a process also pays one-time imports
        # (scikit-image, the Parquet writer, PNG), allocator growth that a cohort run amortises and, when it
        # compiles the encoder, the compiling (reported as compile_seconds); it decides compile="auto" for the
        # whole cohort's size, as the timed runs do
        warm = featurize_cohort(cohort[:2], store=Path(tmp) / "warm", options=options)
        if args.compile == "auto" and not warm.compiled and len(cohort) > 2:
            warm = featurize_cohort(cohort, store=Path(tmp) / "warm", options=options)
        fn = enc.compiled(batch, fallback=args.compile == "auto") if warm.compiled else enc

        def enc_only(b: int = batch) -> float:
            f = fn if b == batch else (enc.compiled(b) if warm.compiled else enc)
            return encoder_only(
                f, sample, batch=b, autocast_dtype=ac, device=device, seconds=args.encoder_seconds
            )

        # encoder-only and end-to-end alternate (E F E F … E), so each run is compared with its neighbours in
        # time: the ratio then holds on a machine whose load changes during the benchmark
        enc_runs = [enc_only()]
        eager_runs = (
            []
            if not warm.compiled
            else [
                encoder_only(
                    enc, sample, batch=batch, autocast_dtype=ac, device=device, seconds=args.encoder_seconds
                )
            ]
        )
        e2e_runs, busy_runs, in_run_enc, reader_cpu = [], [], [], []
        for _ in range(args.repeats):
            c0 = children_cpu_seconds()
            summary = featurize_cohort(cohort, store=Path(tmp) / "store", options=options)
            e2e_runs.append(summary.tiles / summary.seconds)
            if workers > 0:  # the readers have exited (and been waited for) when the run returns
                reader_cpu.append((children_cpu_seconds() - c0) / summary.tiles * 1e3)
            if summary.seconds_encoding > 0:  # CPU runs
                busy_runs.append(summary.seconds_encoding / summary.seconds)
                in_run_enc.append(summary.tiles / summary.seconds_encoding)
            enc_runs.append(enc_only())
        if warm.compiled:
            eager_runs.append(
                encoder_only(
                    enc, sample, batch=batch, autocast_dtype=ac, device=device, seconds=args.encoder_seconds
                )
            )
    ratios = [f / ((a + b) / 2) for f, a, b in zip(e2e_runs, enc_runs[:-1], enc_runs[1:], strict=True)]
    by_batch = {int(b): round(enc_only(int(b)), 1) for b in filter(None, args.encoder_batches.split(","))}
    failed = [r for r in summary.results if r.status != "ok"]
    e2e = float(np.median(e2e_runs))
    enc_tps = float(np.median(enc_runs))
    gflop = encoder_gflop(enc, out_px, device=device, autocast_dtype=ac)
    mm_gflops = matmul_gflops(device=device, dtype=ac or torch.float32)
    out = {
        "benchmark": "featurize",
        "encoder": args.encoder,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "malloc_keeps_freed_memory": malloc_tuned,
        "precision": "bf16" if ac is not None else "fp32",
        "channels_last": bool(getattr(enc, "channels_last", False)),
        "compiled": summary.compiled,
        "compile_seconds": round(warm.seconds_compile, 1),
        # a fresh process pays the compiling once: the run's rate with it counted
        "end_to_end_tiles_per_s_compile_included": round(
            summary.tiles / (summary.tiles / e2e + warm.seconds_compile), 2
        ),
        # the same encoder run eagerly (first and last), beside the compiled encoder-only runs
        "encoder_only_eager_runs": [round(v, 2) for v in eager_runs],
        "batch_size": batch,
        "workers": workers,
        "slide": str(path.name),
        "slide_size": list(plan.width and (plan.width, plan.height)),
        "slide_mpp": plan.mpp[0],
        "tiling": tiling.name,
        "read_level": plan.level,
        "read_box_px": round(grid.w0 / plan.level_downsample),
        "encoder_input_px": out_px,
        "tissue_tiles": n_tiles,
        "slides_end_to_end": len(cohort),
        "tiles_end_to_end": summary.tiles,
        "end_to_end_tiles_per_s": round(e2e, 2),
        "end_to_end_seconds": round(summary.seconds, 2),
        "end_to_end_seconds_waiting_tiles": round(summary.seconds_waiting_tiles, 2),
        "end_to_end_seconds_waiting_device": round(summary.seconds_waiting_device, 2),
        "encoder_only_tiles_per_s": round(enc_tps, 2),
        "end_to_end_runs": [round(v, 2) for v in e2e_runs],
        "encoder_only_runs": [round(v, 2) for v in enc_runs],
        "ratio_per_run": [round(v, 3) for v in ratios],
        "ratio_end_to_end_over_encoder": round(float(np.median(ratios)), 3),
        # CPU (see the module docstring): ratio = busy fraction × in-run tiles/s ÷ encoder-only tiles/s
        "encoder_busy_fraction_runs": [round(v, 3) for v in busy_runs],
        "in_run_encoder_tiles_per_s_runs": [round(v, 2) for v in in_run_enc],
        "reader_cpu_ms_per_tile_runs": [round(v, 3) for v in reader_cpu],
        "encoder_only_by_batch": by_batch,
        # how hard the encoder works the device: its GFLOP/s against a square matmul's in the same precision, here
        "encoder_gflop_per_tile": gflop and round(gflop, 3),
        "encoder_only_gflops": gflop and round(gflop * enc_tps, 1),
        "matmul_gflops": round(mm_gflops, 1),
        "encoder_only_over_matmul": gflop and round(gflop * enc_tps / mm_gflops, 3),
        "read_tiles_per_s_per_worker": round(read_tps, 1),
        "openslide_read_region_tiles_per_s": round(os_tps, 1),
        "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # the largest waited-for child: a reader, or g++ while compiling; None where this run wrote the slide in a
        # child (that child would be the largest: run again for the readers' figure)
        "peak_rss_mb_workers": None
        if made
        else round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "slide_make_seconds": round(make_s, 1),
        "load_average": os.getloadavg()[0],
    }
    if failed:
        out["failed"] = [f"{r.slide_id}: {r.status}: {r.error}" for r in failed]
    print(json.dumps(out, indent=2))
    if failed:
        raise SystemExit(
            f"featurize failed on {len(failed)} of {len(summary.results)} slides: {out['failed'][0]}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def memory(args) -> dict:
    """RSS of the main process (+ readers) sampled every 0.2 s while featurizing the slide ``args.memory`` times."""
    import threading

    import psutil

    path = args.slide or synthetic_slide(args.size, args.slide_mpp)
    slides = copies(path, args.memory)
    me = psutil.Process()
    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            main_mb = me.memory_info().rss / 2**20
            kids = sum(c.memory_info().rss for c in me.children(recursive=True)) / 2**20
            samples.append((time.perf_counter() - t0, main_mb, kids))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        th.start()
        options = FeaturizeOptions(
            encoder=args.encoder,
            mpp=args.mpp,
            tile_px=args.tile_px,
            overlap_px=args.overlap_px,
            input_px=args.input_px,
            batch_size=args.batch,
            workers=args.workers,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
        )
        summary = featurize_cohort(slides, store=Path(tmp) / "store", options=options)
        stop.set()
        th.join()
    arr = np.array(samples)
    q = len(arr) // 4 or 1
    out = {
        "benchmark": "featurize-memory",
        "encoder": args.encoder,
        "slides": args.memory,
        "tiles_per_slide": summary.results[0].n_tiles,
        "tiles_total": summary.tiles,
        "seconds": round(summary.seconds, 1),
        "tiles_per_s": round(summary.tiles_per_s, 1),
        "rss_mb_main_peak": round(float(arr[:, 1].max()), 1),
        "rss_mb_main_first_quarter_max": round(float(arr[:q, 1].max()), 1),
        "rss_mb_main_last_quarter_max": round(float(arr[-q:, 1].max()), 1),
        "rss_mb_main_max_by_tenth": [
            round(float(part[:, 1].max()), 1) for part in np.array_split(arr, 10) if len(part)
        ],
        "rss_mb_readers_peak": round(float(arr[:, 2].max()), 1),
        "peak_rss_mb_main_getrusage": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "statuses": sorted({r.status for r in summary.results}),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
