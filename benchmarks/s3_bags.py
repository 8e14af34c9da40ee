"""Bag loading from an S3 server on this machine against local disk: embedding bytes/s into one numpy array.

Writes a synthetic set of per-slide embeddings files (default 40 slides × 2,000 tiles × 768 float32 ≈ 245 MB, the
layout featurize writes) to a local folder and, through :func:`slide2expr.contract.write_parquet_atomic`, to two S3
servers started here on 127.0.0.1: moto's (objects in memory, Python) and ``rclone serve s3`` (objects on local
disk, Go). Prints JSON, each rate best of ``--repeat`` warm runs:

- ``local_gbps``: the bag loader's per-file reader (``sql._bags.read_slide_file``: plain float pages read straight
  into their slot) over the local files;
- ``<server>_ranged_gbps``: per file, the footer, then the embedding column chunk in one ranged GET parsed by the
  same page reader (``sql._pages.read_plain_float_column_ranged``), ``--threads`` files at a time;
- ``<server>_pyarrow_gbps``: pyarrow's own S3 filesystem reading the embedding column, ``--threads`` files at a
  time, then flattened into the array;
- ``<server>_over_local``: the best S3 rate ÷ the local one.

The client and the server share the machine's cores, so these rates are a floor for a remote server. Everything is
deleted afterwards. Run: ``python benchmarks/s3_bags.py --record`` (``--slides 8 --tiles 500`` for a quick check).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from slide2expr.contract import (  # noqa: E402
    configure_storage,
    embeddings_schema,
    open_input,
    pyarrow_filesystem,
    read_range,
    store_path,
    write_parquet_atomic,
)
from slide2expr.sql._bags import read_slide_file  # noqa: E402
from slide2expr.sql._pages import read_plain_float_column_ranged  # noqa: E402
from tests._s3server import TEST_KEYS, free_port, make_bucket, start_moto, stop  # noqa: E402


def _table(sid: str, n: int, d: int, rng) -> pa.Table:
    schema = embeddings_schema(d)
    ids = np.arange(n, dtype=np.int32)
    emb = pa.FixedSizeListArray.from_arrays(
        pa.array(rng.standard_normal(n * d, dtype=np.float32)), type=schema.field("embedding").type
    )
    xy = pa.array(ids.astype(np.int64) * 448)
    return pa.Table.from_arrays([pa.array([sid] * n), pa.array(ids), xy, xy, emb], schema=schema)


def _local(files: list[Path], n: int, d: int) -> np.ndarray:
    out = np.empty((len(files) * n, d), np.float32)
    ids, x, y = np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64)
    for i, f in enumerate(files):
        read_slide_file(f, n, out[i * n : (i + 1) * n], ids, x, y)
    return out


def _ranged(paths: list, n: int, d: int, threads: int) -> np.ndarray:
    out = np.empty((len(paths) * n, d), np.float32)

    def one(i: int) -> None:
        p = paths[i]
        with open_input(p, block_size=1 << 16) as fh:
            pf = pq.ParquetFile(fh)
            leaf = next(
                k for k in range(pf.metadata.num_columns) if pf.schema.column(k).path.startswith("embedding")
            )
            ok = read_plain_float_column_ranged(
                lambda s, ln: read_range(p, s, ln), pf, leaf, d, out[i * n : (i + 1) * n]
            )
        assert ok, f"{p}: not a plain float layout"

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(len(paths))))
    return out


def _pyarrow(paths: list, n: int, d: int, threads: int) -> np.ndarray:
    out = np.empty((len(paths) * n, d), np.float32)
    fs, _ = pyarrow_filesystem(paths[0])

    def one(i: int) -> None:
        t = pq.read_table(paths[i].fs_path, filesystem=fs, columns=["embedding"], use_threads=False)
        out[i * n : (i + 1) * n] = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(n, d)

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(len(paths))))
    return out


def _best(fn, repeat: int, nbytes: int) -> tuple[float, np.ndarray]:
    fn()  # warm: caches, connections
    best, got = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        got = fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9, got


def _start_rclone(root: Path) -> tuple[subprocess.Popen, str] | None:
    exe = Path(sys.executable).with_name("rclone")
    exe = str(exe) if exe.exists() else shutil.which("rclone")
    if exe is None:
        return None
    port = free_port()
    key = f"{TEST_KEYS['AWS_ACCESS_KEY_ID']},{TEST_KEYS['AWS_SECRET_ACCESS_KEY']}"
    proc = subprocess.Popen(
        [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", key, str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)
    return proc, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=40)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="keep the result in benchmarks/results/")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    n, d = args.tiles, args.dim
    rng = np.random.default_rng(0)
    tables = [_table(f"S{i:04d}", n, d, rng) for i in range(args.slides)]
    nbytes = args.slides * n * d * 4
    work = Path(tempfile.mkdtemp(prefix="s2e-bench-s3-"))
    servers, result = (
        [],
        {"slides": args.slides, "tiles": n, "dim": d, "bytes": nbytes, "threads": args.threads},
    )
    try:
        files = [write_parquet_atomic(t, work / "local" / f"{t['slide_id'][0]}.parquet") for t in tables]
        local_gbps, want = _best(lambda: _local(files, n, d), args.repeat, nbytes)
        result["local_gbps"] = round(local_gbps, 3)
        os.environ.update(TEST_KEYS)
        moto, endpoint = start_moto()
        servers.append(moto)
        (work / "rclone" / "bench").mkdir(parents=True)
        rclone = _start_rclone(work / "rclone")
        targets = [("moto", endpoint, make_bucket(endpoint))]
        if rclone is not None:
            servers.append(rclone[0])
            targets.append(("rclone", rclone[1], "bench"))
        best = 0.0
        for name, ep, bucket in targets:
            # rclone answers ranged GETs with the whole object's checksum: validate checksums only when required
            os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
            configure_storage(endpoint_url=ep)
            t0 = time.perf_counter()
            paths = [
                write_parquet_atomic(t, store_path(f"s3://{bucket}/store/{t['slide_id'][0]}.parquet"))
                for t in tables
            ]
            result[f"{name}_upload_gbps"] = round(nbytes / (time.perf_counter() - t0) / 1e9, 3)
            for how, fn in (("ranged", _ranged), ("pyarrow", _pyarrow)):
                gbps, got = _best(
                    lambda fn=fn, paths=paths: fn(paths, n, d, args.threads), args.repeat, nbytes
                )
                assert np.array_equal(got, want), f"{name} {how}: embeddings differ"
                result[f"{name}_{how}_gbps"] = round(gbps, 3)
                best = max(best, gbps)
            result[f"{name}_over_local"] = round(
                max(result[f"{name}_ranged_gbps"], result[f"{name}_pyarrow_gbps"]) / local_gbps, 3
            )
        result["best_s3_over_local"] = round(best / local_gbps, 3)
    finally:
        configure_storage()
        for proc in servers:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.record:
        from results import record

        print(record("s3_bags", result, args=sys.argv[1:], seconds=time.perf_counter() - started))
    return result


if __name__ == "__main__":
    main()
