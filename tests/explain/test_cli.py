from __future__ import annotations

import json

from typer.testing import CliRunner

from slide2expr.cli import app


def _flat(text: str) -> str:
    """Rich wraps long messages; compare with the line breaks removed."""
    return " ".join(text.split())


def test_explain_command_writes_maps_geojson_and_report(toy, tmp_path):
    out = tmp_path / "ex"
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(toy.run),
            "--store",
            str(toy.store),
            "--genes",
            "HOTA,STRB",
            "--slides",
            toy.slides[1],
            "--models",
            "mil",
            "--out",
            str(out),
            "--percentile",
            "80",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith("report.html")
    assert sorted(p.name for p in (out / "maps" / "mil").iterdir()) == ["HOTA", "STRB"]
    assert (out / "maps" / "mil" / "HOTA" / f"{toy.slides[1]}_percentile.png").stat().st_size > 10_000
    geo = sorted((out / "geojson").glob("*.geojson"))
    assert geo and all(json.loads(p.read_text())["type"] == "FeatureCollection" for p in geo)
    assert not (out / "shap").exists()  # --models mil: no tree model explained
    assert "localisation" in res.stderr
    assert "heatmaps" in _flat(res.stderr) and "peak RSS" in _flat(res.stderr)  # time per stage, memory


