"""compare() writes a complete run directory that follows the contract; train/predict and the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from slide2expr.contract import RUN_FILES

# one network (not the nested ensemble): its attention is the softmax of its logits and its bag prediction
# Σ attention × tile_pred, the identities the attention table is checked against
FAST_PARAMS = {"mil": {"max_epochs": 8, "device": "cpu", "nested": False}, "lgbm": {"n_estimators": 30}}


def _cohort(store, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        return sql.load_cohort(store.root, encoder=store.encoder, targets="expr", **kw)


@pytest.fixture(scope="module")
def run(fake_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    cohort = _cohort(fake_store)
    res = regress.compare(
        cohort,
        models=("mil", "lgbm", "ridge"),
        n_folds=3,
        seed=0,
        out=out,
        model_params=FAST_PARAMS,
        progress=False,
        store=fake_store.root,
        targets="expr",
    )
    return res, cohort, out


def test_run_directory_is_complete(run):
    res, cohort, out = run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert (out / "plots" / "compare_pearson.png").stat().st_size > 10_000
    for model in ("mil", "lgbm", "ridge", "mean"):
        assert sorted(p.name for p in (out / "models" / model).iterdir()) == [
            "fold0.joblib",
            "fold1.joblib",
            "fold2.joblib",
        ]
    cfg = json.loads((out / "config.json").read_text())
    for key in (
        "store",
        "targets",
        "encoder",
        "tiling",
        "by",
        "models",
        "model_params",
        "n_folds",
        "seed",
        "genes",
        "transform",
        "version",
        "encoder_meta",
    ):
        assert key in cfg, key
    assert cfg["models"] == ["mil", "lgbm", "ridge", "mean"] and cfg["genes"] == list(cohort.genes)
    assert cfg["encoder_meta"]["weights_sha256"] == "0" * 64 and cfg["n_folds"] == 3


def test_folds_are_patient_grouped_and_identical_for_all_models(run):
    res, cohort, out = run
    folds = pq.read_table(out / "folds.parquet").to_pandas()
    assert len(folds) == cohort.n_bags and folds["fold"].dtype == np.int32
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    merged = pred.merge(folds, on=["bag_id", "patient_id"], suffixes=("", "_f"))
    assert len(merged) == len(pred) and (merged["fold"] == merged["fold_f"]).all()
    # every model predicts every bag × gene exactly once
    counts = pred.groupby("model").size()
    assert (counts == cohort.n_bags * len(cohort.genes)).all() and set(counts.index) == {
        "mil",
        "lgbm",
        "ridge",
        "mean",
    }
    # y_true is the cohort's targets
    y = pd.DataFrame(cohort.y_true, index=cohort.bag_ids, columns=cohort.genes)
    some = pred[pred.model == "ridge"].head(20)
    np.testing.assert_allclose(
        some["y_true"], [y.loc[b, g] for b, g in zip(some.bag_id, some.gene, strict=True)]
    )


def test_mean_model_predicts_the_training_mean(run):
    res, cohort, out = run
    pred = res.predictions
    folds = res.folds.set_index("bag_id")["fold"]
    y = pd.DataFrame(cohort.y_true, index=cohort.bag_ids, columns=cohort.genes)
    row = pred[pred.model == "mean"].iloc[0]
    train = folds.index[folds != row.fold]
    assert row.y_pred == pytest.approx(y.loc[train, row.gene].mean())
    m = res.metrics
    base = m[(m.model == "mean") & (m.fold == -1)]
    np.testing.assert_allclose(base["rmse"], base["rmse_baseline"])


def test_metrics_schema_and_values(run):
    res, cohort, out = run
    t = pq.read_table(out / "metrics.parquet")
    types = {f.name: str(f.type) for f in t.schema}
    assert types["fold"] == "int32" and types["n"] == "int64" and types["well_predicted"] == "bool"
    m = t.to_pandas()
    n_models, n_genes = 4, len(cohort.genes)
    assert len(m) == n_models * n_genes * (3 + 1)
    pooled = m[m.fold == -1]
    assert pooled["fdr"].notna().any() and m.loc[m.fold >= 0, "fdr"].isna().all()
    # recompute one pooled row from predictions
    p = res.predictions
    sel = p[(p.model == "ridge") & (p.gene == cohort.genes[0])]
    row = pooled[(pooled.model == "ridge") & (pooled.gene == cohort.genes[0])].iloc[0]
    from scipy.stats import pearsonr

    assert row["pearson_r"] == pytest.approx(pearsonr(sel.y_true, sel.y_pred).statistic)
    assert row["n"] == cohort.n_bags
    # the driver genes of the fake store are learnable: ridge predicts them well; the noise gene is not
    assert pooled[(pooled.model == "ridge") & (pooled.gene == "NOISE1")]["well_predicted"].item() is False
    assert pooled[(pooled.model == "ridge")]["well_predicted"].sum() >= 2
    comps = pq.read_table(out / "comparisons.parquet").to_pandas()
    assert len(comps) == 6 and set(comps.columns) >= {
        "model_a",
        "model_b",
        "metric",
        "n_genes",
        "median_diff",
        "ci_low",
        "ci_high",
        "wilcoxon_stat",
        "wilcoxon_p",
    }
    assert set(res.summary["model"]) == {"mil", "lgbm", "ridge", "mean"}


def test_attention_table_follows_the_contract(run, fake_store):
    res, cohort, out = run
    t = pq.read_table(out / "attention.parquet")
    assert [(f.name, str(f.type)) for f in t.schema] == [
        ("model", "string"),
        ("fold", "int32"),
        ("bag_id", "string"),
        ("slide_id", "string"),
        ("tile_id", "int32"),
        ("x", "int64"),
        ("y", "int64"),
        ("gene", "string"),
        ("attention", "float"),
        ("attention_logit", "float"),
        ("tile_pred", "float"),
    ]
    a = t.to_pandas()
    assert set(a["model"]) == {"mil"}
    assert len(a) == len(cohort.features) * len(cohort.genes)  # every held-out tile × gene, once
    sums = a.groupby(["bag_id", "gene"])["attention"].sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-4)
    # softmax of the logits within a bag gives the attention
    one = a[(a.bag_id == a.bag_id.iloc[0]) & (a.gene == a.gene.iloc[0])]
    e = np.exp(one.attention_logit - one.attention_logit.max())
    np.testing.assert_allclose(one.attention, e / e.sum(), rtol=1e-4)
    # bag prediction = Σ attention × tile_pred (instance mode)
    p = res.predictions.set_index(["model", "bag_id", "gene"])["y_pred"]
    assert (one.attention * one.tile_pred).sum() == pytest.approx(
        p[("mil", one.bag_id.iloc[0], one.gene.iloc[0])], rel=1e-3
    )
    # rows of a slide are in tile_id order, and coordinates match the store
    from tests._fakestore import TILE_PX0

    for _, g in a.groupby(["slide_id", "gene"], sort=False):
        tid = g["tile_id"].to_numpy()
        assert (np.diff(tid) > 0).all()
        np.testing.assert_array_equal(g["x"], (tid % 8) * TILE_PX0)
        np.testing.assert_array_equal(g["y"], (tid // 8) * TILE_PX0)
    sid = fake_store.slides[0][0]
    g = a[(a.slide_id == sid) & (a.gene == a.gene.iloc[0])]
    assert len(g) == len(fake_store.embeddings[sid])


def test_embedding_mode_attention_has_null_tile_predictions(fake_store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        cohort = sql.load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr", genes=["FBN1"])
    out = tmp_path / "run"
    (out / "models" / "old").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    params = {"mil-embedding": {"max_epochs": 2, "device": "cpu"}}
    regress.compare(
        cohort,
        models=("mil-embedding",),
        n_folds=2,
        out=out,
        model_params=params,
        progress=False,
        overwrite=True,
    )
    a = pq.read_table(out / "attention.parquet").to_pandas()
    assert set(a["model"]) == {"mil-embedding"} and set(a["gene"]) == {"FBN1"}
    assert a["tile_pred"].isna().all() and a["attention_logit"].notna().all()
    assert len(a) == len(cohort.features)
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "mean",
        "mil-embedding",
    ]  # stale models removed


def test_sql_connect_reads_the_run(run, fake_store):
    res, cohort, out = run
    con = sql.connect(fake_store.root, run=out)
    n = con.execute("select count(*) from predictions where model = 'mil'").fetchone()[0]
    assert n == cohort.n_bags * len(cohort.genes)
    top = con.execute("select count(*) from metrics where fold = -1 and well_predicted").fetchone()[0]
    assert top == int(res.metrics.loc[res.metrics.fold == -1, "well_predicted"].astype(bool).sum())


def test_saved_fold_models_reproduce_the_predictions(run):
    import joblib

    res, cohort, out = run
    est = joblib.load(out / "models" / "lgbm" / "fold1.joblib")
    assert len(est[-1].estimators_) == len(cohort.genes)
    te = res.folds.index[res.folds.fold == 1]
    bags = [cohort.bags[i] for i in te]
    pred = est.predict(bags)
    p = res.predictions[(res.predictions.model == "lgbm") & (res.predictions.fold == 1)]
    np.testing.assert_allclose(pred.ravel(), p["y_pred"].to_numpy(), rtol=1e-6)


def test_fold_models_saw_only_training_patients(run):
    import joblib

    res, cohort, out = run
    y = pd.DataFrame(cohort.y_true, index=cohort.bag_ids, columns=cohort.genes)
    folds = res.folds.set_index("bag_id")["fold"]
    for k in range(3):
        mil = joblib.load(out / "models" / "mil" / f"fold{k}.joblib")
        train = folds.index[folds != k]
        np.testing.assert_allclose(
            mil.y_mean_, y.loc[train].mean(axis=0).to_numpy()
        )  # z-scoring fitted per fold
        assert set(res.predictions.query("model == 'mil' and fold == @k")["bag_id"]).isdisjoint(train)


def test_compare_errors(fake_store):
    cohort = _cohort(fake_store)
    with pytest.raises(regress.UnknownModelError, match="unknown model 'svm'"):
        regress.compare(cohort, models=("svm",), progress=False)
    with pytest.raises(regress.CompareError, match="only 12 patients"):
        regress.compare(cohort, models=("ridge",), n_folds=20, progress=False)
    no_targets = sql.load_cohort(fake_store.root, encoder=fake_store.encoder)
    with pytest.raises(regress.CompareError, match="no targets"):
        regress.compare(no_targets, progress=False)


def test_train_predict_and_encoder_mismatch(fake_store, tmp_path):
    cohort = _cohort(fake_store)
    est = regress.train(cohort, model="ridge", out=tmp_path / "model", store=fake_store.root, targets="expr")
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (cfg["encoder"], cfg["dim"], cfg["weights_sha256"]) == (
        fake_store.encoder,
        fake_store.dim,
        "0" * 64,
    )
    df = regress.predict(cohort, model=tmp_path / "model", out=tmp_path / "pred")
    assert len(df) == cohort.n_bags * len(cohort.genes)
    np.testing.assert_allclose(df["y_pred"].to_numpy().reshape(cohort.n_bags, -1), est.predict(cohort.bags))
    assert json.loads((tmp_path / "pred" / "config.json").read_text())["kind"] == "predictions"
    for key, value, match in (
        ("weights_sha256", "f" * 64, "different weights"),
        ("dim", 999, "dimension 16"),
        ("encoder", "uni", "encoder 'fake-encoder'"),
    ):
        bad = dict(cfg, **{key: value})
        (tmp_path / "model" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(regress.EncoderMismatchError, match=match):
            regress.predict(cohort, model=tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))


def test_cli_compare_train_predict(fake_store, tmp_path):
    from slide2expr.cli import app

    runner = CliRunner()
    root = str(fake_store.root)
    r = runner.invoke(
        app,
        [
            "compare",
            "--store",
            root,
            "--targets",
            "expr",
            "--encoder",
            fake_store.encoder,
            "--models",
            "ridge,mean",
            "--n-folds",
            "3",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "median r" in r.output and (tmp_path / "run" / "metrics.parquet").exists()
    r = runner.invoke(
        app,
        [
            "compare",
            "--store",
            root,
            "--targets",
            "expr",
            "--encoder",
            fake_store.encoder,
            "--models",
            "ridge,svm",
            "--out",
            str(tmp_path / "run2"),
        ],
    )
    assert r.exit_code == 2 and "unknown model 'svm'" in r.output
    params = '{"mil": {"max_epochs": 2}}'
    r = runner.invoke(
        app,
        [
            "compare",
            "--store",
            root,
            "--targets",
            "expr",
            "--encoder",
            fake_store.encoder,
            "--models",
            "mil",
            "--n-folds",
            "2",
            "--genes",
            "GNLY",
            "--device",
            "cpu",
            "--params",
            params,
            "--no-save-models",
            "--out",
            str(tmp_path / "run3"),
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run3" / "config.json").read_text())
    assert cfg["model_params"] == {"mil": {"max_epochs": 2, "device": "cpu"}} and cfg["genes"] == ["GNLY"]
    assert not (tmp_path / "run3" / "models").exists()
    r = runner.invoke(
        app,
        [
            "compare",
            "--store",
            root,
            "--targets",
            "expr",
            "--encoder",
            fake_store.encoder,
            "--params",
            "{not json",
            "--out",
            str(tmp_path / "run4"),
        ],
    )
    assert r.exit_code == 2 and "--params must be JSON" in r.output
    r = runner.invoke(
        app,
        [
            "train",
            "--store",
            root,
            "--targets",
            "expr",
            "--encoder",
            fake_store.encoder,
            "--model",
            "ridge",
            "--out",
            str(tmp_path / "model"),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["predict", str(tmp_path / "model"), "--store", root, "--out", str(tmp_path / "p")]
    )
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "p" / "predictions.parquet").num_rows == 12 * len(fake_store.genes)
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps(dict(cfg, weights_sha256="a" * 64)))
    r = runner.invoke(
        app, ["predict", str(tmp_path / "model"), "--store", root, "--out", str(tmp_path / "q")]
    )
    assert r.exit_code == 2 and "different weights" in r.output
    assert not (tmp_path / "q").exists()
