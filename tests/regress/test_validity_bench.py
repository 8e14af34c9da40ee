"""benchmarks/validity.py: the seed lists never cross, its summary and page follow from per-cohort results, and
the per-cohort results are saved, imported, reused and aggregated (the cohorts themselves take the benchmark's
hours; here they are made up)."""

from __future__ import annotations

import importlib.util
import json
import os
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


def _cohort(seed, rng, *, mil_hot=0.88, base_hot=0.75, control_call=False):
    """A made-up cohort result with the keys ``run_cohort`` writes (no provenance)."""
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
    comparisons = [{"model_a": "mil", "model_b": "ridge", "gene": g, "diff": 0.1, "p": 0.2, "tie": False}
                   for g in kinds]  # fmt: skip
    seconds = {"build": 600.0, "fit": 1800.0, "null": 900.0, "seed_model": 300.0}
    return {"seed": seed, "n_patients": 40, "n_tiles": 9000, "kinds": kinds, "metrics": metrics,
            "seed_model": seed_model, "oracle_r": oracle, "localisation": loc,
            "readout_choices": [{"fold": 0, "readouts": ["stack"] * 5}], "gene_comparisons": comparisons,
            "seconds": seconds}  # fmt: skip


def _saved(validity, seed, rng, *, fingerprint=None, n_patients=40, commit="abc1234"):
    res = _cohort(seed, rng)
    res["provenance"] = validity.provenance(
        commit=commit, date="2026-12-07 10:00 UTC", threads=1, n_patients=n_patients, seed_model=True
    )
    if fingerprint is not None:
        res["provenance"]["settings_sha256"] = fingerprint
    return res


def test_seed_lists_never_cross(validity, tmp_path):
    assert not set(validity.TUNING_SEEDS) & set(validity.VALIDATION_SEEDS)
    assert len(validity.VALIDATION_SEEDS) >= 5
    with pytest.raises(SystemExit, match="tuning seeds"):
        validity.main(["--seeds", ",".join(map(str, validity.TUNING_SEEDS))])
    tuning = _saved(validity, validity.TUNING_SEEDS[0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="tuning seed"):  # refused before anything is written
        validity.save_cohort(tuning, validity.RESULTS / validity.COHORTS)
    assert validity.save_cohort(tuning, tmp_path).is_file()  # elsewhere they may be kept


def test_summary_verdicts_and_page(validity, tmp_path):
    rng = np.random.default_rng(0)
    results = [_cohort(s, rng, control_call=s == 1) for s in range(1, 6)]
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
    assert (
        v["mil_hotspot_r_at_least_0.80"] == v["mil_hotspot_beats_best_baseline_by_0.05_ci_above_0"] == "met"
    )
    assert v["mil_compartment_within_0.03_of_best_baseline"] == "met"
    assert v["controls_called_in_at_most_5_percent"] == "not met"
    report = {
        "date": "today", "machine": "here", "commit": "abc", "expected_seeds": [1, 2, 3, 4, 5],
        "status": validity.cohorts_status([1, 2, 3, 4, 5], validity.VALIDATION_SEEDS), "n_patients": 40,
        "seed_model_genes": ["H1", "C1", "N1"], "settings": "- mil: …", "settings_sha256": "f" * 64,
        "cohorts": [], "left_out": [], "summary": summary,
    }  # fmt: skip
    validity.write_page(report, tmp_path / "validity.md")
    page = (tmp_path / "validity.md").read_text()
    assert "**5 of 5 validation cohorts: seeds 1, 2, 3, 4, 5.**" in page
    assert "| hotspot | mil | 0.88" in page and "controls called in at most 5 percent: **not met**" in page
    assert "| hotspot | oracle | 0.930" in page and "graziani2022" in page


def test_cohort_saved_and_read(validity, tmp_path):
    res = _saved(validity, 2, np.random.default_rng(1))
    path = validity.save_cohort(res, tmp_path / "validity")
    assert path == tmp_path / "validity" / "seed2.json"
    assert [p.name for p in path.parent.iterdir()] == ["seed2.json"]  # no temporary file left
    back = validity.read_cohort(path)
    assert back["metrics"] == res["metrics"] and back["gene_comparisons"] == res["gene_comparisons"]
    prov = back["provenance"]
    assert prov["settings_sha256"] == validity.settings_fingerprint() and len(prov["settings_sha256"]) == 64
    assert {"commit", "date", "machine", "torch_threads", "n_patients", "seed_model"} <= set(prov)
    assert path.stat().st_size < 20_000  # results only, no per-tile data
    del res["provenance"]
    with pytest.raises(ValueError, match="provenance"):
        validity.save_cohort(res, tmp_path / "validity")


def test_aggregate_only_over_two_cohorts(validity, tmp_path):
    rng = np.random.default_rng(2)
    for seed in (1, 2):
        validity.save_cohort(_saved(validity, seed, rng, commit=f"c0ffee{seed}"), tmp_path / "validity")
    report = validity.main(["--aggregate-only", "--out", str(tmp_path)])
    assert report["seeds"] == [1, 2] and report["missing_seeds"] == [3, 4, 5]
    assert report["summary"]["verdicts"]["mil_hotspot_r_at_least_0.80"] == "not decided (2 of 5 cohorts)"
    assert json.loads((tmp_path / "validity.json").read_text())["status"] == report["status"]
    page = (tmp_path / "validity.md").read_text()
    assert "2 of 5 validation cohorts: seeds 1, 2; 3, 4, 5 not yet run" in page
    assert page.count("**not decided (2 of 5 cohorts)**") == len(validity.VERDICTS)
    assert "| 1 | c0ffee1 | 2026-12-07 10:00 UTC |" in page and "| 2 | c0ffee2 |" in page
    assert "| hotspot | mil | 0.8" in page  # the per-cohort numbers are shown all the same


def test_other_settings_left_out_with_a_line(validity, tmp_path):
    rng = np.random.default_rng(3)
    validity.save_cohort(_saved(validity, 1, rng), tmp_path / "validity")
    validity.save_cohort(
        _saved(validity, 3, rng, fingerprint="0" * 64, commit="0ld0ld0"), tmp_path / "validity"
    )
    report = validity.main(["--aggregate-only", "--out", str(tmp_path)])
    assert report["seeds"] == [1]
    (left,) = report["left_out"]
    assert left["seed"] == 3 and "other pre-registered settings" in left["reason"]
    page = (tmp_path / "validity.md").read_text()
    assert "- Left out: seed 3 (`validity/seed3.json`, 0ld0ld0" in page and "fingerprint 000000000000" in page
    assert "1 of 5 validation cohorts: seeds 1; 2, 3, 4, 5 not yet run" in page
    assert "| hotspot | mil | 0.8" in page and "| – | 0." in page  # one cohort: no bootstrap CI


def test_import_result_without_provenance(validity, tmp_path):
    result = tmp_path / "work" / "seed4" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps(_cohort(4, np.random.default_rng(4))))
    os.utime(result, (1_800_000_000, 1_800_000_000))  # 2027-01-15 08:00 UTC
    out = tmp_path / "results"
    argv = ["--import-result", str(result), "--commit", "74c17d0", "--out", str(out)]
    report = validity.main(argv)
    saved = validity.read_cohort(out / "validity" / "seed4.json")
    prov = saved["provenance"]
    assert prov["commit"] == "74c17d0" and prov["date"] == "2027-01-15 08:00 UTC"
    assert prov["settings_sha256"] == validity.settings_fingerprint() and prov["seed_model"] is True
    assert prov["torch_threads"] is None and prov["n_patients"] == 40
    assert report["seeds"] == [4] and "1 of 5 validation cohorts" in report["status"]
    with pytest.raises(SystemExit, match="exists: give --rerun"):
        validity.main(argv)
    with pytest.raises(SystemExit, match="needs --commit"):
        validity.main(argv[:2] + ["--out", str(out)])
    result.write_text(json.dumps({"seed": 4, "metrics": []}))
    with pytest.raises(SystemExit, match="lacks n_patients"):
        validity.main([*argv, "--rerun"])


