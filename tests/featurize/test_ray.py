"""The Ray engine on a local cluster of two simulated worker nodes (one CPU each; the head holds none).

It writes exactly the local engine's store; a worker node removed mid-run costs no slide and duplicates none; two
engines started at once on one store do each slide once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slide2expr.contract import CLAIMS_DIR, read_parquet_table
from slide2expr.featurize import FeaturizeOptions, featurize_cohort
from slide2expr.featurize._svs import write_svs
from tests._s3server import s3_env, s3_server  # noqa: F401 - fixtures
from tests.featurize.conftest import FAST

ray = pytest.importorskip(
    "ray", reason="the Ray engine needs ray (pip install 'slide2expr[ray]', in the dev extra)"
)

from slide2expr.contract import acquire_claim, claim_path  # noqa: E402
from slide2expr.featurize import collect_slides  # noqa: E402
from slide2expr.featurize._ray import SlideWorker, featurize_cohort_ray  # noqa: E402

TILING = "mpp1.00_px112_ov0"
TIMING = ("seconds_read", "seconds_total", "featurized_at")
#: small object stores: the slides travel as paths, the embeddings go straight to the store
NODE = {"num_cpus": 1, "object_store_memory": 80 << 20}


def snapshot(store: Path) -> dict[str, object]:
    """Every file of a store but its claims folder: Parquet as rows and metadata (timings dropped), others hashed."""
    out: dict[str, object] = {}
    for p in sorted(store.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(store))
        if p.suffix == ".parquet":
            t = pq.read_table(p)
            out[rel] = (
                t.drop_columns([c for c in TIMING if c in t.column_names]).to_pylist(),
                t.schema.metadata,
            )
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(store: Path) -> list[str]:
    """Hidden temporaries and claims a finished run must not leave."""
    return [str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and p.name.startswith(".")] + [
        str(p.relative_to(store)) for p in (store / CLAIMS_DIR).rglob("*") if p.is_file()
    ]


def test_worker_takes_claimed_slides_only_when_free_or_stolen(slide_dir, tmp_path):
    """The actor's slide step, in this process: a slide another live writer holds is left to it (skipped, with a
    note naming the holder); a finished one is skipped; a dead owner's claim is taken over when the driver says so."""
    store = tmp_path / "store"
    worker = SlideWorker(store, FeaturizeOptions(**FAST), cpus=1, n_slides=3, claim_ttl_s=60)
    first, second, _ = collect_slides(slide_dir)
    other = acquire_claim(claim_path(store, TILING, "stain-texture", first.slide_id), owner="other-run")
    out = worker.featurize(first)
    assert out.result.status == "skipped" and "other-run" in out.result.note and out.tiles == 0
    assert worker.featurize(second).result.status == "ok"
    assert worker.featurize(second).result.status == "skipped"  # done: not written again
    out = worker.featurize(first, steal_from="other-run")
    assert out.result.status == "ok" and out.tiles > 0
    assert other.lost or not other.renew()
    assert leftovers(store) == []


