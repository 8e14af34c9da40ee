"""Ray engine benchmark: what featurizing through Ray costs against the local engine on the same cores.

Writes a synthetic cohort of pyramidal SVS slides under a temporary directory, featurizes it with the local engine
(:func:`featurize.featurize_cohort`) and with the Ray engine on a Ray instance started here on the same cores (one
actor holding every core, as on a CPU-only node), each run in a fresh process, alternately, best of ``--repeat``
runs each, and prints JSON:

- ``local_s``, ``ray_s``: wall seconds of one run as a user starts it, a fresh process each (imports, the encoder
  built, slides read, embedded and written; the Ray run connects to the Ray instance and starts its actor);
- ``ray_over_local``: local seconds ÷ Ray seconds, i.e. the Ray engine's throughput as a share of the local one's
  (1.0: the engine costs nothing);
- ``load_average``: how busy the machine was (other jobs sharing the cores make wall times noisy);
- ``ray_start_s``: starting the Ray instance, paid once per cluster, not per run (not in ``ray_s``);
- ``per_slide_s``: the local run's seconds per slide and tiles per slide (the docs' model of large runs uses them).

The stores of both engines are compared file by file (rows and embeddings) and must be equal. Everything is
deleted afterwards. Run: ``python benchmarks/ray_engine.py --record`` (``--record`` keeps the JSON with its date, machine
and commit in ``benchmarks/results/``; ``--slides 2 --size 1536`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slide2expr.featurize._svs import write_svs  # noqa: E402


def _cohort(folder: Path, n: int, size: int) -> None:
    for i in range(n):
        w = size if i % 2 else int(size * 0.75)
        write_svs(folder / f"bench-{i:03d}.svs", size=(w, size), mpp=0.5, levels=2, seed=100 + i)


def _equal(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    fa = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    fb = sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    if fa != fb:
        return False
    timing = ("seconds_read", "seconds_total", "featurized_at")
    for rel in fa:
        ta, tb = pq.read_table(a / rel), pq.read_table(b / rel)
        drop = [c for c in timing if c in ta.column_names]
        if not ta.drop_columns(drop).equals(tb.drop_columns(drop)):
            return False
    return True


_RUN = """
import json, sys, time
t0 = time.perf_counter()
from slide2expr.featurize import FeaturizeOptions, featurize_cohort
from slide2expr.featurize._ray import featurize_cohort_ray
engine, slides, store, encoder, address = sys.argv[1:6]
opts = FeaturizeOptions(encoder=encoder, mpp=0.5, tile_px=224, batch_size=8, compile="off")
if engine == "local":
    s = featurize_cohort(slides, store=store, options=opts)
else:
    s = featurize_cohort_ray(slides, store=store, options=opts, address=address)
print(json.dumps({"tiles": s.tiles, "failed": s.n_failed, "seconds": time.perf_counter() - t0}))
"""


def _run(engine: str, slides: Path, store: Path, encoder: str, address: str) -> tuple[float, int]:
    """One run as a user starts it: a fresh process (imports, the encoder built) featurizing the cohort."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _RUN, engine, str(slides), str(store), encoder, address],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{engine} run failed: {out.stderr[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["failed"] == 0
    return wall, got["tiles"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=3072, help="level-0 height of a slide, px at 0.5 µm/px")
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--record", action="store_true", help="keep the result in benchmarks/results/")
    args = ap.parse_args(argv)
    started = time.perf_counter()

    import ray

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="s2e-bench-ray-"))
    try:
        slides = work / "slides"
        slides.mkdir()
        _cohort(slides, args.slides, args.size)
        t0 = time.perf_counter()
        # the cluster runs before the job, as on a real one: a Ray instance on this machine's cores
        ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="ERROR")
        ray_start = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address
        local_s, ray_s, tiles = [], [], 0
        for k in range(args.repeat):
            wall, tiles = _run("local", slides, work / f"local{k}", args.encoder, address)
            local_s.append(wall)
            wall, ray_tiles = _run("ray", slides, work / f"ray{k}", args.encoder, address)
            ray_s.append(wall)
            assert ray_tiles == tiles
        equal = _equal(work / "local0", work / "ray0")
        ray.shutdown()
        result = {
            "encoder": args.encoder,
            "slides": args.slides,
            "tiles": tiles,
            "cores": cores,
            "local_s": round(min(local_s), 2),
            "ray_s": round(min(ray_s), 2),
            "ray_over_local": round(min(local_s) / min(ray_s), 3),
            "load_average": round(os.getloadavg()[0], 1),
            "ray_start_s": round(ray_start, 2),
            "stores_equal": equal,
            "per_slide_s": round(min(local_s) / args.slides, 3),
            "tiles_per_slide": round(tiles / args.slides, 1),
            "runs_local_s": [round(x, 2) for x in local_s],
            "runs_ray_s": [round(x, 2) for x in ray_s],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.record:
        from results import record

        print(record("ray_engine", result, args=sys.argv[1:], seconds=time.perf_counter() - started))
    return result


if __name__ == "__main__":
    main()
