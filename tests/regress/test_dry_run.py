"""--dry-run runs the real run's checks (the library's plan_compare / plan_train / check_predict / import with
dry_run), prints the plan, exits 0 and writes nothing."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from tests._fakestore import make_fake_store


def _cli(*args):
    from slide2expr.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    return r, " ".join(r.output.split())


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def store_args(fake_store):
    return ["--store", fake_store.root, "--targets", "expr", "--encoder", fake_store.encoder]


def test_compare_dry_run_prints_the_plan_and_writes_nothing(fake_store, store_args, tmp_path):
    before = _files(fake_store.root)
    out = tmp_path / "run"
    params = '{"mil": {"max_epochs": 3}}'
    r, text = _cli("compare", *store_args, "--models", "mil,ridge", "--n-folds", 3, "--params", params,
                   "--device", "cpu", "--out", out, "--dry-run")  # fmt: skip
    assert r.exit_code == 0, text
    assert "compare mil, ridge, mean on 3 patient-grouped folds" in text and "would write" in text, text
    assert "'max_epochs': 3" in text and "'device': 'cpu'" in text
    assert not out.exists() and _files(fake_store.root) == before
    # the real run's checks: each refusal is the same as without --dry-run
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra, needle in (
        (["--out", out], "is not empty"),
        (["--out", tmp_path / "r2", "--models", "svm"], "unknown model 'svm'"),
        (["--out", tmp_path / "r2", "--params", '{"mil": {"max_epoch": 3}}'], "bad parameters ['max_epoch']"),
        (["--out", tmp_path / "r2", "--n-folds", 1], "n_folds=1"),
        (["--out", tmp_path / "r2", "--device", "gpu"], "device must be"),
    ):
        r, text = _cli("compare", *store_args, *extra, "--dry-run")
        assert r.exit_code == 2 and needle in text, (extra, text)
    assert _files(out) == ["notes.txt"] and not (tmp_path / "r2").exists()


def test_plan_compare_is_what_compare_runs(fake_store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        cohort = sql.load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr")
    plan = regress.plan_compare(cohort, models=["ridge"], n_folds=3, out=tmp_path / "run")
    assert plan.models == ("ridge", "mean") and not (tmp_path / "run").exists()
    res = regress.compare(cohort, models=["ridge"], n_folds=3, out=tmp_path / "run", progress=False)
    assert res.folds["fold"].tolist() == plan.folds.tolist()
    assert res.config["models"] == list(plan.models) and res.run == plan.out


def test_train_and_predict_dry_runs_write_nothing(fake_store, store_args, tmp_path):
    model = tmp_path / "model"
    r, text = _cli("train", *store_args, "--model", "ridge", "--out", model, "--dry-run")
    assert r.exit_code == 0 and "train ridge (seed 0) on" in text and "would write" in text, text
    assert not model.exists()
    r, text = _cli("train", *store_args, "--model", "ridge", "--out", model)
    assert r.exit_code == 0, text
    pred = tmp_path / "p.parquet"
    r, text = _cli("predict", model, "--store", fake_store.root, "--out", pred, "--dry-run")
    assert r.exit_code == 0 and "would write" in text and not pred.exists(), text
    r, text = _cli("train", *store_args, "--model", "ridge", "--out", model, "--dry-run")
    assert r.exit_code == 2 and "is not empty" in text, text


def test_targets_import_dry_run_and_overwrite(tmp_path):
    fs = make_fake_store(tmp_path / "store", n_patients=3, failed_slide=False)
    samples = [f"{p}-01A" for p in sorted(fs.targets)]
    path = tmp_path / "m.csv"
    pd.DataFrame({"sample": samples, "APC": range(len(samples))}).to_csv(path, index=False)
    target = fs.root / "targets" / "dry.parquet"
    args = ["targets", "import", path, "--store", fs.root, "--name", "dry"]
    r, text = _cli(*args, "--dry-run")
    assert r.exit_code == 0 and "would write" in text and not target.exists(), text
    r, text = _cli(*args, "--transform", "sqrt", "--dry-run")
    assert r.exit_code == 2 and "--transform" in text
    r, text = _cli(*args)
    assert r.exit_code == 0 and "wrote" in text, text
    r, text = _cli(*args, "--dry-run")
    assert r.exit_code == 2 and "exists" in text and "--overwrite" in text, text
    r, text = _cli(*args)
    assert r.exit_code == 2 and "exists" in text and "--overwrite" in text, text
    r, text = _cli(*args, "--overwrite")
    assert r.exit_code == 0, text