def test_worker_writes_an_object_store(request, slide_dir, tmp_path):
    """The actor's slide step, in this process, on an ``s3://`` store of the S3 server: the files equal the local
    engine's and no claim is left."""
    from slide2expr.contract import store_path

    local, remote = tmp_path / "local", f"{request.getfixturevalue('s3_env')}/store"
    featurize_cohort(slide_dir, store=local, options=FeaturizeOptions(**FAST))
    worker = SlideWorker(remote, FeaturizeOptions(**FAST), cpus=1, n_slides=3, claim_ttl_s=60)
    assert all(worker.featurize(s).result.status == "ok" for s in collect_slides(slide_dir))
    root = store_path(remote)
    got = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    want = {str(p.relative_to(local)): p for p in local.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(want)
    for name, p in got.items():
        if name.startswith("slides/"):
            a, b = (read_parquet_table(f).drop_columns(list(TIMING)) for f in (p, want[name]))
            assert a.equals(b) and a.schema.metadata == b.schema.metadata, name
        else:
            assert p.read_bytes() == want[name].read_bytes(), name


@pytest.fixture(scope="module")
def cluster():
    """A head node with no CPU (the driver's) and two worker nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 80 << 20},
    )
    for _ in range(2):
        c.add_node(**NODE)
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Eight small slides, two sizes, so slides are still running when a node goes."""
    d = tmp_path_factory.mktemp("ray-slides")
    for i in range(8):
        size = (1536, 1280) if i % 2 else (1024, 1024)
        write_svs(d / f"c{i}.svs", size=size, mpp=0.5, levels=2, seed=10 + i)
    return d


@pytest.fixture(scope="module")
def cohort_local(tmp_path_factory, cohort) -> Path:
    store = tmp_path_factory.mktemp("ray-local") / "store"
    assert featurize_cohort(cohort, store=store, options=FeaturizeOptions(**FAST)).count("ok") == 8
    return store


@pytest.mark.slow
def test_ray_store_equals_local(cluster, slide_dir, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    a = featurize_cohort(slide_dir, store=local, options=FeaturizeOptions(**FAST))
    b = featurize_cohort_ray(slide_dir, store=remote, options=FeaturizeOptions(**FAST), progress=True)
    assert b.device.startswith("ray:2 actors")
    assert [(r.slide_id, r.status, r.n_tiles) for r in b.results] == [
        (r.slide_id, r.status, r.n_tiles) for r in a.results
    ]
    assert b.tiles == a.tiles and b.n_failed == 0
    assert snapshot(remote) == snapshot(local)
    assert leftovers(remote) == []


@pytest.mark.slow
def test_two_engines_at_once_do_each_slide_once(cluster, cohort, cohort_local, tmp_path):
    """Two Ray runs (two drivers' schedulers, one actor each) started together on one store."""
    store = tmp_path / "store"
    barrier = threading.Barrier(2)
    runs: list = [None, None]

    def engine(k: int) -> None:
        barrier.wait()
        runs[k] = featurize_cohort_ray(cohort, store=store, options=FeaturizeOptions(**FAST), max_actors=1)

    threads = [threading.Thread(target=engine, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None for r in runs)
    ok = sorted(r.slide_id for run in runs for r in run.results if r.status == "ok")
    assert ok == [f"c{i}" for i in range(8)], [
        run.results for run in runs
    ]  # each slide by exactly one engine
    assert all(r.status in ("ok", "skipped") for run in runs for r in run.results)
    assert snapshot(store) == snapshot(cohort_local) and leftovers(store) == []


@pytest.mark.slow
def test_worker_node_lost_mid_run(cluster, cohort, cohort_local, tmp_path):
    seed = int(os.environ.get("S2E_TEST_SEED", random.randrange(1 << 16)))
    print(f"test_worker_node_lost_mid_run: seed={seed} (S2E_TEST_SEED={seed} repeats it)")
    rng = random.Random(seed)
    store = tmp_path / "store"
    victim = rng.choice([n for n in cluster.worker_nodes])
    delay = rng.uniform(0.0, 0.5)  # seconds into both workers' slides before the node goes
    lost = threading.Event()

    def holders() -> set[str]:
        out = set()
        for p in (store / CLAIMS_DIR).rglob("*.claim"):
            try:
                out.add(json.loads(p.read_bytes())["owner"])
            except (OSError, ValueError, KeyError):
                continue
        return out

    def kill_when_started() -> None:
        # once both workers hold a slide's claim, each has a slide in flight: the victim's is lost mid-run
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if len(holders()) >= 2:
                time.sleep(delay)
                cluster.remove_node(victim)
                lost.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    try:
        s = featurize_cohort_ray(cohort, store=store, options=FeaturizeOptions(**FAST))
    finally:
        killer.join(timeout=300)
        cluster.add_node(**NODE)  # back to two workers for whatever runs next
    assert lost.is_set()
    assert sorted(r.slide_id for r in s.results) == [f"c{i}" for i in range(8)]  # each once
    assert [r.status for r in s.results] == ["ok"] * 8, [(r.slide_id, r.status, r.error) for r in s.results]
    retried = [r.slide_id for r in s.results if r.note and "retried" in r.note]
    assert retried, "the removed node had no slide in flight"
    assert snapshot(store) == snapshot(cohort_local) and leftovers(store) == []
