"""predict streams: attention.parquet is appended batch by batch, equal to the table of every bag's scores at once,
with one batch's tile scores held at a time; Ctrl-C leaves ``out`` as it was."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pyarrow.parquet as pq
import pytest

from slide2expr import regress, sql
from slide2expr.contract import PREDICT_FOLD, PREDICTIONS_SCHEMA, PredictionLayout, write_table_atomic
from slide2expr.regress import _persist
from slide2expr.regress._folds import attention_rows
from slide2expr.regress._meta import TileScores
from slide2expr.regress._runs import as_table

MIL_PARAMS = {"max_epochs": 2, "device": "cpu", "hidden_dim": 8, "attention_dim": 4}
#: Row groups small enough that the fake store's tables span several, cut across bags and batches.
SMALL_GROUPS = 300


def _cohort(store, *, lazy: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        load = sql.lazy_cohort if lazy else sql.load_cohort
        return load(store.root, encoder=store.encoder, targets="expr")


def _files(root):
    """Every file under ``root`` (hidden ones included) with its bytes."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mil_model(fake_store, tmp_path_factory):
    model = tmp_path_factory.mktemp("streamed mil") / "model"
    regress.train(_cohort(fake_store), model="mil", model_params=MIL_PARAMS, out=model)
    return model


def _expected_attention(est, cohort, *, batch_bags, genes, recorded):
    """attention.parquet's table built at once from every bag's scores (each batch scored as predict scores it)."""
    scores = []
    for start in range(0, cohort.n_bags, batch_bags):
        scores += est.predict_tiles(cohort.bags[start : start + batch_bags])
    cols = [genes.index(g) for g in recorded]
    scores = [TileScores(*(None if f is None else f[:, cols] for f in s)) for s in scores]
    return attention_rows(
        scores, cohort, np.arange(cohort.n_bags), name="mil", fold=PREDICT_FOLD, genes=list(recorded)
    )


@pytest.mark.parametrize("lazy", [False, True], ids=["in memory", "read on access"])
def test_the_streamed_directory_equals_the_one_written_at_once(
    fake_store, mil_model, tmp_path, monkeypatch, lazy
):
    monkeypatch.setattr(_persist, "ATTENTION_ROW_GROUP_ROWS", SMALL_GROUPS)
    cohort = _cohort(fake_store, lazy=lazy)
    est, config = regress.load_model(mil_model)
    recorded = ["SPINK4", "GNLY"]  # a subset, not in the model's order
    seen = []
    df = regress.predict(
        cohort,
        model=mil_model,
        out=tmp_path / "pred",
        batch_bags=3,
        attention_genes=recorded,
        progress=lambda done, total: seen.append(done),
    )
    assert len(seen) > 2 and seen[-1] == cohort.n_bags  # several batches appended
    layout = PredictionLayout(tmp_path / "pred")

    want = _expected_attention(est, cohort, batch_bags=3, genes=list(config["genes"]), recorded=recorded)
    got = pq.read_table(layout.attention)
    assert got.schema.equals(want.schema, check_metadata=True) and got.equals(want)
    # the same file as one write of the whole table: row groups, options and metadata alike
    write_table_atomic(want, tmp_path / "at_once.parquet", compression="zstd", row_group_size=SMALL_GROUPS)
    meta = pq.ParquetFile(layout.attention).metadata
    assert meta.num_row_groups > cohort.n_bags // 3
    assert layout.attention.read_bytes() == (tmp_path / "at_once.parquet").read_bytes()

    pred = pq.read_table(layout.predictions)
    assert pred.equals(as_table(df, PREDICTIONS_SCHEMA))
    np.testing.assert_array_equal(
        pred.column("y_pred").to_numpy().reshape(cohort.n_bags, -1), est.predict(list(cohort.bags))
    )


class _ScoreWatch:
    """Wraps an estimator class's ``predict_tiles``: counts calls and checks, at each call, that no earlier
    batch's score arrays are alive."""

    def __init__(self, cls):
        self.inner, self.calls, self.alive_at_call = cls.predict_tiles, 0, []
        self._refs: list[weakref.ref] = []

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self._refs)

    def __call__(self, est, bags):
        self.calls += 1
        self.alive_at_call.append(self.alive())
        scores = self.inner(est, bags)
        self._refs += [weakref.ref(f) for s in scores for f in s if f is not None]
        return scores


def test_predict_holds_one_batch_of_tile_scores(fake_store, mil_model, tmp_path, monkeypatch):
    cohort = _cohort(fake_store)
    cls = type(regress.load_model(mil_model)[0])
    watch = _ScoreWatch(cls)
    monkeypatch.setattr(cls, "predict_tiles", lambda est, bags: watch(est, bags))
    live = []
    regress.predict(
        cohort,
        model=mil_model,
        out=tmp_path / "pred",
        batch_bags=2,
        progress=lambda *_: live.append(watch.alive()),
    )
    assert watch.calls == -(-cohort.n_bags // 2)
    assert watch.alive_at_call == [0] * watch.calls and live == [0] * watch.calls and watch.alive() == 0

    watch.calls = 0
    regress.predict(cohort, model=mil_model, batch_bags=2)  # no out: no tile scores at all
    assert watch.calls == 0


@pytest.mark.parametrize("earlier", [False, True], ids=["no out yet", "an earlier prediction"])
def test_ctrl_c_in_the_second_batch_leaves_out_as_it_was(fake_store, mil_model, tmp_path, earlier):
    cohort = _cohort(fake_store)
    pred = tmp_path / "pred"
    if earlier:
        regress.predict(cohort, model=mil_model, out=pred, attention_genes=["FBN1"])
    before = _files(tmp_path)

    def interrupt(done, total):
        if done > 3:
            raise KeyboardInterrupt

    with pytest.raises(regress.PredictInterrupted) as err:
        regress.predict(cohort, model=mil_model, out=pred, overwrite=True, batch_bags=3, progress=interrupt)
    assert (err.value.done, err.value.total, err.value.out) == (6, cohort.n_bags, pred)
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == (
        ["pred"] if earlier else []
    )
