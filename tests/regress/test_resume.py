"""An interrupted compare (Ctrl-C) says what finished and resumes it: the run directory of a resumed run is the
uninterrupted run's, file for file; other settings are refused, ``overwrite`` restarts."""

from __future__ import annotations

import warnings

import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from slide2expr.regress import _streaming

SETTINGS = dict(models=("ridge", "lgbm"), n_folds=3, seed=0, model_params={"lgbm": {"n_estimators": 5}})


@pytest.fixture(scope="module")
def cohort(fake_store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        return sql.load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr")


def _interrupt_after(monkeypatch, n_fits: int) -> None:
    """Ctrl-C at the fit that follows ``n_fits`` finished ones."""
    real, calls = _streaming.fit_model, []

    def fit(*args, **kwargs):
        calls.append(1)
        if len(calls) > n_fits:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_streaming, "fit_model", fit)  # the fold loop fits through it


def _files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_resumed_run_is_the_uninterrupted_run(cohort, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    regress.compare(cohort, out=whole, progress=False, **SETTINGS)
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)  # ridge's 3 folds and lgbm's first
        with pytest.raises(regress.CompareInterrupted) as caught:
            regress.compare(cohort, out=run, progress=False, **SETTINGS)
    exc = caught.value
    assert (exc.done, exc.total, exc.out) == (
        4,
        15,
        run,
    )  # 3 models × 3 folds, and the nulls of ridge and lgbm
    assert "after 4 of 15 model × fold fits (nulls included)" in str(exc)
    assert "same settings and out to resume" in str(exc)
    partial = run / "partial"
    assert sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*.parquet")) == [
        "lgbm/fold0.predictions.parquet",
        "ridge/fold0.predictions.parquet",
        "ridge/fold1.predictions.parquet",
        "ridge/fold2.predictions.parquet",
    ]
    assert (partial / "settings.json").is_file() and not (run / "metrics.parquet").exists()
    kept = (run / "models" / "ridge" / "fold1.joblib").stat().st_mtime_ns
    plan = regress.plan_compare(cohort, out=run, **SETTINGS)
    assert sorted(plan.resume) == [("lgbm", 0), ("ridge", 0), ("ridge", 1), ("ridge", 2)]
    assert (
        "resumes the interrupted run" in plan.describe()
        and "4 of 15 model × fold fits (nulls included) are done" in plan.describe()
    )
    res = regress.compare(cohort, out=run, progress=False, **SETTINGS)
    assert (run / "models" / "ridge" / "fold1.joblib").stat().st_mtime_ns == kept  # loaded, not fitted again
    assert not partial.exists()
    assert _files(run) == _files(whole)
    assert res.summary.set_index("model")["fit_seconds"].gt(0).all()


def test_a_run_interrupted_in_its_nulls_resumes_them(cohort, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    regress.compare(cohort, out=whole, progress=False, **SETTINGS)
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 11)  # the 9 fits, then the first fold's nulls of ridge and lgbm
        with pytest.raises(regress.CompareInterrupted) as caught:
            regress.compare(cohort, out=run, progress=False, **SETTINGS)
    assert (caught.value.done, caught.value.total) == (11, 15)
    nulls = sorted(
        p.relative_to(run / "partial").as_posix() for p in (run / "partial").glob("*.null/*.parquet")
    )
    assert nulls == ["lgbm.null/fold0.predictions.parquet", "ridge.null/fold0.predictions.parquet"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)  # the 4 nulls left: only those are fitted
        regress.compare(cohort, out=run, progress=False, **SETTINGS)
    assert _files(run) == _files(whole)


def test_other_settings_are_refused_and_overwrite_restarts(cohort, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(regress.CompareInterrupted):
            regress.compare(cohort, out=run, progress=False, **SETTINGS)
    other = dict(SETTINGS, seed=1)
    with pytest.raises(
        regress.OutputExistsError, match=r"interrupted compare run with other settings \(seed.*overwrite"
    ):
        regress.plan_compare(cohort, out=run, **other)
    with pytest.raises(regress.OutputExistsError, match=r"other settings \(n_folds"):
        regress.compare(cohort, out=run, progress=False, **dict(SETTINGS, n_folds=4))
    regress.compare(cohort, out=run, progress=False, overwrite=True, **other)
    assert not (run / "partial").exists() and (run / "metrics.parquet").is_file()
    # a finished run is not resumed: it is refused as before
    with pytest.raises(regress.OutputExistsError, match="is not empty"):
        regress.plan_compare(cohort, out=run, **other)


def test_without_out_nothing_is_kept(cohort, monkeypatch):
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(regress.CompareInterrupted, match=r"nothing was written \(out=None\)"):
        regress.compare(cohort, progress=False, **SETTINGS)


def test_cli_ctrl_c_says_how_to_resume(fake_store, tmp_path, monkeypatch):
    from slide2expr.cli import app

    out = tmp_path / "run"
    args = ["compare", "--store", str(fake_store.root), "--targets", "expr", "--encoder", fake_store.encoder,
            "--models", "ridge", "--n-folds", "3", "--out", str(out)]  # fmt: skip
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        r = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    text = " ".join(r.output.split())
    assert r.exit_code == 130, r.output
    assert (
        f"interrupted: compare interrupted after 2 of 9 model × fold fits (nulls included); the finished ones are "
        f"kept in {out}/partial/" in text
    )
    r = CliRunner().invoke(app, [*args, "--dry-run"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "2 of 9 model × fold fits (nulls included) are done" in r.output, r.output
    r = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert (out / "metrics.parquet").is_file() and not (out / "partial").exists()
