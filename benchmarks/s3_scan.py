"""Scanning a large store on an S3 server on this machine: a count and a per-slide aggregate over 10,000 files.

Writes a tiles store of ``--files`` per-slide Parquet files (default 10,000 × 200 tiles, TILES_SCHEMA) to a local
folder, serves a copy of it with ``rclone serve s3`` (objects on local disk) and, with ``--moto``, uploads it to
moto's server too; then times, best of ``--repeat``, two queries on each:

- ``count``: ``select count(*) from tiles``;
- ``per_slide``: ``select slide_id, count(*), avg(tissue_frac) from tiles group by slide_id``;

each three ways: DuckDB on the local folder (the baseline), DuckDB on the ``s3://`` URI through a registered fsspec
filesystem (:func:`slide2expr.contract.register_duckdb`: what ``sql.connect`` does for a remote store), and a pyarrow
dataset on pyarrow's S3 filesystem scanned by DuckDB. Prints JSON with seconds per query and way, files/s, and
each S3 way's time over the local one. Everything is deleted afterwards. Run: ``python benchmarks/s3_scan.py
--record`` (``--files 500`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from s3_bags import _start_rclone  # noqa: E402

from slide2expr.contract import (  # noqa: E402
    TILES_SCHEMA,
    configure_storage,
    pyarrow_filesystem,
    register_duckdb,
    store_path,
    tiles_path,
    write_file_atomic,
    write_table_atomic,
)
from tests._s3server import TEST_KEYS, make_bucket, start_moto, stop  # noqa: E402

TILING = "mpp0.50_px224_ov0"
QUERIES = {
    "count": "select count(*) from {src}",
    "per_slide": "select slide_id, count(*) as n, avg(tissue_frac) as tissue from {src} group by slide_id",
}


def _write_store(root: Path, files: int, tiles: int) -> int:
    rng = np.random.default_rng(0)
    ids = np.arange(tiles, dtype=np.int32)
    xy = pa.array(ids.astype(np.int64) * 448)
    wh = pa.array(np.full(tiles, 448, np.int64))
    for i in range(files):
        sid = f"S{i:05d}"
        t = pa.Table.from_arrays(
            [
                pa.array([sid] * tiles),
                pa.array(ids),
                xy,
                xy,
                wh,
                wh,
                pa.array(rng.random(tiles, dtype=np.float32)),
            ],
            schema=TILES_SCHEMA,
        )
        write_table_atomic(t, tiles_path(root, TILING, sid))
    return files * tiles


def _time(con, sql: str, repeat: int) -> tuple[float, list]:
    best, rows = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - t0)
    return best, rows


def _queries(con, src: str, repeat: int) -> dict:
    out = {}
    for name, q in QUERIES.items():
        s, rows = _time(con, q.format(src=src), repeat)
        out[name] = (s, sorted(rows))
    return out


def _remote_ways(uri: str, repeat: int) -> dict:
    import duckdb
    import pyarrow.dataset as ds

    con = duckdb.connect()
    register_duckdb(con, uri)
    res = {"fsspec": _queries(con, f"read_parquet('{uri}/tiles/{TILING}/*.parquet')", repeat)}
    fs, path = pyarrow_filesystem(store_path(uri) / "tiles" / TILING)
    t0 = time.perf_counter()
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    listing = time.perf_counter() - t0
    con.register("tiles_ds", dataset)
    r = _queries(con, "tiles_ds", repeat)
    res["pyarrow"] = {k: (v[0] + listing, v[1]) for k, v in r.items()}
    return res


def _upload(local: Path, bucket_uri: str, threads: int = 8) -> float:
    files = sorted(local.rglob("*.parquet"))
    t0 = time.perf_counter()

    def one(p: Path) -> None:
        write_file_atomic(store_path(bucket_uri) / str(p.relative_to(local)), p.read_bytes())

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, files))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--moto", action="store_true", help="also upload to moto's server and scan it there")
    ap.add_argument("--record", action="store_true", help="keep the result in benchmarks/results/")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    import duckdb

    work = Path(tempfile.mkdtemp(prefix="s2e-bench-scan-"))
    procs = []
    result: dict = {"files": args.files, "tiles_per_file": args.tiles}
    try:
        served = work / "served"
        local = served / "bench" / "store"
        result["rows"] = _write_store(local, args.files, args.tiles)
        con = duckdb.connect()
        base = _queries(con, f"read_parquet('{local}/tiles/{TILING}/*.parquet')", args.repeat)
        for name, (s, _) in base.items():
            result[f"local_{name}_s"] = round(s, 3)
        os.environ.update(TEST_KEYS)
        os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"  # rclone's ranged answers
        servers = []
        rclone = _start_rclone(served)
        if rclone is not None:
            procs.append(rclone[0])
            servers.append(("rclone", rclone[1], "s3://bench/store"))
        if args.moto:
            moto, endpoint = start_moto()
            procs.append(moto)
            bucket = make_bucket(endpoint)
            configure_storage(endpoint_url=endpoint)
            result["moto_upload_s"] = round(_upload(local, f"s3://{bucket}/store"), 1)
            servers.append(("moto", endpoint, f"s3://{bucket}/store"))
        for server, endpoint, uri in servers:
            configure_storage(endpoint_url=endpoint)
            for way, res in _remote_ways(uri, args.repeat).items():
                for name, (s, rows) in res.items():
                    assert rows == base[name][1], f"{server} {way} {name}: rows differ from the local scan"
                    result[f"{server}_{way}_{name}_s"] = round(s, 3)
                    result[f"{server}_{way}_{name}_files_per_s"] = round(args.files / s, 1)
                    result[f"{server}_{way}_{name}_over_local"] = round(s / base[name][0], 1)
    finally:
        configure_storage()
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.record:
        from results import record

        print(record("s3_scan", result, args=sys.argv[1:], seconds=time.perf_counter() - started))
    return result


if __name__ == "__main__":
    main()
