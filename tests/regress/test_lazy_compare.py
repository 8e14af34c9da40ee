"""compare on a cohort read on access (sql.LazyCohort) against the same cohort in memory: equal pooled baselines,
a MIL whose tile projection is fitted on training patients only and whose saved models take raw bags, and the
memory bound."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from slide2expr import regress, sql
from slide2expr.regress._harness import plan_cohort
from slide2expr.regress._streaming import MemoryBoundWarning, StreamingError
from tests._fakestore import make_fake_store

MIL = {"max_epochs": 2, "min_epochs": 0, "patience": 1, "n_inner": 2, "hidden_dim": 8, "attention_dim": 4,
       "pca_components": 4, "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_fake_store(
        tmp_path_factory.mktemp("lazy") / "store", n_patients=12, dim=16, failed_slide=False
    )


def _cohorts(store):
    kw = dict(encoder=store.encoder, targets="expr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sql.load_cohort(store.root, **kw), sql.lazy_cohort(store.root, **kw)


def test_lazy_cohort_answers_what_compare_asks(store):
    mem, lazy = _cohorts(store)
    assert list(mem.bag_ids) == list(lazy.bag_ids)
    np.testing.assert_array_equal(mem.offsets, lazy.offsets)
    for name in ("slide_ids", "tile_ids", "x", "y"):
        np.testing.assert_array_equal(getattr(mem, name), getattr(lazy, name))
    np.testing.assert_array_equal(mem.features[::7], lazy.features[::7])
    np.testing.assert_array_equal(mem.bags[3], lazy.bags[3])


def test_pooled_baselines_equal_in_memory(store):
    mem, lazy = _cohorts(store)
    kw = dict(models=("lgbm", "ridge"), n_folds=3, seed=0, progress=False)
    a = regress.compare(mem, **kw).predictions
    b = regress.compare(lazy, **kw).predictions
    assert a[["model", "fold", "bag_id", "gene"]].equals(b[["model", "fold", "bag_id", "gene"]])
    for model in ("mean", "ridge", "lgbm"):
        x, y = (p[p.model == model].y_pred.to_numpy() for p in (a, b))
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-9, err_msg=model)
    np.testing.assert_array_equal(b[b.model == "mean"].y_pred, a[a.model == "mean"].y_pred)


def test_mil_projection_sees_training_patients_only_and_models_take_raw_bags(store):
    mem, lazy = _cohorts(store)
    plan = regress.plan_compare(lazy, models=("mil",), n_folds=3, seed=0, model_params={"mil": MIL})
    cohort = plan_cohort(lazy, plan)
    fitted = {}
    fits = regress.cross_fit(cohort, plan, on_fitted=lambda m, k, est: fitted.__setitem__((m, k), est))
    bags = [mem.bags[i] for i in plan.keep]
    for k in range(plan.n_folds):
        est = fitted[("mil", k)]
        train = set(plan.bag_ids[plan.folds != k])
        nets = [e for members in est.members_.values() for e, _ in members]
        for net in nets:
            sampled = set(net.tile_projection_.sample_bags_)
            assert sampled == train and not sampled & set(plan.bag_ids[plan.folds == k])
            assert net.pca_components == MIL["pca_components"] and net.n_features_in_ == mem.dim
        te = np.flatnonzero(plan.folds == k)
        raw = est.predict([bags[i] for i in te])  # the saved model takes raw bags
        p = fits.predictions[(fits.predictions.model == "mil") & (fits.predictions.fold == k)]
        np.testing.assert_allclose(raw.ravel(), p.y_pred.to_numpy(), rtol=1e-5, atol=1e-6)
    assert fits.attention.num_rows == sum(len(b) for b in bags) * len(plan.genes)


def test_mil_in_memory_and_on_access_agree_in_distribution(store):
    mem, lazy = _cohorts(store)
    kw = dict(models=("mil",), n_folds=3, seed=0, model_params={"mil": MIL}, progress=False)
    a, b = regress.compare(mem, **kw), regress.compare(lazy, **kw)
    assert a.predictions[["fold", "bag_id", "gene"]].equals(b.predictions[["fold", "bag_id", "gene"]])
    assert np.isfinite(b.predictions.y_pred).all()
    assert set(b.stages) == {"plan", "fit", "null", "summarise and write"}
    assert all(s["peak_rss_gb"] > 0 for s in b.stages.values())


def test_network_without_projection_is_refused(store):
    _, lazy = _cohorts(store)
    params = {"mil": {**MIL, "pca_components": None}}
    with pytest.raises(StreamingError, match="pca_components"):
        regress.compare(lazy, models=("mil",), n_folds=3, model_params=params, progress=False)


def test_memory_bound(store):
    _, lazy = _cohorts(store)
    with pytest.raises(StreamingError, match="max_memory_gb=1e-06"):
        regress.plan_compare(lazy, models=("mil",), n_folds=3, model_params={"mil": MIL}, max_memory_gb=1e-6)
    with pytest.warns(MemoryBoundWarning, match="1 gene"):
        plan = regress.plan_compare(
            lazy, models=("mil",), n_folds=3, model_params={"mil": MIL}, max_memory_gb=4e-4
        )
    assert all(len(a) == 1 for a in plan.attention_genes) and plan.max_memory_gb == 4e-4
    with pytest.raises(ValueError, match="max_memory_gb"):
        sql.open_cohort(store.root, encoder=store.encoder, max_memory_gb=0)
    assert isinstance(sql.open_cohort(store.root, encoder=store.encoder, max_memory_gb=1e-6), sql.LazyCohort)
    assert not isinstance(sql.open_cohort(store.root, encoder=store.encoder, max_memory_gb=4), sql.LazyCohort)


def test_train_and_predict_on_access(store, tmp_path):
    mem, lazy = _cohorts(store)
    a = regress.train(mem, model="ridge", seed=0)
    b = regress.train(lazy, model="ridge", seed=0, out=tmp_path / "ridge", store=store.root, targets="expr")
    np.testing.assert_allclose(b.predict(mem.bags), a.predict(mem.bags), rtol=1e-9, atol=1e-9)
    mil = regress.train(lazy, model="mil", model_params=MIL, seed=0, out=tmp_path / "mil")
    assert set(mil.members_[0][0][0].tile_projection_.sample_bags_) == set(lazy.bag_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = regress.predict(lazy, model=tmp_path / "mil", out=tmp_path / "pred")  # bags read in batches
    np.testing.assert_allclose(pred.y_pred.to_numpy(), mil.predict(mem.bags).ravel(), rtol=1e-5, atol=1e-6)


def test_cli_compare_and_train_on_access(store, tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app

    common = ["--store", store.root, "--targets", "expr", "--encoder", store.encoder, "--lazy"]
    run = CliRunner().invoke(
        app,
        [
            str(a)
            for a in ["compare", *common, "--out", tmp_path / "run", "--models", "ridge", "--n-folds", 3]
        ],
    )
    assert run.exit_code == 0, run.output
    assert "peak RSS" in run.output and "pooled features" in run.output
    run = CliRunner().invoke(
        app, [str(a) for a in ["train", *common, "--out", tmp_path / "m", "--model", "lgbm"]]
    )
    assert run.exit_code == 0 and "read on access" in run.output and "peak RSS" in run.output, run.output
    bad = CliRunner().invoke(
        app, [str(a) for a in ["compare", *common, "--out", tmp_path / "x", "--max-memory-gb", -1]]
    )
    assert bad.exit_code == 2 and "max_memory_gb=-1" in bad.output, bad.output


def test_cli_predict_on_access(store, tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app

    common = ["--store", store.root, "--encoder", store.encoder]
    fit = ["train", *common, "--targets", "expr", "--out", tmp_path / "m", "--model", "ridge", "--in-memory"]
    assert CliRunner().invoke(app, [str(a) for a in fit]).exit_code == 0
    run = CliRunner().invoke(
        app, [str(a) for a in ["predict", tmp_path / "m", *common, "--out", tmp_path / "p", "--lazy"]]
    )
    assert run.exit_code == 0 and "peak RSS" in run.output, run.output