def test_saved_cohort_is_the_cache(validity, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    folder = tmp_path / "validity"
    validity.save_cohort(_saved(validity, 5, rng), folder)
    computed = []

    def compute(work, seed, *, n_patients, seed_model):
        computed.append((seed, n_patients))
        return _cohort(seed, rng) | {"n_patients": n_patients}

    monkeypatch.setattr(validity, "compute_cohort", compute)
    kw = {"seed_model": True, "cohorts": folder}
    assert validity.run_cohort(tmp_path, 5, n_patients=40, **kw)["provenance"]["commit"] == "abc1234"
    assert computed == []  # same settings and patients: not computed
    res = validity.run_cohort(tmp_path, 5, n_patients=40, rerun=True, **kw)
    assert computed == [(5, 40)] and res["provenance"]["commit"] != "abc1234"
    validity.run_cohort(tmp_path, 5, n_patients=20, **kw)
    assert computed[-1] == (5, 20)
    assert validity.read_cohort(folder / "seed5.json")["provenance"]["n_patients"] == 20


def test_a_run_aggregates_every_saved_cohort(validity, tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    validity.save_cohort(_saved(validity, 1, rng), tmp_path / "validity")  # from an earlier session

    def compute(work, seed, *, n_patients, seed_model):
        (work / f"seed{seed}" / "store").mkdir(parents=True)
        return _cohort(seed, rng)

    monkeypatch.setattr(validity, "compute_cohort", compute)
    work = tmp_path / "work"
    report = validity.main(["--seeds", "2", "--out", str(tmp_path), "--work", str(work)])
    assert report["seeds"] == [1, 2] and (tmp_path / "validity" / "seed2.json").is_file()
    assert not work.exists()  # the cohort's slides and store go once its result is saved
    assert (
        "2 of 5 validation cohorts: seeds 1, 2; 3, 4, 5 not yet run" in (tmp_path / "validity.md").read_text()
    )
