"""compare/train/predict refuse what they cannot do well with one clear line: output folders that already hold a run
or a model, a model applied at another tiling or to targets under another transform, malformed parameters,
repeated genes, an unknown device."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from tests._fakestore import ENCODER, TILING, make_fake_store

OTHER_TILING = "mpp2.00_px224_ov0"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fake store of its own (tests add tilings and targets): targets ``log`` (log1p), ``raw`` (none) and
    ``partial`` (log1p, the last two patients without values)."""
    fs = make_fake_store(tmp_path_factory.mktemp("outputs") / "store")
    wide = pd.DataFrame(fs.targets).T.clip(lower=0).rename(index=lambda p: f"{p}-01A")
    wide.index.name = "sample_id"
    csv = fs.root.parent / "expression.csv"
    wide.to_csv(csv)
    wide.iloc[:-2].to_csv(fs.root.parent / "partial.csv")
    for name, path, transform in (
        ("log", csv, "log1p"),
        ("raw", csv, "none"),
        ("partial", fs.root.parent / "partial.csv", "log1p"),
    ):
        regress.import_targets(path, store=fs.root, name=name, transform=transform)
    return fs


def _cohort(fs, targets="log", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        return sql.load_cohort(fs.root, encoder=ENCODER, targets=targets, **kw)


def _cli(*args):
    from slide2expr.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    return r, " ".join(r.output.split())  # rich wraps long messages


def _run(fs, out, *extra):
    return _cli(
        "compare", "--store", fs.root, "--targets", "log", "--encoder", ENCODER, "--models", "ridge",
        "--n-folds", 2, "--genes", "GNLY", "--out", out, *extra,
    )  # fmt: skip


def _train(fs, out, *extra, targets="log"):
    return _cli(
        "train", "--store", fs.root, "--targets", targets, "--encoder", ENCODER, "--model", "ridge",
        "--out", out, *extra,
    )  # fmt: skip


# ---- 1. output folders ---------------------------------------------------------------------------------------


def test_compare_refuses_a_non_empty_run_directory_unless_overwrite(store, tmp_path):
    cohort = _cohort(store, genes=["GNLY"])
    out = tmp_path / "run"
    regress.compare(cohort, models=("ridge",), n_folds=2, out=out, progress=False)
    (out / "explain").mkdir()
    (out / "explain" / "report.html").write_text("<html>old</html>")
    (out / "localisation.parquet").write_bytes(b"old")
    before = (out / "config.json").read_bytes()
    with pytest.raises(regress.OutputExistsError, match="not empty .*a compare run with explain output"):
        regress.compare(cohort, models=("ridge",), n_folds=2, out=out, progress=False)
    assert (out / "config.json").read_bytes() == before and (out / "explain" / "report.html").exists()
    regress.compare(cohort, models=("lgbm",), n_folds=2, out=out, progress=False, overwrite=True,
                    model_params={"lgbm": {"n_estimators": 5}})  # fmt: skip
    assert not (out / "explain").exists() and not (out / "localisation.parquet").exists()  # nothing stale
    assert sorted(p.name for p in (out / "models").iterdir()) == ["lgbm", "mean"]
    assert json.loads((out / "config.json").read_text())["models"] == ["lgbm", "mean"]


def test_overwrite_never_deletes_what_slide2expr_did_not_write(store, tmp_path):
    cohort = _cohort(store, genes=["GNLY"])
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for call in (
        lambda: regress.compare(
            cohort, models=("ridge",), n_folds=2, out=out, progress=False, overwrite=True
        ),
        lambda: regress.train(cohort, model="ridge", out=out, overwrite=True),
    ):
        with pytest.raises(regress.OutputExistsError, match=r"did not write \(notes.txt\)"):
            call()
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt"
    ]
    (tmp_path / "file").write_text("x")
    with pytest.raises(regress.OutputExistsError, match="is a file"):
        regress.train(cohort, model="ridge", out=tmp_path / "file")
    regress.train(cohort, model="ridge", out=tmp_path / "empty")  # an absent or empty folder is fine
    (tmp_path / "empty2").mkdir()
    regress.train(cohort, model="ridge", out=tmp_path / "empty2")


