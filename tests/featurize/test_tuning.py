"""Process-wide CPU tuning (featurize/_tuning.py): each check runs in a fresh interpreter, since both settings last
for the life of a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.perf


def run(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "SLIDE2EXPR_MALLOPT")} | env
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_featurize_before_torch_shortens_openmp_spinning():
    assert run("import slide2expr.featurize, os, torch; print(os.environ.get('GOMP_SPINCOUNT'))") == "10000"
    # too late once torch (and libgomp) is loaded: left alone
    assert run("import torch, slide2expr.featurize, os; print(os.environ.get('GOMP_SPINCOUNT'))") == "None"
    # a value the user chose wins
    code = "import slide2expr.featurize, os; print(os.environ['GOMP_SPINCOUNT'])"
    assert run(code, GOMP_SPINCOUNT="500") == "500"


def test_the_cli_sets_it_before_any_command_loads_torch():
    assert run("import slide2expr.cli, os; print(os.environ.get('GOMP_SPINCOUNT'))") == "10000"


FAULTS = """
import resource, torch
from slide2expr.featurize._tuning import keep_freed_memory

net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 64, 7, 2, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, 1, 1)
).eval()
x = torch.rand(8, 3, 224, 224)

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        for _ in range(5):
            net(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = faults()
kept = keep_freed_memory()
# two passes to settle: the first kept pass can still grow the heap by one activation (6,272 first-touch faults, then
# none), which is growth, not the memory being given back and faulted in again
faults()
faults()
print(default, kept, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_stops_page_faulting_it_in_again():
    default, kept, after = run(FAULTS).split()
    assert kept == "True"
    # each pass's activations (8 × 64 × 112 × 112 float32: 25.7 MB each) were given back to the kernel and faulted
    # in again (≈ 160,000 faults over the five passes here); kept, they are reused
    assert int(default) > 20_000
    assert int(after) < int(default) / 100


def test_the_environment_can_turn_it_off():
    default, kept, after = run(FAULTS, SLIDE2EXPR_MALLOPT="0").split()
    assert kept == "False"
    assert int(after) > 20_000
