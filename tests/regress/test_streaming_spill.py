"""compare on a cohort read on access keeps each fold's projected bags on disk: the null of a fold maps them back
instead of reading the store again (one projection pass per fold), with the same predictions bit for bit; the
spill lives under ``RUN/partial/`` (an interrupted run resumes with it; it goes with ``partial/``) or in a
temporary folder removed when compare ends, also on error."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest

from slide2expr import regress
from slide2expr.contract import RunLayout
from slide2expr.regress import _compare, _streaming
from slide2expr.regress._models import make_model
from tests._fakestore import fake_cohort
from tests.regress.test_resume import _interrupt_after

MIL = {"max_epochs": 2, "min_epochs": 0, "patience": 1, "n_inner": 2, "hidden_dim": 8, "attention_dim": 4,
       "pca_components": 4, "device": "cpu"}  # fmt: skip
SETTINGS = dict(models=("mil",), n_folds=3, seed=0, model_params={"mil": MIL}, progress=False)


@pytest.fixture(scope="module")
def lazy(tmp_path_factory):
    return fake_cohort(tmp_path_factory.mktemp("spill") / "store", n_patients=12, lazy=True)


@pytest.fixture
def tmpdir_of_run(tmp_path, monkeypatch):
    """The temporary folder compare's spill is made in."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _watch(monkeypatch, *, spill: bool = True) -> dict:
    """Record compare's fold inputs and null predictions; ``spill=False`` makes inputs that keep nothing on disk."""
    seen: dict = {}

    def inputs(cohort, plan, **kwargs):
        seen["inputs"] = _streaming.fold_inputs(cohort, plan, **(kwargs if spill else {}))
        return seen["inputs"]

    def nulls(*args, **kwargs):
        seen["spill_dir"] = getattr(seen["inputs"], "spill_dir", None)  # while compare runs
        seen["null"] = _compare.null_fits.__wrapped__(*args, **kwargs)
        return seen["null"]

    nulls.__wrapped__ = _compare.null_fits
    monkeypatch.setattr(_compare, "fold_inputs", inputs)
    monkeypatch.setattr(_compare, "null_fits", nulls)
    return seen


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


def test_null_reuses_each_folds_projection_with_equal_results(lazy, tmpdir_of_run, monkeypatch):
    with monkeypatch.context() as m:
        plain = _watch(m, spill=False)
        a = regress.compare(lazy, **SETTINGS)
    with monkeypatch.context() as m:
        spilled = _watch(m)
        b = regress.compare(lazy, **SETTINGS)
    assert (plain["inputs"].store_passes, plain["inputs"].spill_loads) == (6, 0)  # fits and nulls: 2 per fold
    assert (spilled["inputs"].store_passes, spilled["inputs"].spill_loads) == (3, 3)  # one per fold
    _same(a.predictions, b.predictions)
    _same(plain["null"], spilled["null"])
    _same(a.metrics, b.metrics)
    assert spilled["spill_dir"].parent == tmpdir_of_run and not spilled["spill_dir"].exists()
    assert not list(tmpdir_of_run.glob("slide2expr-*"))  # the temporary spill went with compare


def test_without_a_run_dir_the_temporary_spill_goes_on_error(lazy, tmpdir_of_run, monkeypatch):
    with monkeypatch.context() as m:
        seen = _watch(m)
        _interrupt_after(m, 1)
        with pytest.raises(regress.CompareInterrupted):
            regress.compare(lazy, **SETTINGS)
    assert seen["inputs"].store_passes == 2 and seen["inputs"].spill_dir is None
    assert not list(tmpdir_of_run.glob("slide2expr-*"))


def test_spill_under_partial_resumes_and_goes_with_it(lazy, tmp_path, tmpdir_of_run, monkeypatch):
    whole = tmp_path / "whole"
    with monkeypatch.context() as m:
        seen = _watch(m)
        full = regress.compare(lazy, out=whole, **SETTINGS)
    assert seen["inputs"].store_passes == 3 and not (whole / "partial").exists()
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        seen = _watch(m)
        _interrupt_after(m, 2)  # mil's folds 0 and 1; fold 2 is projected, then Ctrl-C
        with pytest.raises(regress.CompareInterrupted):
            regress.compare(lazy, out=run, **SETTINGS)
    spill = RunLayout(run).partial_projected
    names = sorted(p.name for p in spill.iterdir())
    assert [n.split(".")[0] for n in names] == ["fold0"] * 2 + ["fold1"] * 2 + ["fold2"] * 2
    assert {n.rsplit(".", 1)[1] for n in names} == {"npy", "joblib"}
    assert seen["inputs"].store_passes == 3
    with monkeypatch.context() as m:
        seen = _watch(m)
        res = regress.compare(lazy, out=run, **SETTINGS)
    # fold 2's fit and every null map the spill back: the store is not read again
    assert (seen["inputs"].store_passes, seen["inputs"].spill_loads) == (0, 4)
    assert not (run / "partial").exists()
    _same(full.predictions, res.predictions)
    _same(full.metrics, res.metrics)
    assert not list(tmpdir_of_run.glob("slide2expr-*"))  # a run directory's spill is never a temporary one


