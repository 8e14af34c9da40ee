"""``sql.connect`` on an ``s3://`` store: the same views and named queries, read in place from the S3 server."""

from __future__ import annotations

import pytest

from slide2expr import sql
from slide2expr.contract import StoreError, store_path, write_file_atomic


@pytest.fixture
def s3_fake_store(s3_env, fake_store):
    """The session's fake store, copied object by object to the S3 server."""
    root = store_path(s3_env) / "store"
    for p in sorted(fake_store.root.rglob("*")):
        if p.is_file():
            write_file_atomic(root / str(p.relative_to(fake_store.root)), p.read_bytes())
    return root


def test_views_and_queries_equal_the_local_store(s3_fake_store, fake_store):
    remote, local = sql.connect(s3_fake_store), sql.connect(fake_store.root)
    for q in (
        "select count(*), count(distinct slide_id) from tiles",
        "select slide_id, status from slides order by slide_id",
        "select slide_id, tile_id, embedding from embeddings order by slide_id, tile_id",
        "select name, gene, count(*) from targets group by all order by all",
    ):
        assert remote.execute(q).fetchall() == local.execute(q).fetchall(), q
    for name in ("cohort_summary", "failed_slides"):
        assert sql.run_query(remote, name).equals(sql.run_query(local, name)), name


def test_a_missing_or_foreign_prefix_is_refused(s3_env):
    with pytest.raises(StoreError, match="does not exist"):
        sql.connect(f"{s3_env}/nothing-here")
    write_file_atomic(store_path(s3_env) / "other" / "notes.txt", b"x")
    with pytest.raises(StoreError, match="is not a slide2expr store"):
        sql.connect(f"{s3_env}/other")


def test_the_endpoint_flag_stands_for_the_variable(s3_fake_store, s3_server, fake_store, monkeypatch):
    from typer.testing import CliRunner

    from slide2expr.cli import app
    from slide2expr.contract import s3_settings

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    args = ["sql", str(s3_fake_store), "-q", "select count(*) as n from tiles", "--format", "json"]
    r = CliRunner().invoke(app, ["--s3-endpoint-url", s3_server, *args])
    assert r.exit_code == 0, r.output
    n = sql.connect(fake_store.root).execute("select count(*) from tiles").fetchone()[0]
    assert str(n) in r.output
    assert s3_settings().endpoint_url is None  # the flag holds for its command only
