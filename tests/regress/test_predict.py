"""predict writes a prediction directory: bag predictions, per-tile attention and tile predictions, atomically."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr import regress, sql
from slide2expr.contract import (
    ATTENTION_SCHEMA,
    PREDICT_FOLD,
    PREDICTIONS_SCHEMA,
    OutputExistsError,
    PredictionLayout,
    describe_output,
)

MIL_PARAMS = {"max_epochs": 3, "device": "cpu", "hidden_dim": 16, "attention_dim": 8}


def _cohort(store, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        return sql.load_cohort(store.root, encoder=store.encoder, targets="expr", **kw)


def _files(root):
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mil_model(fake_store, tmp_path_factory):
    model = tmp_path_factory.mktemp("mil model") / "model"
    regress.train(
        _cohort(fake_store),
        model="mil",
        model_params=MIL_PARAMS,
        out=model,
        store=fake_store.root,
        targets="expr",
    )
    return model


def test_the_prediction_directory_holds_bags_and_tiles(fake_store, mil_model, tmp_path):
    cohort = _cohort(fake_store)
    pred = tmp_path / "pred"
    df = regress.predict(
        cohort, model=mil_model, out=pred, store=fake_store.root, targets="expr", batch_bags=5
    )
    layout = PredictionLayout(pred)
    assert layout.exists() and sorted(p.name for p in pred.iterdir()) == [
        "attention.parquet",
        "config.json",
        "predictions.parquet",
    ]
    assert describe_output(pred) == "a prediction directory"
    config = json.loads(layout.config.read_text())
    assert config["kind"] == "predictions" and config["models"] == ["mil"] and config["fold"] == PREDICT_FOLD
    assert (config["encoder"], config["tiling"], config["dim"]) == (fake_store.encoder, fake_store.tiling, 16)
    assert config["genes"] == list(fake_store.genes) and config["model_dir"] == str(mil_model.resolve())

    est, _ = regress.load_model(mil_model)
    p = pq.read_table(layout.predictions)
    assert p.schema.equals(PREDICTIONS_SCHEMA, check_metadata=False)
    p = p.to_pandas()
    assert (p["fold"] == PREDICT_FOLD).all() and (p["model"] == "mil").all()
    np.testing.assert_allclose(
        p["y_pred"].to_numpy().reshape(cohort.n_bags, -1), est.predict(cohort.bags), rtol=1e-5
    )
    np.testing.assert_allclose(p["y_pred"], df["y_pred"])
    np.testing.assert_allclose(p["y_true"].to_numpy().reshape(cohort.n_bags, -1), cohort.y_true)

    a = pq.read_table(layout.attention)
    assert a.schema.equals(ATTENTION_SCHEMA, check_metadata=False)
    a = a.to_pandas()
    n_genes = len(fake_store.genes)
    assert len(a) == sum(len(e) for e in fake_store.embeddings.values()) * n_genes
    assert (a["fold"] == PREDICT_FOLD).all() and a["tile_pred"].notna().all()
    np.testing.assert_allclose(a.groupby(["bag_id", "gene"])["attention"].sum(), 1.0, rtol=1e-4)
    scores = est.predict_tiles(cohort.bags)
    first = a[(a["bag_id"] == cohort.bag_ids[0]) & (a["gene"] == fake_store.genes[1])]
    np.testing.assert_allclose(first["attention"], scores[0].attention[:, 1], rtol=1e-5)
    np.testing.assert_allclose(first["tile_pred"], scores[0].tile_pred[:, 1], rtol=1e-5)
    # the tiles are the store's: the attention view joins their width and height
    con = sql.connect(fake_store.root, run=pred)
    w = con.sql("select min(w), max(w), count(*) - count(h) from attention").fetchall()[0]
    assert w == (448, 448, 0)
    top = sql.run_query(
        con, "top_attention_tiles", params={"model": "mil", "gene": "GNLY", "rank_by": "relative", "k": 4}
    ).to_pandas()
    assert list(top["rank"]) == [1, 2, 3, 4] and (top["gene"] == "GNLY").all()
    assert (np.diff(top["relative_attention"]) <= 0).all() and (top["w"] == 448).all()


def test_a_model_without_attention_writes_no_attention_table(fake_store, tmp_path):
    cohort = _cohort(fake_store)
    regress.train(cohort, model="ridge", out=tmp_path / "ridge")
    regress.predict(cohort, model=tmp_path / "ridge", out=tmp_path / "pred")
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["config.json", "predictions.parquet"]


def test_predict_refuses_a_non_empty_out_and_replaces_it_whole(fake_store, mil_model, tmp_path):
    cohort = _cohort(fake_store)
    pred = tmp_path / "pred"
    regress.predict(cohort, model=mil_model, out=pred)
    (pred / "explain").mkdir()
    (pred / "explain" / "stale.png").write_bytes(b"old")
    before = _files(tmp_path)
    with pytest.raises(OutputExistsError, match="is not empty .*a prediction directory"):
        regress.check_predict(cohort, model=mil_model, out=pred)
    with pytest.raises(OutputExistsError, match="overwrite"):
        regress.predict(cohort, model=mil_model, out=pred)
    assert _files(tmp_path) == before
    regress.predict(cohort, model=mil_model, out=pred, overwrite=True)
    assert not (pred / "explain").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pred"]
    (pred / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"did not write \(mine.txt\)"):
        regress.predict(cohort, model=mil_model, out=pred, overwrite=True)


def test_ctrl_c_leaves_the_previous_predictions_untouched(fake_store, mil_model, tmp_path):
    cohort = _cohort(fake_store)
    pred = tmp_path / "pred"
    regress.predict(cohort, model=mil_model, out=pred)
    before = _files(tmp_path)

    def interrupt(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(regress.PredictInterrupted) as err:
        regress.predict(cohort, model=mil_model, out=pred, overwrite=True, batch_bags=2, progress=interrupt)
    assert (err.value.done, err.value.total) == (4, cohort.n_bags)
    assert str(err.value).startswith(
        f"interrupted after predicting 4 of {cohort.n_bags} bags: nothing written to"
    )
    assert isinstance(err.value, KeyboardInterrupt)
    assert _files(tmp_path) == before  # no hidden folder left either


def test_cli_predict_dry_run_and_interruption(fake_store, mil_model, tmp_path, monkeypatch):
    from slide2expr.cli import app

    runner = CliRunner()
    root = str(fake_store.root)
    pred = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(mil_model), "--store", root, "--out", str(pred), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "attention.parquet" in r.output and "nothing written" in r.output and not pred.exists()
    r = runner.invoke(app, ["predict", str(mil_model), "--store", root, "--out", str(pred)])
    assert r.exit_code == 0, r.output
    assert f"slide2expr explain {pred} --store {root}" in " ".join(r.output.split())
    r = runner.invoke(app, ["predict", str(mil_model), "--store", root, "--out", str(pred), "--dry-run"])
    assert r.exit_code == 2 and "--overwrite" in r.output

    def interrupted(cohort, **kw):
        raise regress.PredictInterrupted(3, cohort.n_bags, kw["out"])

    monkeypatch.setattr(regress, "predict", interrupted)
    r = runner.invoke(app, ["predict", str(mil_model), "--store", root, "--out", str(pred), "--overwrite"])
    text = " ".join(r.output.split())
    assert r.exit_code == 130, r.output
    assert "interrupted after predicting 3 of" in text and "previous contents are unchanged" in text
    assert f"run `slide2expr predict {mil_model} --store {root} --out {pred} --overwrite`" in text


def test_attention_genes_bound_the_tile_table(fake_store, mil_model, tmp_path):
    cohort = _cohort(fake_store)
    with pytest.raises(ValueError, match=r"attention_genes \['NOPE'\] are not genes of the model"):
        regress.check_predict(cohort, model=mil_model, attention_genes=["NOPE"])
    regress.predict(cohort, model=mil_model, out=tmp_path / "pred", attention_genes=["FBN1", "GNLY"])
    a = pq.read_table(tmp_path / "pred" / "attention.parquet").to_pandas()
    assert list(dict.fromkeys(a["gene"])) == ["FBN1", "GNLY"]
    assert json.loads((tmp_path / "pred" / "config.json").read_text())["attention_genes"] == ["FBN1", "GNLY"]
    est, _ = regress.load_model(mil_model)
    first = a[(a["bag_id"] == cohort.bag_ids[0]) & (a["gene"] == "GNLY")]
    gnly = list(fake_store.genes).index("GNLY")
    np.testing.assert_allclose(
        first["attention"], est.predict_tiles(cohort.bags[:1])[0].attention[:, gnly], rtol=1e-5
    )
