"""Tile-level ground truth for any synthetic cohort: written beside a run, equal to tile_truth tile by tile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from slide2expr import sql
from slide2expr.cli import app
from slide2expr.contract import RunLayout, write_bytes_atomic
from slide2expr.featurize import FeaturizeOptions, featurize_cohort
from slide2expr.synth import GENES, CohortError, tile_truth, write_truth_tiles

TILING = "mpp2.00_px64_ov0"


@pytest.fixture(scope="module")
def store(small_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("truth") / "store"
    options = FeaturizeOptions(encoder="stain-texture", mpp=2.0, tile_px=64, workers=0)
    featurize_cohort(small_cohort.root / "slides.csv", store=root, options=options)
    return root


def test_truth_tiles_equal_tile_truth(small_cohort, store, tmp_path):
    out = write_truth_tiles(
        small_cohort.root, store=store, tiling=TILING, out=tmp_path / "truth_tiles.parquet"
    )
    df = pd.read_parquet(out)
    assert list(df.columns) == ["slide_id", "tile_id", "gene", "driver_frac"]
    assert set(df["gene"]) == set(GENES)
    sid = sorted(df["slide_id"].unique())[0]
    tiles = sql.read_tiles(store, TILING, sid)
    assert len(df[df["slide_id"] == sid]) == len(tiles) * len(GENES)
    want = tile_truth(small_cohort.root, slide_id=sid, x=tiles["x"], y=tiles["y"], w=tiles["w"], h=tiles["h"])
    got = df[(df["slide_id"] == sid) & (df["gene"] == "FSCN1")].set_index("tile_id")["driver_frac"]
    np.testing.assert_allclose(got.loc[tiles["tile_id"]].to_numpy(), want["driver_frac_FSCN1"], rtol=1e-6)
    assert df["driver_frac"].between(0, 1).all() and (df["driver_frac"] > 0.5).any()


def test_truth_tiles_refuse_a_folder_that_is_not_a_synthetic_cohort(store, tmp_path):
    with pytest.raises(CohortError, match="slide2expr synth"):
        write_truth_tiles(tmp_path, store=store, tiling=TILING, out=tmp_path / "t.parquet")


def test_truth_command_writes_into_the_run(small_cohort, store, tmp_path):
    run = tmp_path / "run"
    write_bytes_atomic(
        RunLayout(run).config,
        b'{"tiling": "%s", "encoder": "stain-texture", "genes": [], "models": []}' % TILING.encode(),
    )
    dry = CliRunner().invoke(
        app, ["truth", str(small_cohort.root), "--store", str(store), "--run", str(run), "--dry-run"]
    )
    assert dry.exit_code == 0 and "nothing written" in dry.output and not RunLayout(run).truth_tiles.exists()
    res = CliRunner().invoke(app, ["truth", str(small_cohort.root), "--store", str(store), "--run", str(run)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(RunLayout(run).truth_tiles)) > 0
    bad = CliRunner().invoke(app, ["truth", str(tmp_path), "--store", str(store), "--run", str(run)])
    assert bad.exit_code == 2 and "synth" in bad.output
