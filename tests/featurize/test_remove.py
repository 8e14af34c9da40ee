"""Taking slides, a tiling or an encoder out of a store: what goes, in which order, what stays, what is refused,
and what a reader sees meanwhile."""

from __future__ import annotations

import shutil
import threading

import duckdb
import pytest

from slide2expr.contract import embeddings_path, qc_path, slide_path, tiles_path, write_bytes_atomic
from slide2expr.featurize import RemovalError, plan_removal, remove_from_store
from slide2expr.sql import connect
from tests._fakestore import add_encoder, make_fake_store

OTHER_TILING = "mpp0.50_px224_ov0"


@pytest.fixture
def store(tmp_path):
    """The fake store with QC images, a second encoder (other dimension) and a second tiling of the first slides."""
    fs = make_fake_store(tmp_path / "store", n_patients=3)
    add_encoder(fs, "wide", dim=32)
    for sid, _ in fs.slides:
        write_bytes_atomic(qc_path(fs.root, fs.tiling, sid), b"png")
    for sid, _ in fs.slides[:2]:
        for src, dst in [
            (tiles_path(fs.root, fs.tiling, sid), tiles_path(fs.root, OTHER_TILING, sid)),
            (
                embeddings_path(fs.root, fs.tiling, fs.encoder, sid),
                embeddings_path(fs.root, OTHER_TILING, fs.encoder, sid),
            ),
        ]:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return fs


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_slide_goes_whole_embeddings_first_and_its_row_last(store):
    fs = store
    sid = fs.slides[0][0]
    before = _files(fs.root)
    plan = plan_removal(fs.root, slides=[sid])
    assert _files(fs.root) == before  # the plan writes nothing
    kinds = [p.relative_to(fs.root).parts[0] for p in plan.files]
    assert kinds == ["embeddings"] * 3 + ["tiles"] * 2 + ["qc", "slides"]  # two tilings, two encoders
    assert plan.count("embeddings") == 3 and plan.n_bytes > 0
    assert plan.describe().startswith("1 slide(s); every tiling; every encoder: 7 files")
    done = remove_from_store(fs.root, slides=[sid])
    assert done.files == plan.files
    assert _files(fs.root) == before - {str(p.relative_to(fs.root)) for p in plan.files}
    assert not any(sid in f for f in _files(fs.root))
    con = connect(fs.root)
    assert con.execute("select count(*) from slides where slide_id = $s", {"s": sid}).fetchall() == [(0,)]
    n = con.execute("select count(*) from embeddings_of('wide')").fetchall()[0][0]
    assert n == sum(len(e) for s, e in fs.embeddings.items() if s != sid)


def test_a_mistyped_slides_failed_row_can_be_removed(store):
    fs = store
    failed = "TCGA-FK-9999-01Z-00-DX1"  # a row with no tiles and no embeddings, as a missing file left it
    assert [p.name for p in remove_from_store(fs.root, slides=[failed]).files] == [f"{failed}.parquet"]
    assert not slide_path(fs.root, failed).exists()


def test_an_encoder_goes_with_its_folder_and_leaves_tiles_and_rows(store):
    fs = store
    removal = remove_from_store(fs.root, encoder="wide")
    assert removal.count("embeddings") == len(fs.slides) == len(removal.files)
    assert not (fs.root / "embeddings" / fs.tiling / "wide").exists()
    assert all(tiles_path(fs.root, fs.tiling, s).exists() for s, _ in fs.slides)
    con = connect(fs.root)  # one dimension left: the vectors need no choice again
    assert con.execute("select distinct typeof(embedding) from embeddings").fetchall() == [("FLOAT[16]",)]
    # one encoder of one tiling
    removal = remove_from_store(fs.root, encoder=fs.encoder, tiling=OTHER_TILING)
    assert {p.parent.parent.name for p in removal.files} == {OTHER_TILING}
    assert tiles_path(fs.root, OTHER_TILING, fs.slides[0][0]).exists()


