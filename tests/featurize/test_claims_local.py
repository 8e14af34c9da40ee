"""The local engine claims its slides: runs sharing a store never write the same slide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slide2expr.contract import CLAIMS_DIR, acquire_claim, claim_path, read_claim
from slide2expr.featurize import FeaturizeOptions, FeaturizeOptionsError, featurize_cohort
from tests.featurize.conftest import FAST

REPO = Path(__file__).resolve().parents[2]
TILING = "mpp1.00_px112_ov0"


def claim_files(store: Path) -> list[Path]:
    return [p for p in (store / CLAIMS_DIR).rglob("*") if p.is_file()]


def test_a_slide_held_by_another_run_is_left_to_it(slide_dir, tmp_path):
    store = tmp_path / "store"
    sid = "s2"
    other = acquire_claim(claim_path(store, TILING, "stain-texture", sid), owner="slurm-shard-3")
    s = featurize_cohort(slide_dir, store=store, options=FeaturizeOptions(**FAST))
    by_id = {r.slide_id: r for r in s.results}
    assert by_id[sid].status == "skipped" and "slurm-shard-3" in by_id[sid].note
    assert [r.status for r in s.results if r.slide_id != sid] == ["ok", "ok"]
    assert not (store / "embeddings" / TILING / "stain-texture" / f"{sid}.parquet").exists()
    assert read_claim(other.path).owner == "slurm-shard-3"  # not touched
    other.release()
    assert claim_files(store) == []
    s = featurize_cohort(slide_dir, store=store, options=FeaturizeOptions(**FAST))
    assert {r.slide_id: r.status for r in s.results} == {
        "TCGA-AA-0001-01Z-00-DX1": "skipped",
        "s2": "ok",
        "s3": "skipped",
    }
    assert claim_files(store) == []


_RUN = textwrap.dedent(
    """
    import json, sys, time
    from slide2expr.featurize import FeaturizeOptions, featurize_cohort
    slides, store, start, fast = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    while time.time() < start:
        time.sleep(0.005)
    s = featurize_cohort(slides, store=store, options=FeaturizeOptions(**fast))
    print(json.dumps([[r.slide_id, r.status] for r in s.results]))
    """
)


@pytest.mark.slow
def test_two_local_runs_started_at_once_do_each_slide_once(slide_dir, tmp_path):
    store = tmp_path / "store"
    start = time.time() + 12.0  # both processes imported and waiting
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN, str(slide_dir), str(store), str(start), json.dumps(FAST)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    ok = sorted(sid for run in runs for sid, status in run if status == "ok")
    assert ok == ["TCGA-AA-0001-01Z-00-DX1", "s2", "s3"], runs  # each slide by exactly one run
    assert claim_files(store) == []


def test_engine_and_address_are_checked():
    with pytest.raises(FeaturizeOptionsError, match="engine='spark'"):
        FeaturizeOptions(engine="spark")
    with pytest.raises(FeaturizeOptionsError, match="address='auto': a Ray cluster"):
        FeaturizeOptions(address="auto")
    assert FeaturizeOptions(engine="ray", address="auto").address == "auto"
