"""Gene selection in ``compare``: named panels, files and lists (did-you-mean), protein-coding only, top-N by
variance or mean chosen on each fold's training patients, the default above 2,000 genes, and outputs that stay
bounded with many genes (metrics hold every compared gene; the plot and the attention table do not grow)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, RegressorMixin

from slide2expr import regress, sql
from slide2expr.regress import TileScores
from slide2expr.regress._genes import MAX_ATTENTION_GENES, MAX_GENES_WITHOUT_SELECTION
from slide2expr.regress._models import _REGISTRY
from slide2expr.regress._plots import MAX_PLOT_GENES

FAST = {"lgbm": {"n_estimators": 5}}


@pytest.fixture(scope="module")
def base(fake_store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        return sql.load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr")


def _wide(base, n_genes: int, *, seed: int = 0, types: dict[str, str] | None = None):
    """``base`` with ``n_genes`` targets: its genes, then ``G0004…`` of rising spread (random, so unrelated to the
    slides); ``types`` goes to ``meta["gene_types"]``."""
    rng = np.random.default_rng(seed)
    extra = n_genes - len(base.genes)
    spread = np.linspace(0.1, 3.0, extra)
    y = np.hstack([base.y_true, rng.normal(size=(base.n_bags, extra)) * spread])
    genes = (*base.genes, *(f"G{i:04d}" for i in range(len(base.genes), n_genes)))
    meta = dict(base.meta) | ({"gene_types": types} if types else {})
    return dataclasses.replace(base, y_true=y, genes=genes, meta=meta)


def test_panels_files_and_lists(base, tmp_path):
    c = dataclasses.replace(base, genes=("GNLY", "WARS1", "SPINK4", "NOISE1"))
    s = regress.select_genes(c.genes, genes="WARS,GNLY")
    assert s.genes == ("WARS1", "GNLY") and s.index.tolist() == [1, 0] and s.top_genes is None
    path = tmp_path / "genes.txt"
    path.write_text("# my genes\nSPINK4\nGNLY, NOISE1\n")
    s = regress.select_genes(c.genes, genes=str(path))
    assert s.genes == ("SPINK4", "GNLY", "NOISE1") and s.source.startswith("genes file")
    with pytest.raises(
        regress.GeneSelectionError,
        match=r"not in the targets: GNLYY, spink4; did you mean GNLYY → GNLY, spink4 → SPINK4\?",
    ):
        regress.select_genes(c.genes, genes=["GNLYY", "spink4"])
    with pytest.raises(regress.GeneSelectionError, match=r"not in the targets: SEMA5A, CTTNBP2"):
        regress.select_genes(c.genes, genes="graziani2022")
    path.write_text("GNLY\nGNLY\n")
    with pytest.raises(regress.GeneSelectionError, match="lists gene.s. twice: GNLY"):
        regress.select_genes(c.genes, genes=path)
    for bad, message in (
        ({"top_genes": 0}, r"top_genes=0 \(--top-genes\)"),
        ({"rank_genes_by": "median"}, r"rank_genes_by='median' \(--rank-genes-by\)"),
        ({"protein_coding": True}, r"protein_coding \(--protein-coding\) needs gene types"),
    ):
        with pytest.raises(regress.GeneSelectionError, match=message):
            regress.select_genes(c.genes, **bad)


def test_protein_coding_reads_the_gene_types(base):
    types = {"GNLY": "protein_coding", "FBN1": "protein_coding", "SPINK4": "lncRNA", "NOISE1": "miRNA"}
    s = regress.select_genes(base.genes, protein_coding=True, gene_types=types)
    assert s.genes == ("GNLY", "FBN1") and s.protein_coding
    res = regress.compare(
        dataclasses.replace(base, meta=dict(base.meta) | {"gene_types": types}),
        models=("ridge",), n_folds=3, protein_coding=True, progress=False,
    )  # fmt: skip
    assert sorted(res.metrics["gene"].unique()) == ["FBN1", "GNLY"]
    assert res.config["gene_selection"]["protein_coding"] is True


def test_top_genes_are_chosen_on_each_folds_training_patients_only(base):
    """A gene that varies only among one fold's held-out patients is never chosen for that fold."""
    c = _wide(base, 12)
    plan = regress.plan_compare(c, models=("ridge",), n_folds=3, top_genes=3)
    y = pd.DataFrame(c.y_true[plan.keep], columns=c.genes)
    leaky = np.zeros(len(y))
    leaky[plan.folds == 0] = np.linspace(
        -50, 50, (plan.folds == 0).sum()
    )  # huge, but only in fold 0's held-out
    c2 = dataclasses.replace(
        c, y_true=np.column_stack([c.y_true, np.zeros(c.n_bags)]), genes=(*c.genes, "LEAKY")
    )
    c2.y_true[plan.keep, -1] = leaky
    plan = regress.plan_compare(c2, models=("ridge",), n_folds=3, top_genes=3)
    chosen = [{plan.genes[i] for i in cols} for cols in plan.fold_genes]
    assert "LEAKY" not in chosen[0] and "LEAKY" in chosen[1] and "LEAKY" in chosen[2]
    for k in range(3):  # each fold: the 3 of highest variance on its training rows
        train = pd.DataFrame(c2.y_true[plan.keep][plan.folds != k], columns=c2.genes)
        assert chosen[k] == set(train.var(ddof=0).sort_values(ascending=False).index[:3])
    res = regress.compare(c2, models=("ridge",), n_folds=3, top_genes=3, progress=False)
    pred = res.predictions
    for k in range(3):  # each fold predicts its own genes only
        assert set(pred[pred.fold == k]["gene"]) == chosen[k]
    m = res.metrics.set_index(["model", "gene", "fold"])
    assert set(res.metrics["gene"]) == set.union(*chosen) == set(plan.genes)
    counts = {g: sum(g in ch for ch in chosen) for g in plan.genes}
    for g, n in counts.items():
        assert m.loc[("ridge", g, -1), "folds_selected"] == n
        pooled = pred[(pred.model == "ridge") & (pred.gene == g)]  # pooled over the folds that chose it
        folds_with = [k for k in range(3) if g in chosen[k]]
        assert m.loc[("ridge", g, -1), "n"] == len(pooled) == np.isin(plan.folds, folds_with).sum()
    by_mean = regress.plan_compare(c2, models=("ridge",), n_folds=3, top_genes=2, rank_genes_by="mean")
    train = pd.DataFrame(c2.y_true[by_mean.keep][by_mean.folds != 1], columns=c2.genes)
    assert {by_mean.genes[i] for i in by_mean.fold_genes[1]} == set(train.mean().sort_values().index[-2:])


