"""Claims: exactly one writer per slide and configuration, on a filesystem and on S3, with processes racing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slide2expr.contract import acquire_claim, claim_path, read_claim, store_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return tmp_path / "store"
    return store_path(request.getfixturevalue("s3_env")) / "store"


def test_one_holder_renew_release(store):
    p = claim_path(store, "mpp1.00_px112_ov0", "stain-texture", "s1")
    a = acquire_claim(p, owner="a", ttl_s=30)
    assert a is not None and read_claim(p).owner == "a"
    assert acquire_claim(p, owner="b", ttl_s=30) is None
    assert a.renew() and not a.lost
    a.release()
    assert read_claim(p) is None
    b = acquire_claim(p, owner="b", ttl_s=30)
    assert b is not None
    with b.kept(every_s=0.05):
        time.sleep(0.2)
        assert read_claim(p).owner == "b"
    assert read_claim(p) is None


def test_stale_claim_is_taken_over_once(store):
    p = claim_path(store, "t", "e", "s1")
    old = acquire_claim(p, owner="old", ttl_s=1)
    assert acquire_claim(p, owner="early", ttl_s=1) is None
    time.sleep(2.2)  # S3 times are whole seconds
    assert read_claim(p).stale
    new = acquire_claim(p, owner="new", ttl_s=30)
    assert new is not None and read_claim(p).owner == "new"
    # the old holder finds out at its next renewal, and its release leaves the successor's claim alone
    assert not old.renew() and old.lost
    old.release()
    assert read_claim(p).owner == "new"
    assert acquire_claim(p, owner="third", ttl_s=30) is None


def test_steal_from_a_known_dead_owner(store):
    p = claim_path(store, "t", "e", "s1")
    acquire_claim(p, owner="ray-worker-1", ttl_s=300)
    assert acquire_claim(p, owner="x", ttl_s=300, steal_from="someone-else") is None
    c = acquire_claim(p, owner="ray-worker-2", ttl_s=300, steal_from="ray-worker-1")
    assert c is not None and read_claim(p).owner == "ray-worker-2"


_RACER = textwrap.dedent(
    """
    import json, sys, time
    from slide2expr.contract import acquire_claim, claim_path
    store, n, start, me = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    while time.time() < start:
        time.sleep(0.001)
    won = [i for i in range(n) if acquire_claim(claim_path(store, "t", "e", f"s{i:03d}"), owner=me) is not None]
    print(json.dumps(won), flush=True)
    sys.stdin.read()  # alive, holding its claims, until the test closes stdin (or kills it)
    """
)


def _racers(store, n_claims: int, n_procs: int):
    """Processes that start together, try every claim, print the ones they won, and hold them until released."""
    start = time.time() + 2.0
    return [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(store), str(n_claims), str(start), f"p{k}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for k in range(n_procs)
    ]


def test_racing_processes_take_each_claim_once(store):
    n = 40
    procs = _racers(store, n, 4)
    # every racer answers while all hold their claims: a finished racer is not taken for a dead one
    wins = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.communicate(timeout=60)
    assert all(p.returncode == 0 for p in procs)
    taken = sorted(i for w in wins for i in w)
    assert taken == list(range(n)), wins  # every claim once, none twice
    owners = {read_claim(claim_path(store, "t", "e", f"s{i:03d}")).owner for i in range(n)}
    assert owners <= {"p0", "p1", "p2", "p3"}


def test_killed_holder_on_this_host_is_replaced_at_once(store):
    (proc,) = _racers(store, 3, 1)
    won = json.loads(proc.stdout.readline())
    assert won == [0, 1, 2]
    p = claim_path(store, "t", "e", "s001")
    assert acquire_claim(p, owner="next") is None  # alive: its claims hold (ttl 120 s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    c = acquire_claim(p, owner="next")
    assert c is not None and read_claim(p).owner == "next"
