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
    assert '<section id="comparison">' in html and "nothing to show" in html


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
