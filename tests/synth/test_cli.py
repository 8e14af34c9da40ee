"""``slide2expr synth`` in-process."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from slide2expr.cli import app


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_synth_command(tmp_path):
    out = tmp_path / "cohort"
    args = [
        "synth",
        "--out",
        str(out),
        "--n-patients",
        "3",
        "--seed",
        "5",
        "--size",
        "900",
        "--svs-fraction",
        "1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert ".svs" in text and "aperio" in text and "3 patients" in text and "35 genes" in text
    slides = pd.read_csv(out / "slides.csv")
    assert (slides["format"] == "svs").all()
    assert slides[["width", "height"]].to_numpy().max() <= 900
    assert slides[["width", "height"]].to_numpy().min() >= 675

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2
    assert "not empty" in _flat(again.output) and "--overwrite" in _flat(again.output)

    over = CliRunner().invoke(app, [*args[:4], "2", *args[5:], "--overwrite"])
    assert over.exit_code == 0, over.output
    assert len(pd.read_csv(out / "expression.csv")) == 2


def test_synth_rejects_tiny_size(tmp_path):
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "c"), "--size", "100"])
    assert res.exit_code == 2
    assert "size must be" in _flat(res.output) and "(75, 100)" in _flat(res.output)
    assert not (tmp_path / "c").exists()


def test_synth_size_range_and_dry_run(tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--size", "9000-13000", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "9,000–13,000" in _flat(res.output) and "nothing written" in _flat(res.output)
    assert not out.exists()
    bad = CliRunner().invoke(app, ["synth", "--out", str(out), "--size", "big"])
    assert bad.exit_code == 2 and "--size 'big'" in _flat(bad.output)
