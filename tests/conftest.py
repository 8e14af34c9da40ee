"""Shared fixtures. HF_HUB_OFFLINE must be set before timm/huggingface_hub import (the Makefile exports it too)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests._fakestore import FakeStore, make_fake_store  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU_SLIDE = SHARED_DATA / "cmu_small_region.svs"


@pytest.fixture(scope="session")
def fake_store(tmp_path_factory: pytest.TempPathFactory) -> FakeStore:
    """A small store written from the schemas (no slides, no encoder); treat it as read-only."""
    return make_fake_store(tmp_path_factory.mktemp("fake store 'quoted'") / "store")


@pytest.fixture
def cmu_slide() -> Path:
    """The real CC0 Aperio slide in ../shared/data (read-only), or skip with the reason."""
    if not CMU_SLIDE.exists():
        pytest.skip(f"real slide not found at {CMU_SLIDE} (../shared/data is absent in this checkout)")
    return CMU_SLIDE