def test_a_tiling_goes_with_its_tiles_qc_and_every_encoders_embeddings(store):
    fs = store
    removal = remove_from_store(fs.root, tiling=fs.tiling)
    assert (
        removal.count("embeddings"),
        removal.count("tiles"),
        removal.count("qc"),
        removal.count("slides"),
    ) == (
        2 * len(fs.slides),
        len(fs.slides),
        len(fs.slides),
        0,
    )
    assert {p.name for p in (fs.root / "tiles").iterdir()} == {OTHER_TILING}
    assert not (fs.root / "qc" / fs.tiling).exists() and (fs.root / "slides").is_dir()
    # a slide within one tiling: its row stays
    removal = remove_from_store(fs.root, slides=[fs.slides[0][0]], tiling=OTHER_TILING)
    assert removal.count("slides") == 0 and slide_path(fs.root, fs.slides[0][0]).exists()


def test_hidden_temporaries_of_removed_files_go_too(store):
    fs = store
    sid = fs.slides[1][0]
    tmp = embeddings_path(fs.root, fs.tiling, "wide", sid)
    stale = tmp.with_name(f".{tmp.name}.0badc0de.tmp")
    stale.write_bytes(b"PAR1 half")
    assert stale in remove_from_store(fs.root, slides=[sid], encoder="wide").files and not stale.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"^give what to remove: slides, a tiling or an encoder"),
        (
            {"slides": ["TCGA-FK-0001-01Z-00-DX9"]},
            r"'TCGA-FK-0001-01Z-00-DX9' \(did you mean 'TCGA-FK-0001-01Z-00-DX",
        ),
        ({"slides": ["../x"]}, r"slide_id '../x' cannot be used as a file name"),
        (
            {"encoder": "uni"},
            r"^encoder 'uni' has no embeddings in this store; encoders here: fake-encoder, wide$",
        ),
        ({"tiling": "mpp9.00_px1_ov0"}, r"tilings here: mpp0.50_px224_ov0, mpp1.00_px224_ov0$"),
        (
            {"slides": ["TCGA-FK-0003-01Z-00-DX1"], "tiling": OTHER_TILING},
            r"^nothing to remove: TCGA-FK-0003",
        ),
    ],
)
def test_what_is_not_in_the_store_is_refused_and_nothing_goes(store, kwargs, match):
    before = _files(store.root)
    with pytest.raises(RemovalError, match=match):
        remove_from_store(store.root, **kwargs)
    assert _files(store.root) == before


def test_a_reader_never_sees_part_of_a_slide_while_slides_are_removed(tmp_path):
    """Each file goes in one step, embeddings first: a query sees a slide's tiles whole or not at all, and never
    embeddings whose slide row is gone. A query that listed a file just before it went fails with DuckDB's
    "Cannot open file"; run again, it sees the store as it is."""
    fs = make_fake_store(tmp_path / "s", n_patients=24, failed_slide=False)
    sizes = {s: len(e) for s, e in fs.embeddings.items()}
    con = connect(fs.root)
    done = threading.Event()

    def remove():
        try:
            for sid, _ in fs.slides[:-1]:
                remove_from_store(fs.root, slides=[sid])
        finally:
            done.set()

    thread = threading.Thread(target=remove)
    thread.start()
    seen, failures = 0, set()
    query = (
        "select e.slide_id, count(*), count(s.slide_id) from embeddings as e "
        "left join slides as s using (slide_id) group by all"
    )
    while not done.is_set() or not seen:
        try:
            rows = con.execute(query).fetchall()
        except duckdb.IOException as exc:
            failures.add(str(exc).split(":")[0])
            continue
        seen += 1
        for sid, n, with_row in rows:
            assert n == sizes[sid] and with_row in (0, n)
    thread.join()
    assert failures <= {"IO Error"}
    assert con.execute("select count(distinct slide_id) from embeddings").fetchall() == [(1,)]