def test_many_genes_default_to_the_top_by_variance_with_a_message(base):
    c = _wide(base, MAX_GENES_WITHOUT_SELECTION + 100)
    with pytest.warns(
        regress.GeneSelectionWarning, match=r"2,100 genes and no choice was made.*--top-genes.*--genes all"
    ):
        plan = regress.plan_compare(c, models=("ridge",), n_folds=3)
    assert plan.selection.defaulted and {len(f) for f in plan.fold_genes} == {2000}
    assert (
        "per fold the top 2000 by variance on its training patients (the default above 2,000 genes)"
        in plan.describe()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        everything = regress.plan_compare(c, models=("ridge",), n_folds=3, genes="all")
    assert len(everything.genes) == c.y_true.shape[1] and everything.selection.top_genes is None


class UniformAttention(RegressorMixin, BaseEstimator):
    """An attention model in miniature: predicts the training mean, and the same attention for every tile."""

    def fit(self, bags, y, groups=None):
        self.mean_ = np.asarray(y, dtype=np.float64).reshape(len(bags), -1).mean(axis=0)
        return self

    def predict(self, bags):
        return np.tile(self.mean_, (len(bags), 1))

    def predict_tiles(self, bags):
        g = len(self.mean_)
        return [
            TileScores(np.full((len(b), g), 1 / len(b), np.float32), np.tile(self.mean_, (len(b), 1)), None)
            for b in bags
        ]


@pytest.fixture
def attention_model():
    regress.register_model("uniform-attention", attention=True, parameters=frozenset())(
        lambda params, random_state: UniformAttention()
    )
    yield "uniform-attention"
    _REGISTRY.pop("uniform-attention", None)


def test_outputs_stay_bounded_with_many_genes(base, tmp_path, attention_model):
    c = _wide(base, 60)
    out = tmp_path / "run"
    res = regress.compare(c, models=(attention_model, "ridge"), n_folds=2, out=out, progress=False)
    metrics = pq.read_table(out / "metrics.parquet").to_pandas()
    assert metrics["gene"].nunique() == 60  # every compared gene
    att = pq.read_table(out / "attention.parquet").to_pandas()
    assert att.groupby("fold")["gene"].nunique().max() == MAX_ATTENTION_GENES
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["gene_selection"]["attention_genes"]) >= MAX_ATTENTION_GENES
    assert set(att["gene"]) == set(cfg["gene_selection"]["attention_genes"])
    assert "gene_types" not in cfg["encoder_meta"]
    with Image.open(out / "plots" / "compare_pearson.png") as png:
        width = png.size[0]
    assert width < 2000  # 40 genes shown, whatever the number compared
    fig = regress.plot_compare_pearson(res.metrics, models=["ridge", attention_model, "mean"])
    assert f"top {MAX_PLOT_GENES} of 60 genes by ridge r" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_xticklabels()) == MAX_PLOT_GENES


