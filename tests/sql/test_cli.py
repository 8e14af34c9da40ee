from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from slide2expr.cli import app
from tests._fakestore import make_fake_store

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def test_sql_list():
    r = invoke("sql", "--list")
    assert r.exit_code == 0, r.output
    assert "cohort_summary" in r.output and "nearest_tiles" in r.output
    r = invoke("sql", "--list", "--format", "json")
    info = json.loads(r.output)
    assert info["nearest_tiles"]["params"] == {"slide_id": "varchar", "tile_id": "integer", "k": "integer"}


def test_sql_named_query_formats(fake_store, tmp_path):
    r = invoke("sql", fake_store.root, "cohort_summary")
    assert r.exit_code == 0, r.output
    assert "fake-encoder" in r.output and "cohort_summary" in r.output
    r = invoke("sql", fake_store.root, "tiles_per_patient", "--format", "csv")
    df = pd.read_csv(__import__("io").StringIO(r.output))
    assert len(df) == 12 and df.n_tiles.sum() == sum(len(e) for e in fake_store.embeddings.values())
    out = tmp_path / "bag.parquet"
    r = invoke(
        "sql", fake_store.root, "patient_bag", "-p", "patient_id=TCGA-FK-0001", "-p", "encoder=fake-encoder",
        "--format", "parquet", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    sids = sorted(s for s, p in fake_store.slides if p == "TCGA-FK-0001")
    np.testing.assert_array_equal(
        np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(t.num_rows, -1),
        np.concatenate([fake_store.embeddings[s] for s in sids]),
    )
    r = invoke("sql", fake_store.root, "nearest_tiles", "-p", f"slide_id={sids[0]}", "-p", "tile_id=0", "-p", "k=3",
               "--format", "json")  # fmt: skip
    rows = json.loads(r.output)
    assert [x["rank"] for x in rows] == [1, 2, 3]


def test_sql_adhoc_and_errors(fake_store):
    r = invoke("sql", fake_store.root, "-q", "select count(*) as n from tiles where slide_id = $s", "-p",
               f"s={fake_store.slides[0][0]}", "-f", "json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [{"n": len(fake_store.embeddings[fake_store.slides[0][0]])}]
    r = invoke("sql", fake_store.root, "cohort_sumary")
    assert r.exit_code == 2 and "no query named 'cohort_sumary'" in r.output and "cohort_summary" in r.output
    r = invoke("sql", fake_store.root, "patient_bag", "-p", "patient_id=x")
    assert r.exit_code == 2 and "$encoder" in r.output
    r = invoke("sql", fake_store.root, "cohort_summary", "-p", "gene=GNLY")
    assert r.exit_code == 2 and "$gene" in r.output
    r = invoke("sql", fake_store.root, "-q", "select * from nosuchview")
    assert r.exit_code == 2 and "nosuchview" in r.output
    r = invoke("sql", fake_store.root, "top_attention_tiles", "-p", "model=mil", "-p", "gene=", "-p", "rank_by=relative",
               "-p", "k=3")  # fmt: skip
    assert r.exit_code == 2 and "no run directory given: pass --run RUN" in " ".join(r.output.split())


def test_targets_import_and_list(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=3, failed_slide=False)
    m = pd.DataFrame(
        {
            "sample": [f"{p}-01A" for p in sorted(fs.targets)] + ["TCGA-ZZ-0000-01A"],
            "GNLY": [1, 2, 3, 4],
            "APC": [5, 6, 7, 8],
        }
    )
    path = tmp_path / "m.csv"
    m.to_csv(path, index=False)
    r = invoke("targets", "import", path, "--store", fs.root, "--name", "cli", "--genes", "APC")
    assert r.exit_code == 0, r.output
    assert "4 samples" in r.output and "TCGA-ZZ-0000-01A" in r.output and "samples-rows" in r.output
    got = pq.read_table(fs.root / "targets" / "cli.parquet").to_pandas()
    assert list(got.gene.unique()) == ["APC"] and got.raw_value.tolist() == [5, 6, 7, 8]
    r = invoke("targets", "import", path, "--store", fs.root, "--name", "cli2", "--strict")
    assert r.exit_code == 2 and "TCGA-ZZ-0000-01A" in r.output
    r = invoke("targets", "list", "--store", fs.root)
    assert r.exit_code == 0 and "cli" in r.output and "expr" in r.output
    r = invoke("targets", "import", path, "--store", fs.root, "--name", "cli3", "--genes", "NOPE")
    assert r.exit_code == 2 and "NOPE" in r.output


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_list_columns_are_serialised(fake_store, fmt):
    r = invoke("sql", fake_store.root, "pooled_slide_features", "-f", fmt)
    assert r.exit_code == 0, r.output[-500:]
    if fmt == "json":
        rows = json.loads(r.output)
        assert len(rows[0]["mean_embedding"]) == fake_store.dim
    else:
        df = pd.read_csv(__import__("io").StringIO(r.output))
        assert len(json.loads(df.mean_embedding[0])) == fake_store.dim


def _one_line_error(r, *needles):
    """Exit 2 and a clean `error: …` message holding every needle (no traceback)."""
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output and "error:" in r.output
    flat = " ".join(r.output.split())
    for needle in needles:
        assert needle in flat, (needle, r.output)


def test_targets_import_refuses_what_is_not_a_store(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=2, failed_slide=False)
    path = tmp_path / "m.csv"
    pd.DataFrame({"sample": [f"{p}-01A" for p in sorted(fs.targets)], "APC": [1, 2]}).to_csv(
        path, index=False
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for store, message in [
        (tmp_path / "nostore", "does not exist"),
        (run_dir, "is not a slide2expr store"),
        (path, "is not a directory"),
    ]:
        _one_line_error(invoke("targets", "import", path, "--store", store, "--name", "x"), message)
        _one_line_error(invoke("targets", "list", "--store", store), message)
    assert not (tmp_path / "nostore").exists() and not (run_dir / "targets").exists()


def test_targets_import_clean_errors(tmp_path):
    fs = make_fake_store(tmp_path / "s", n_patients=2, failed_slide=False)
    samples = [f"{p}-01A" for p in sorted(fs.targets)]
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    dup = tmp_path / "dup.csv"
    dup.write_text("sample,APC,GNLY,APC\n" + "".join(f"{s},1,2,3\n" for s in samples))
    ok = tmp_path / "ok.csv"
    ok.write_text("sample,APC\n" + "".join(f"{s},-1\n" for s in samples))
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n3,4\n")
    for args, needles in [
        (["empty.csv"], ["empty.csv is empty"]),
        (["image.csv"], ["image.csv is not UTF-8 text"]),
        (["dup.csv"], ["gene(s) in several columns of the header: APC"]),
        (["ok.csv", "--name", "../evil"], ["targets name '../evil' cannot be used as a file name"]),
        (["ok.csv", "--transform", "sqrt"], ["--transform", "log1p, log10p, none"]),
        (["ok.csv"], ["use --transform none"]),
        (["odd.csv"], ["--orientation samples-rows or genes-rows"]),
    ]:
        args = [tmp_path / args[0], *args[1:]]
        if "--name" not in args:
            args += ["--name", "x"]
        _one_line_error(invoke("targets", "import", *args, "--store", fs.root), *needles)
    assert not (fs.root / "targets" / "x.parquet").exists()


def test_sql_table_shows_data_verbatim(fake_store):
    r = invoke(
        "sql", fake_store.root, "-q", "select '/data/[scan2]/x.svs' as \"[bold]p\", '[red]x[/red]' as q"
    )
    assert r.exit_code == 0, r.output
    assert "/data/[scan2]/x.svs" in r.output and "[bold]p" in r.output and "[red]x[/red]" in r.output
    r = invoke("sql", "--help")
    assert "embedding FLOAT[d]" in r.output
    r = invoke("targets", "import", "--help")
    assert "STORE/targets/<name>.parquet" in r.output


def test_sql_limit(fake_store):
    r = invoke("sql", fake_store.root, "slide_qc", "--limit", "-1")
    assert r.exit_code == 2 and "--limit" in r.output and "first -1" not in r.output
    r = invoke("sql", fake_store.root, "slide_qc", "--limit", "0")
    assert r.exit_code == 0 and "shown" not in r.output
    assert all(sid in r.output for sid, _ in fake_store.slides)
    r = invoke("sql", fake_store.root, "slide_qc", "--limit", "2")
    assert r.exit_code == 0 and "first 2 shown" in r.output


def test_sql_refuses_a_file_as_store(tmp_path):
    f = tmp_path / "README.md"
    f.write_text("# not a store\n")
    _one_line_error(invoke("sql", f, "cohort_summary"), "README.md is not a directory")
    _one_line_error(invoke("sql", tmp_path, "cohort_summary"), "is not a slide2expr store")
