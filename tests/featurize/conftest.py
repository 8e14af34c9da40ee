"""Small slides made on the fly (Aperio-style pyramidal SVS with JPEG tiles, PNGs) and a fast run config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slide2expr.featurize._svs import write_svs

#: A fast, deterministic configuration: 112 px tiles at 1 µm/px, fed to the weight-free encoder at 112 px.
FAST = {
    "encoder": "stain-texture",
    "mpp": 1.0,
    "tile_px": 112,
    "input_px": 112,
    "workers": 0,
    "batch_size": 8,
}


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good slides (0.5 µm/px level 0, 2 levels) with different tissue layouts; treat as read-only."""
    d = tmp_path_factory.mktemp("slides")
    write_svs(d / "TCGA-AA-0001-01Z-00-DX1.svs", size=(2048, 1536), mpp=0.5, levels=2, seed=1)
    write_svs(d / "s2.svs", size=(1536, 1536), mpp=0.5, levels=2, seed=2, blobs=((0.5, 0.5, 0.35, 0.3),))
    write_svs(d / "s3.svs", size=(1792, 1280), mpp=0.5, levels=2, seed=3, blobs=((0.3, 0.5, 0.2, 0.35),))
    return d


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory: pytest.TempPathFactory, slide_dir: Path) -> Path:
    """A cohort of one good slide and every kind of bad one."""
    d = tmp_path_factory.mktemp("bad")
    good = write_svs(d / "good.svs", size=(1536, 1024), mpp=0.5, levels=2, seed=4)
    data = good.read_bytes()
    (d / "truncated.svs").write_bytes(data[: int(len(data) * 0.55)])
    (d / "random.svs").write_bytes(np.random.default_rng(0).bytes(40_000))
    (d / "empty.svs").write_bytes(b"")
    Image.fromarray(np.full((400, 400, 3), 230, np.uint8)).save(d / "nompp.png")
    write_svs(d / "blank.svs", size=(1024, 1024), mpp=0.5, levels=1, blobs=())
    return d


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny test encoders run fastest on one thread on a shared 2-core machine (no OpenMP spin-waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