def test_cli_train_and_compare_refuse_a_non_empty_out_without_force(store, tmp_path):
    run = tmp_path / "runB"
    r, _ = _run(store, run)
    assert r.exit_code == 0, r.output
    (run / "explain").mkdir()
    (run / "explain" / "report.html").write_text("old")
    config = (run / "config.json").read_text()
    r, text = _train(store, run)  # another command's output: refused, untouched
    assert r.exit_code == 2 and "error: out " in text and "is not empty" in text and "--overwrite" in text, (
        text
    )
    assert (run / "config.json").read_text() == config and not (run / "model.joblib").exists()
    r, text = _run(store, run)  # the same command: refused too
    assert r.exit_code == 2 and "a compare run with explain output" in text, text
    r, text = _run(store, run, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (run / "explain").exists() and (run / "metrics.parquet").exists()
    r, text = _train(store, run, "--overwrite")  # replaced cleanly: a model directory and nothing else
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.joblib"]


# ---- 2 and 9. the model's tiling -----------------------------------------------------------------------------


@pytest.fixture
def two_tilings(store, tmp_path):
    """A copy of the store with the same embeddings under a second tiling, and a model trained at the first."""
    root = tmp_path / "store2"
    shutil.copytree(store.root, root)
    shutil.copytree(root / "embeddings" / TILING, root / "embeddings" / OTHER_TILING)
    cohort = sql.load_cohort(root, encoder=ENCODER, tiling=TILING, targets="log", genes=["GNLY"])
    regress.train(cohort, model="ridge", out=tmp_path / "model", store=root, targets="log")
    return root, tmp_path / "model"


def test_predict_defaults_to_the_models_tiling(two_tilings, tmp_path):
    root, model = two_tilings
    assert json.loads((model / "config.json").read_text())["tiling"] == TILING
    r, text = _cli("predict", model, "--store", root, "--out", tmp_path / "pred")
    assert r.exit_code == 0, text
    r, text = _cli("predict", model, "--store", root, "--tiling", OTHER_TILING, "--out", tmp_path / "pred2")
    assert r.exit_code == 2 and f"--tiling {OTHER_TILING} is not the tiling" in text and TILING in text, text


def test_predict_refuses_a_store_without_the_models_tiling(two_tilings, tmp_path):
    root, model = two_tilings
    shutil.rmtree(root / "embeddings" / TILING)
    r, text = _cli("predict", model, "--store", root, "--out", tmp_path / "pred")
    assert r.exit_code == 2, text
    assert f"trained on {ENCODER} embeddings at tiling {TILING}" in text and f"only at {OTHER_TILING}" in text
    assert "--mpp 1 --tile-px 224" in text and not (tmp_path / "pred").exists()
    cohort = sql.load_cohort(root, encoder=ENCODER)
    with pytest.raises(
        regress.EncoderMismatchError, match=f"tiling '{OTHER_TILING}' ≠ the model's '{TILING}'"
    ):
        regress.predict(cohort, model=model)


def test_cli_names_the_tiling_option(two_tilings, tmp_path):
    root, model = two_tilings
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "tiling"}))
    r, text = _cli("predict", model, "--store", root, "--out", tmp_path / "pred")
    assert r.exit_code == 2 and "with --tiling" in text, text


# ---- 3. the targets' transform -------------------------------------------------------------------------------


def test_train_records_the_transform_and_predict_checks_it(store, tmp_path):
    r, text = _train(store, tmp_path / "model", "--genes", "GNLY")
    assert r.exit_code == 0, text
    assert json.loads((tmp_path / "model" / "config.json").read_text())["transform"] == "log1p"
    r, text = _cli(
        "predict", tmp_path / "model", "--store", store.root, "-t", "raw", "--out", tmp_path / "pred"
    )
    assert r.exit_code == 2 and "stored with transform 'none'" in text and "trained on 'log1p'" in text, text
    assert not (tmp_path / "pred").exists()
    r, text = _cli(
        "predict", tmp_path / "model", "--store", store.root, "-t", "log", "--out", tmp_path / "pred"
    )
    assert r.exit_code == 0, text
    cohort = _cohort(store, targets="raw")
    with pytest.raises(regress.TransformMismatchError, match="transform 'none'"):
        regress.predict(cohort, model=tmp_path / "model", store=store.root, targets="raw")


# ---- 4 and 5. clean errors for bad arguments -----------------------------------------------------------------


def test_predict_with_a_compare_run_says_so(store, tmp_path):
    r, _ = _run(store, tmp_path / "run")
    assert r.exit_code == 0, r.output
    r, text = _cli("predict", tmp_path / "run", "--store", store.root, "--out", tmp_path / "pred")
    assert r.exit_code == 2, text
    assert "is a compare run" in text and "slide2expr train" in text and "Traceback" not in text, text
    r, text = _cli("predict", tmp_path / "nothing", "--store", store.root, "--out", tmp_path / "pred")
    assert r.exit_code == 2 and "is not a model directory" in text, text


def test_compare_params_of_a_model_must_be_an_object(store, tmp_path):
    r, text = _run(store, tmp_path / "run", "--params", '{"ridge": 5}')
    assert r.exit_code == 2 and "parameters of 'ridge' must be a JSON object" in text, text
    with pytest.raises(regress.CompareError, match=r"model_params\['ridge'\] must be"):
        regress.compare(
            _cohort(store, genes=["GNLY"]), models=("ridge",), model_params={"ridge": 5}, progress=False
        )