def test_compare_refuses_small_cohorts_and_degenerate_targets(base):
    with pytest.raises(
        regress.CompareError,
        match=r"n_folds=5 leaves 2 patients in the smallest held-out fold.*at least 15.*n_folds=4 or fewer",
    ):
        regress.plan_compare(base, models=("ridge",), n_folds=5)
    y = base.y_true.copy()
    y[:, 1] = 2.5
    with pytest.raises(
        regress.CompareError, match=r"1 gene\(s\) have the same value for every bag.*FBN1.*top_genes"
    ):
        regress.compare(dataclasses.replace(base, y_true=y), models=("ridge",), n_folds=3, progress=False)
    y[:, 1] = np.nan
    with pytest.raises(regress.CompareError, match=r"gene\(s\) have no value for any bag: FBN1"):
        regress.plan_compare(dataclasses.replace(base, y_true=y), models=("ridge",), n_folds=3)
    # a gene constant in a fold's training patients is not chosen there; the others still are
    plan = regress.plan_compare(
        dataclasses.replace(base, y_true=np.where(np.isnan(y), 1.0, y)),
        models=("ridge",),
        n_folds=3,
        top_genes=4,
    )
    assert all("FBN1" not in {plan.genes[i] for i in cols} for cols in plan.fold_genes)
    with pytest.raises(regress.CompareError, match="no bag has a value for every gene"):
        regress.plan_compare(
            dataclasses.replace(base, y_true=np.full_like(y, np.nan)), models=("ridge",), n_folds=3
        )


def test_cli_gene_options_and_dry_run(fake_store, tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app

    args = ["compare", "--store", str(fake_store.root), "--targets", "expr", "--encoder", fake_store.encoder,
            "--models", "ridge", "--n-folds", "3", "--out", str(tmp_path / "run")]  # fmt: skip
    r = CliRunner().invoke(
        app, [*args, "--top-genes", "2", "--rank-genes-by", "mean", "--dry-run"], env={"COLUMNS": "250"}
    )
    assert r.exit_code == 0, r.output
    assert (
        "per fold the top 2 by mean on its training patients" in r.output and not (tmp_path / "run").exists()
    )
    r = CliRunner().invoke(app, [*args, "--genes", "GNLY,FBN2", "--dry-run"], env={"COLUMNS": "250"})
    assert r.exit_code == 2 and "did you mean FBN2 → FBN1?" in " ".join(r.output.split())
    r = CliRunner().invoke(app, [*args, "--protein-coding", "--dry-run"], env={"COLUMNS": "250"})
    assert r.exit_code == 2 and "needs gene types" in " ".join(r.output.split())
    r = CliRunner().invoke(app, [*args, "--n-folds", "5", "--dry-run"], env={"COLUMNS": "250"})
    assert r.exit_code == 2 and "at least 3 per fold" in " ".join(r.output.split())
