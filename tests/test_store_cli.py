"""``slide2expr store rm``: --dry-run lists what would go and writes nothing; the removal itself; one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner

from slide2expr.cli import app
from tests._fakestore import add_encoder, make_fake_store


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_rm_dry_run_then_remove(tmp_path):
    fs = make_fake_store(tmp_path / "store", n_patients=3)
    add_encoder(fs, "wide", dim=32)
    sid = fs.slides[0][0]
    before = _files(fs.root)
    args = ["store", "rm", "--store", str(fs.root), "--slides", f"{sid},TCGA-FK-9999-01Z-00-DX1"]
    res = CliRunner().invoke(app, [*args, "--dry-run"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert (
        "would remove 2 slide(s); every tiling; every encoder: 5 files (2 embeddings, 1 tiles, 0 qc, 2 slides"
        in (res.output)
    )
    assert (
        f"embeddings/{fs.tiling}/wide/{sid}.parquet" in res.output
        and "nothing removed (--dry-run)" in res.output
    )
    assert _files(fs.root) == before
    res = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 0 and res.output.startswith("removed 2 slide(s)"), res.output
    assert set(_files(fs.root)) == {f for f in before if sid not in f and "9999" not in f}
    res = CliRunner().invoke(app, ["store", "rm", "--store", str(fs.root), "--encoder", "wide"])
    assert res.exit_code == 0 and not (fs.root / "embeddings" / fs.tiling / "wide").exists()


def test_store_rm_refuses_with_one_line_and_exit_2(tmp_path):
    fs = make_fake_store(tmp_path / "store", n_patients=2)
    before = _files(fs.root)
    for args, match in [
        ([], "give what to remove"),
        (["--slides", "TCGA-FK-0001-01Z-00-DX7"], "did you mean 'TCGA-FK-0001-01Z-00-DX"),
        (["--encoder", "uni"], "encoders here: fake-encoder"),
    ]:
        for dry in ([], ["--dry-run"]):
            res = CliRunner().invoke(app, ["store", "rm", "--store", str(fs.root), *args, *dry])
            assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(app, ["store", "rm", "--store", str(tmp_path / "nowhere"), "--encoder", "x"])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert _files(fs.root) == before