def test_train_names_a_parameter_of_the_wrong_type(store, tmp_path):
    r, text = _cli(
        "train", "--store", store.root, "--targets", "log", "--encoder", ENCODER, "--model", "mil",
        "--genes", "GNLY", "--params", '{"max_epochs": "abc"}', "--out", tmp_path / "m",
    )  # fmt: skip
    assert r.exit_code == 2 and "max_epochs must be an integer; got 'abc'" in text, text
    for params, match in (
        ({"lr": "fast"}, "lr must be a number"),
        ({"patience": 2.5}, "patience must be an integer or None"),
        ({"n_members": 1, "hidden_dim": "x"}, "hidden_dim must be an integer"),
    ):
        with pytest.raises(regress.BagInputError, match=match):
            regress.make_model("mil", params=params).fit([np.ones((3, 4))] * 4, np.arange(4.0))
    with pytest.raises(regress.BagInputError, match="ks must be positive integers"):
        regress.make_model("he2rna", params={"ks": "ab"}).fit([np.ones((3, 4))] * 4, np.arange(4.0))
    r, text = _train(store, tmp_path / "m2", "--genes", "GNLY", "--params", '{"alphas": "abc"}')
    assert r.exit_code == 2 and "alphas" in text, text


def test_library_type_errors_name_the_parameters_given(store):
    cohort = _cohort(store, genes=["GNLY"])
    with pytest.raises(regress.UnknownModelError, match="model 'lgbm': .*wrong type.*n_estimators='abc'"):
        regress.train(cohort, model="lgbm", model_params={"n_estimators": "abc"})


def test_nested_train_params_name_only_what_was_passed(store, tmp_path):
    r, text = _cli(
        "train", "--store", store.root, "--targets", "log", "--encoder", ENCODER, "--model", "mil",
        "--params", '{"mil": {"max_epochs": 2}}', "--out", tmp_path / "m",
    )  # fmt: skip
    assert r.exit_code == 2 and "'mil'" in text and "random_state" not in text, text
    assert "not nested under a model name" in text
    with pytest.raises(regress.UnknownModelError, match=r"bad parameters \['max_epoch'\]") as err:
        regress.make_model("mil", params={"max_epoch": 3}, random_state=0)
    assert "random_state" not in str(err.value).split(":")[1]
    with pytest.raises(regress.UnknownModelError, match=r"bad parameters \['alpha'\]"):
        regress.make_model("ridge", params={"alpha": 3})


# ---- 6. bags without targets ---------------------------------------------------------------------------------


def test_compare_reports_bags_without_targets_once(store, tmp_path):
    r, text = _cli(
        "compare", "--store", store.root, "--targets", "partial", "--encoder", ENCODER, "--models", "ridge",
        "--n-folds", 2, "--genes", "GNLY", "--out", tmp_path / "run",
    )  # fmt: skip
    assert r.exit_code == 0, text
    assert text.count("left out of the comparison") == 1 and "kept with NaN" not in text, text
    assert "UserWarning" not in text and "warnings.warn" not in text and "2 bag(s)" in text
    r, text = _train(store, tmp_path / "model", targets="partial")
    assert r.exit_code == 0, text
    assert text.count("left out of training") == 1 and "kept with NaN" not in text and "on 10 bags" in text, (
        text
    )
    with pytest.warns(regress.LeftOutBagsWarning, match="2 bag"):
        regress.train(_cohort(store, targets="partial"), model="ridge")


# ---- 7 and 8. repeated genes, devices ------------------------------------------------------------------------


def test_repeated_genes_are_used_once(store, tmp_path):
    r, text = _train(store, tmp_path / "model", "--genes", "FBN1,GNLY,FBN1")
    assert r.exit_code == 0, text
    assert "FBN1 more than once" in text and "× 2 genes" in text
    assert json.loads((tmp_path / "model" / "config.json").read_text())["genes"] == ["FBN1", "GNLY"]
    r, text = _cli("predict", tmp_path / "model", "--store", store.root, "--out", tmp_path / "pred")
    assert r.exit_code == 0, text
    p = pq.read_table(tmp_path / "pred" / "predictions.parquet").to_pandas()
    assert not p.duplicated(["bag_id", "gene"]).any() and len(p) == 12 * 2
    one = _cohort(store, genes=["GNLY"])
    twice = dataclasses.replace(one, genes=("GNLY", "GNLY"), y_true=np.repeat(one.y_true, 2, axis=1))
    with pytest.raises(regress.CompareError, match="GNLY more than once"):
        regress.train(twice, model="ridge")
    with pytest.raises(regress.CompareError, match="GNLY more than once"):
        regress.compare(twice, models=("ridge",), n_folds=2, progress=False)


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda0"])
def test_compare_validates_the_device_up_front(store, tmp_path, device):
    r, text = _run(store, tmp_path / "run", "--device", device)
    assert r.exit_code == 2 and "device must be auto, cpu or cuda" in text, text
    assert not (tmp_path / "run").exists()
