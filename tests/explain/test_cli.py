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
