"""benchmarks/validity.py: the seed lists never cross, and its summary and page follow from per-cohort results
(the cohorts themselves take the benchmark's hours; here they are made up)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "validity.py"


@pytest.fixture(scope="module")
def validity():
    spec = importlib.util.spec_from_file_location("bench_validity", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cohort(seed, rng, *, mil_hot, base_hot, control_call):
    kinds = {"H1": "hotspot", "H2": "hotspot", "C1": "compartment", "C2": "compartment", "N1": "noise"}
    level = {"hotspot": {"mil": mil_hot, "lgbm": base_hot, "ridge": base_hot - 0.05}, "compartment": 0.9}
    metrics = []
    for model in ("mil", "lgbm", "ridge", "mean"):
        for gene, kind in kinds.items():
            if kind == "hotspot":
                r = level[kind].get(model, -0.2)
            elif kind == "compartment":
                r = 0.9 if model != "mean" else -0.2
            else:
                r = 0.0
            r += 0.01 * rng.normal()
            well = bool(r > 0.3) or (kind == "noise" and model == "ridge" and control_call)
            metrics.append({"model": model, "gene": gene, "pearson_r": r, "well_predicted": well})
    seed_model = [
        {"model": "graziani2022", "gene": g, "pearson_r": 0.1, "well_predicted": False} for g in kinds
    ]
    loc = {g: {"attention": 0.97, "tile_pred": 0.98} for g, k in kinds.items() if k != "noise"}
    oracle = {g: (0.93 if k != "noise" else float("nan")) for g, k in kinds.items()}
    return {"seed": seed, "kinds": kinds, "metrics": metrics, "seed_model": seed_model, "oracle_r": oracle,
            "localisation": loc}  # fmt: skip


def test_seed_lists_never_cross(validity):
    assert not set(validity.TUNING_SEEDS) & set(validity.VALIDATION_SEEDS)
    assert len(validity.VALIDATION_SEEDS) >= 5
    with pytest.raises(SystemExit, match="tuning seeds"):
        validity.main(["--seeds", ",".join(map(str, validity.TUNING_SEEDS))])


def test_summary_verdicts_and_page(validity, tmp_path):
    rng = np.random.default_rng(0)
    results = [_cohort(s, rng, mil_hot=0.88, base_hot=0.75, control_call=s == 1) for s in range(1, 6)]
    summary = validity.aggregate(results)
    rows = {(r["model"], r["kind"]): r for r in summary["table"]}
    assert rows[("mil", "hotspot")]["median_r"] == pytest.approx(0.88, abs=0.02)
    assert rows[("oracle", "hotspot")]["median_r"] == pytest.approx(0.93)
    assert rows[("ridge", "noise")]["well_predicted_share"] == pytest.approx(
        1 / 5
    )  # 1 of 5 cohort × control cells
    diff = {d["kind"]: d for d in summary["mil_minus_best_baseline"]}["hotspot"]
    assert diff["mean_diff"] == pytest.approx(0.13, abs=0.02) and diff["ci_low"] > 0.1
    v = summary["verdicts"]
    assert v["mil_hotspot_r_at_least_0.80"] and v["mil_hotspot_beats_best_baseline_by_0.05_ci_above_0"]
    assert v["mil_compartment_within_0.03_of_best_baseline"] and not v["controls_called_in_at_most_5_percent"]
    report = {
        "date": "today", "machine": "here", "commit": "abc", "wall_seconds": 60.0, "seeds": [1, 2, 3, 4, 5],
        "n_patients": 40, "seed_model_genes": ["H1", "C1", "N1"], "settings": "- mil: …", "summary": summary,
    }  # fmt: skip
    validity.write_page(report, tmp_path / "validity.md")
    page = (tmp_path / "validity.md").read_text()
    assert "| hotspot | mil | 0.88" in page and "controls called in at most 5 percent: **not met**" in page
    assert "| hotspot | oracle | 0.930" in page and "graziani2022" in page
