"""``benchmarks/featurize.py`` on a small slide: every figure it reports is there and consistent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from slide2expr.featurize._svs import write_svs

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "featurize.py"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_featurize_benchmark_runs_small(tmp_path, workers):
    slide = write_svs(tmp_path / "b.svs", size=(1792, 1792), mpp=0.5, levels=2, seed=5)
    spec = importlib.util.spec_from_file_location("bench_featurize", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(
        [
            "--slide", str(slide), "--encoder", "resnet18", "--device", "cpu", "--workers", str(workers),
            "--compile", "off", "--encoder-seconds", "0.3", "--repeats", "1", "--copies", "2",
            "--json", str(tmp_path / "out.json"),
        ]
    )  # fmt: skip
    assert out["tiles_end_to_end"] == 2 * out["tissue_tiles"] > 0
    assert out["end_to_end_tiles_per_s"] > 0 and out["encoder_only_tiles_per_s"] > 0
    assert len(out["ratio_per_run"]) == 1 and 0 < out["ratio_end_to_end_over_encoder"] < 2
    # the encoder's share of the run and its speed within it multiply back to the run's tiles/s
    (busy,), (in_run,) = out["encoder_busy_fraction_runs"], out["in_run_encoder_tiles_per_s_runs"]
    assert 0 < busy < 1
    assert busy * in_run == pytest.approx(out["end_to_end_runs"][0], rel=0.02)
    # ResNet18 at 224 px: 1.82 G multiply-adds, so 3.64 GFLOP counting each as two
    # a reader process's CPU per tile: reading this slide's tiles costs well under 100 ms each, and not nothing
    if workers:
        (ms,) = out["reader_cpu_ms_per_tile_runs"]
        assert 0.05 < ms < 100
    else:
        assert out["reader_cpu_ms_per_tile_runs"] == []
    assert out["encoder_gflop_per_tile"] == pytest.approx(3.64, rel=0.02)
    assert out["encoder_only_gflops"] == pytest.approx(
        out["encoder_gflop_per_tile"] * out["encoder_only_tiles_per_s"], rel=0.01
    )
    assert out["matmul_gflops"] > 1
    assert out["encoder_only_over_matmul"] == pytest.approx(
        out["encoder_only_gflops"] / out["matmul_gflops"], rel=0.01
    )
    assert (tmp_path / "out.json").read_text().strip().startswith("{")