def test_other_settings_never_reuse_a_spill(lazy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(regress.CompareInterrupted):
            regress.compare(lazy, out=run, **SETTINGS)
    assert any((RunLayout(run).partial_projected).iterdir())
    other = dict(SETTINGS, model_params={"mil": {**MIL, "pca_components": 3}})
    with pytest.raises(regress.OutputExistsError, match="other settings"):
        regress.compare(lazy, out=run, **other)
    with monkeypatch.context() as m:
        seen = _watch(m)
        _interrupt_after(m, 1)
        with pytest.raises(regress.CompareInterrupted):
            regress.compare(lazy, out=run, overwrite=True, **other)
    assert (seen["inputs"].store_passes, seen["inputs"].spill_loads) == (
        2,
        0,
    )  # the old spill went with overwrite


def test_spill_key_names_everything_the_projected_bags_depend_on(lazy, tmp_path):
    plan = regress.plan_compare(
        lazy, out=tmp_path / "run", **{k: v for k, v in SETTINGS.items() if k != "progress"}
    )
    inputs = _streaming.StreamingInputs(lazy, plan, spill=tmp_path / "spill")
    params = tuple(sorted(make_model("mil", params=MIL).get_params().items()))
    rows = np.flatnonzero(plan.folds != 0)
    key = inputs.spill_key(0, params, rows)
    assert key == inputs.spill_key(0, params, rows.copy())
    assert key != inputs.spill_key(1, params, rows)
    assert key != inputs.spill_key(0, params[1:], rows)
    assert key != inputs.spill_key(0, params, rows[1:])
    inputs.seed += 1
    assert key != inputs.spill_key(0, params, rows)
    inputs.seed -= 1
    inputs._fingerprint = "other settings"
    assert key != inputs.spill_key(0, params, rows)


def test_a_damaged_spill_is_projected_again(lazy, tmp_path):
    plan = regress.plan_compare(lazy, **{k: v for k, v in SETTINGS.items() if k != "progress"})
    est, rows = make_model("mil", params=MIL, random_state=0), np.flatnonzero(plan.folds != 1)
    first = _streaming.StreamingInputs(lazy, plan, spill=tmp_path)
    proj, bags = first.projection(est, 1, rows)
    again = _streaming.StreamingInputs(lazy, plan, spill=tmp_path)
    proj2, bags2 = again.projection(est, 1, rows)
    assert (again.store_passes, again.spill_loads) == (0, 1)
    np.testing.assert_array_equal(proj2.projection_, proj.projection_)
    assert all(np.array_equal(x, y) and not y.flags.writeable for x, y in zip(bags, bags2, strict=True))
    (data,) = tmp_path.glob("fold1.*.npy")
    data.write_bytes(data.read_bytes()[:100])
    third = _streaming.StreamingInputs(lazy, plan, spill=tmp_path)
    _, bags3 = third.projection(est, 1, rows)
    assert (third.store_passes, third.spill_loads) == (1, 0)
    assert all(np.array_equal(x, y) for x, y in zip(bags, bags3, strict=True))
    third.close()
    assert data.is_file()  # a given folder is its owner's to remove


def test_a_spill_that_cannot_be_written_warns_and_the_fit_goes_on(lazy, tmp_path, monkeypatch):
    plan = regress.plan_compare(lazy, **{k: v for k, v in SETTINGS.items() if k != "progress"})
    est, rows = make_model("mil", params=MIL, random_state=0), np.flatnonzero(plan.folds != 0)

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_streaming, "_write_npy", full)
    inputs = _streaming.StreamingInputs(lazy, plan, spill=tmp_path)
    with pytest.warns(_streaming.SpillWarning, match="fold 0's projected bags could not be kept on disk"):
        _, bags = inputs.projection(est, 0, rows)
    assert len(bags) == len(plan.keep) and not list(tmp_path.iterdir())  # no partial file left behind
