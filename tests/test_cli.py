"""The command line as a whole: one vocabulary, --dry-run writes nothing, bad arguments are one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from slide2expr.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_demo_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "demo"
    res = _invoke("demo", "--out", out, "--dry-run", "--n-patients", 6, "--n-folds", 3)
    assert res.exit_code == 0, res.output
    assert "mpp1.00_px112_ov0" in res.output and "nothing written" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--models", "mil,svm"), "unknown model 'svm'"),
        (("--n-folds", "1"), "n_folds=1"),
        (("--n-patients", "2"), "n_patients=2"),
        (("--encoder", "nope"), "nope"),
    ],
)
def test_demo_refuses_bad_arguments_before_writing(tmp_path, args, message):
    out = tmp_path / "demo"
    res = _invoke("demo", "--out", out, "--dry-run", *args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_every_command_has_help():
    from slide2expr._app import app as typer_app

    names = sorted(c.name or c.callback.__name__ for c in typer_app.registered_commands)
    for group in typer_app.registered_groups:
        names.append(group.name)
    assert {"featurize", "compare", "explain", "synth", "demo"} <= set(names)
    for name in names:
        res = _invoke(name, "--help")
        assert res.exit_code == 0, (name, res.output)