def test_report_command_and_bad_arguments(toy, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["explain", str(tmp_path), "--store", str(toy.store)])
    assert res.exit_code == 2 and "not a run directory" in _flat(res.stderr)
    res = runner.invoke(app, ["explain", str(toy.run), "--store", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--store" in _flat(res.stderr)
    res = runner.invoke(
        app,
        ["explain", str(toy.run), "--store", str(toy.store), "--genes", "XYZ", "--out", str(tmp_path / "e")],
    )
    assert res.exit_code == 2 and "XYZ" in _flat(res.stderr)
    res = runner.invoke(
        app,
        ["report", str(toy.run), "--explain-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")],
    )
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert '<section id="models">' in html and '<section id="summary">' in html


def _tree(*roots):
    """Every file under ``roots`` with its size and modification time."""
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_explain_dry_run_checks_and_writes_nothing(toy, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ex"
    before = _tree(toy.run, toy.store)
    res = runner.invoke(
        app,
        [
            "explain",
            str(toy.run),
            "--store",
            str(toy.store),
            "--out",
            str(out),
            "--top-slides",
            "1",
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    assert not out.exists() and _tree(toy.run, toy.store) == before
    text = res.stdout
    assert "nothing written" in text and "SHAP for lgbm" in text
    for rel in (
        "figures/scatter.png",
        "shap/global_lgbm.parquet",
        "hotspots.parquet",
        "manifest.json",
        "report.html",
    ):
        assert f"  {rel}\n" in text, rel
    assert str(toy.run / "localisation.parquet") in text
    # the dry run makes the real run's checks
    for args, needle in [
        (["--genes", "XYZ"], "XYZ"),
        (["--models", "xgb"], "xgb"),
        (["--slides", "NOPE-SLIDE"], "NOPE-SLIDE"),
        (["--percentile", "101"], "percentile must be within [0, 100]"),
        (["--min-cells", "0"], "min_cells must be at least 1"),
        (["--sigma", "-1"], "sigma must be at least 0"),
        (["--top-slides", "0"], "top_slides must be at least 1"),
        (["--n-bins", "0"], "n_bins and top_k must be at least 1"),
    ]:
        res = runner.invoke(
            app, ["explain", str(toy.run), "--store", str(toy.store), "--out", str(out), *args, "--dry-run"]
        )
        assert res.exit_code == 2 and needle in _flat(res.stderr), (args, res.output)
    res = runner.invoke(app, ["explain", str(toy.run), "--store", str(tmp_path / "nope"), "--dry-run"])
    assert res.exit_code == 2 and "--store" in _flat(res.stderr)
    assert not out.exists() and _tree(toy.run, toy.store) == before


def test_report_dry_run_writes_nothing(toy, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "report",
            str(toy.run),
            "--out",
            str(tmp_path / "r.html"),
            "--screenshot",
            str(tmp_path / "r.png"),
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "would write" in res.stdout and not list(tmp_path.iterdir())
    res = CliRunner().invoke(
        app, ["report", str(toy.run), "--screenshot", str(tmp_path / "r.png"), "--width", "10"]
    )
    assert res.exit_code == 2 and "width and height must be at least 320" in _flat(res.stderr)
    assert not list(tmp_path.iterdir())


def test_explain_a_prediction_directory_and_refuse_a_non_empty_out(toy, tmp_path):
    from tests.explain.test_new_slides import make_prediction_dir

    pred = make_prediction_dir(toy, tmp_path / "pred", truth=False)
    args = ["explain", str(pred), "--store", str(toy.store), "--genes", "HOTA", "--top-slides", "1"]
    res = CliRunner().invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert (
        "would explain the predictions" in res.stdout
        and "chosen by highest predicted expression" in res.stdout
    )
    assert f"  detections/{toy.slides[0]}.geojson\n" in res.stdout and "no SHAP" in _flat(res.stdout)
    res = CliRunner().invoke(app, [*args, "--overlays"])
    assert res.exit_code == 0, res.output
    err = _flat(res.stderr)
    assert (
        f"tile detections of {len(toy.slides)} slides" in err
        and "2 TIFF overlays" in err
        and "no SHAP" in err
    )
    assert (pred / "explain" / "detections").is_dir() and not (pred / "explain" / "report.html").exists()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "is not empty" in _flat(res.stderr) and "--overwrite" in _flat(res.stderr)
    res = CliRunner().invoke(app, [*args, "--overwrite", "--no-detections"])
    assert res.exit_code == 0, res.output
    assert not (pred / "explain" / "detections").exists() and not (pred / "explain" / "overlays").exists()


def test_ctrl_c_in_explain_says_what_was_done(toy, tmp_path, monkeypatch):
    from slide2expr import explain as ex

    def interrupted(plan, progress=None):
        raise ex.ExplainInterrupted(["scatter plots", "hotspots (mil attention)"], "heatmaps", plan.out)

    monkeypatch.setattr(ex, "run_plan", interrupted)
    out = tmp_path / "ex"
    res = CliRunner().invoke(app, ["explain", str(toy.run), "--store", str(toy.store), "--out", str(out)])
    err = _flat(res.stderr)
    assert res.exit_code == 130, res.output
    assert "interrupted during heatmaps after scatter plots, hotspots (mil attention)" in err
    assert "nothing written to" in err and "run the same command again" in err and not out.exists()


def test_explain_a_model_directory_on_a_new_store(fake_store, tmp_path):
    import warnings

    from slide2expr import regress, sql

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sql.MissingTargetsWarning)
        cohort = sql.load_cohort(fake_store.root, encoder=fake_store.encoder, targets="expr")
    params = {"max_epochs": 2, "device": "cpu", "hidden_dim": 8, "attention_dim": 4}
    regress.train(cohort, model="mil", model_params=params, out=tmp_path / "model")
    base = ["explain", str(tmp_path / "model"), "--store", str(fake_store.root), "--genes", "GNLY"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "is a model directory: give --out PRED" in _flat(res.stderr)
    res = CliRunner().invoke(app, [*base, "--genes", "XYZ", "--out", str(tmp_path / "pred"), "--dry-run"])
    assert res.exit_code == 2 and "genes ['XYZ'] are not the model's" in _flat(res.stderr)
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "pred"), "--dry-run"])
    assert res.exit_code == 0 and "nothing written" in res.stdout and not (tmp_path / "pred").exists()
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "pred"), "--targets", "expr"])
    assert res.exit_code == 0, res.output
    ex = tmp_path / "pred" / "explain"
    assert (tmp_path / "pred" / "attention.parquet").exists() and (ex / "maps" / "mil" / "GNLY").is_dir()
    assert (ex / "figures" / "scatter.png").exists()  # with --targets: predictions against the truth
    n_ok = len({s for s, _ in fake_store.slides})
    assert len(list((ex / "detections").glob("*.geojson"))) == n_ok
