"""The model registry: names, info, the factory's composition of user parameters, clear errors, registration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from slide2expr import regress, sql
from slide2expr.regress import (
    AttentionMILRegressor,
    MeanRegressor,
    NestedMIL,
    PerGeneRegressor,
    SeedEnsemble,
    UnknownModelError,
    list_models,
    make_model,
    model_info,
    register_model,
)
from slide2expr.regress._models import _REGISTRY
from tests._fakestore import make_fake_store


def test_builtin_names_and_derived_tuples():
    assert list_models()[:6] == ["mil", "mil-embedding", "lgbm", "ridge", "he2rna", "mean"]
    assert tuple(list_models()[:6]) == regress.MODEL_NAMES
    assert regress.MIL_MODELS == ("mil", "mil-embedding")


@pytest.mark.parametrize("name", list_models())
def test_info_says_what_each_model_gives(name):
    info = model_info(name)
    assert info.name == name and info.description
    est = make_model(name, params=info.example, random_state=0)  # the example is valid
    assert (
        info.attention is hasattr(est, "predict_tiles") or name == "he2rna"
    )  # its tile weights are top-k ranks
    assert info.takes_device is any(k.split("__")[-1] == "device" for k in est.get_params(deep=True))


def test_unknown_names_and_parameters_are_named():
    with pytest.raises(UnknownModelError, match="unknown model 'svm'; choose from mil, mil-embedding, lgbm"):
        make_model("svm")
    with pytest.raises(UnknownModelError, match=r"bad parameters \['max_epoch'\]: it takes .*max_epochs"):
        make_model("mil", params={"max_epoch": 3})
    with pytest.raises(UnknownModelError, match="unknown preset 'paper'; the presets are graziani2022"):
        make_model("mil", params={"preset": "paper"})
    with pytest.raises(UnknownModelError, match="not nested under a model name"):
        make_model("mil", params={"mil": {"max_epochs": 2}})
    with pytest.raises(UnknownModelError, match="must be a mapping"):
        make_model("ridge", params=[("alphas", [1.0])])


def test_the_mil_factory_composes_nested_per_gene_and_members():
    default = make_model("mil", random_state=3)
    assert isinstance(default, NestedMIL) and default.random_state == 3
    assert (default.n_inner, default.grid, default.readouts) == (5, None, ("output", "stack"))
    assert default.estimator.get_params() == {**AttentionMILRegressor().get_params(), "random_state": 3}
    plain = make_model("mil", params={"max_epochs": 2, "nested": False}, random_state=3)
    assert isinstance(plain, AttentionMILRegressor) and plain.random_state == 3
    grid = make_model("mil", params={"n_inner": 3, "grid": {"pca_components": [8, 16]}, "max_epochs": 2})
    assert grid.n_inner == 3 and grid.grid == {"pca_components": [8, 16]} and grid.estimator.max_epochs == 2
    emb = make_model("mil-embedding", params={"preset": "graziani2022"}, random_state=3)
    assert isinstance(emb, PerGeneRegressor) and emb.estimator.mode == "embedding"
    assert emb.estimator.random_state == 3 and emb.estimator.optimizer == "sgd"
    ens = make_model("mil", params={"n_members": 4, "per_gene": True, "random_state": 9}, random_state=3)
    assert isinstance(ens, SeedEnsemble) and ens.n_members == 4 and ens.random_state == 9
    assert isinstance(ens.estimator, PerGeneRegressor) and isinstance(ens.estimator.estimator, NestedMIL)
    assert ens.estimator.estimator.estimator.random_state is None


@pytest.fixture
def registered():
    """A model registered for one test and removed afterwards."""
    names = []

    def add(name, **kwargs):
        register_model(name, **kwargs)(lambda params, random_state: MeanRegressor(**params))
        names.append(name)

    yield add
    for name in names:
        _REGISTRY.pop(name, None)


def test_registration_and_duplicates(registered, tmp_path):
    registered("floor2", description="another floor", parameters=MeanRegressor)
    assert "floor2" in list_models() and model_info("floor2").parameters == frozenset()
    with pytest.warns(UserWarning, match="'floor2' is registered again"):
        registered("floor2", description="again")
    # a registered model runs in compare like the built-in ones
    fs = make_fake_store(tmp_path / "store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        cohort = sql.load_cohort(fs.root, encoder=fs.encoder, targets="expr")
    res = regress.compare(cohort, models=["floor2"], n_folds=2, progress=False)
    means = res.predictions.groupby("model")["y_pred"].apply(np.asarray)
    np.testing.assert_array_equal(means["floor2"], means["mean"])


def test_models_command_lists_the_registry():
    import json

    from typer.testing import CliRunner

    from slide2expr.cli import app

    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert list(rows) == list_models() and rows["mil"]["attention"] is True
    assert rows["ridge"]["example"] == {"alphas": [1, 10, 100]}
