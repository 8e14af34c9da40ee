"""Same seed → identical files; another seed → other slides."""

from __future__ import annotations

import hashlib

import pytest

from slide2expr.synth import CohortError, make_cohort

_KW = {"n_patients": 2, "size": (700, 900), "svs_fraction": 0.5, "two_slide_fraction": 0.5, "atlas_um": 64}


def _digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    a = make_cohort(tmp_path / "a", seed=3, **_KW)
    b = make_cohort(tmp_path / "b", seed=3, **_KW)
    da, db = _digests(a.root), _digests(b.root)
    assert len(da) >= 2 * len(a.slides) + 4
    assert da == db


def test_other_seed_other_slides(tmp_path):
    a = make_cohort(tmp_path / "a", seed=3, **_KW)
    c = make_cohort(tmp_path / "c", seed=4, **_KW)
    da, dc = _digests(a.root), _digests(c.root)
    stem = {k.rsplit(".", 1)[0]: v for k, v in da.items()}
    other = {k.rsplit(".", 1)[0]: v for k, v in dc.items()}
    common = [k for k in set(stem) & set(other) if k.startswith(("slides/", "truth/"))]
    assert len(common) >= 2
    assert all(stem[k] != other[k] for k in common)
    assert not a.expression.equals(c.expression)


def test_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("keep me")
    with pytest.raises(CohortError, match="not empty"):
        make_cohort(tmp_path / "x", seed=0, **_KW)
    with pytest.raises(CohortError, match="entries a synthetic cohort does not .notes.txt"):
        make_cohort(tmp_path / "x", seed=0, overwrite=True, **_KW)
    assert (tmp_path / "x" / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_an_interrupted_cohort(tmp_path):
    out = tmp_path / "x"
    (out / "slides").mkdir(parents=True)
    (out / "slides" / "half.svs").write_bytes(b"partial")  # what Ctrl-C leaves: slides, no truth.json yet
    make_cohort(out, seed=0, overwrite=True, **_KW)
    assert not (out / "slides" / "half.svs").exists() and (out / "truth.json").is_file()


def test_overwrite_replaces_a_cohort(tmp_path):
    first = make_cohort(tmp_path / "c", seed=1, **_KW)
    again = make_cohort(tmp_path / "c", seed=1, overwrite=True, **dict(_KW, n_patients=1))
    assert len(again.expression) == 1
    assert sorted(p.name for p in (tmp_path / "c" / "slides").iterdir()) == sorted(
        f"{s}.{f}" for s, f in zip(again.slides["slide_id"], again.slides["format"], strict=True)
    )
    assert len(first.expression) == 2


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"n_patients": 0}, "n_patients"),
        ({"size": 100}, "size"),
        ({"svs_fraction": 1.5}, "svs_fraction"),
        ({"tissue_frac": (0.6, 0.3)}, "tissue_frac"),
    ],
)
def test_bad_parameters(tmp_path, kw, msg):
    with pytest.raises(CohortError, match=msg):
        make_cohort(tmp_path / "bad", **{**_KW, **kw})
    assert not (tmp_path / "bad").exists()
