"""The HTML report as a reader meets it: a summary first, collapsed gene sections, human column names, p-values
as <0.001, a QC contact sheet naming failed slides, an image budget, and a render in headless Chromium at desktop
and laptop widths."""

from __future__ import annotations

import base64
import re
import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from slide2expr import explain
from slide2expr.contract import SLIDES_SCHEMA, qc_path, slide_path, write_table_atomic
from slide2expr.explain import _report
from tests.explain.conftest import GENES, TILING

#: Desktop and laptop windows (CSS px) the report is checked at.
WIDTHS = {"desktop": (1280, 900), "laptop": (1024, 768)}


@pytest.fixture(scope="module")
def explained(toy, tmp_path_factory):
    """The toy run explained, its report written against a copy of the store that has QC thumbnails and one slide
    that failed."""
    root = tmp_path_factory.mktemp("report")
    store = shutil.copytree(toy.store, root / "store")
    for k, sid in enumerate(toy.slides):
        png = qc_path(store, TILING, sid)
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((60, 80, 3), 120 + 10 * k, np.uint8)).save(png)
    row = {f.name: None for f in SLIDES_SCHEMA}
    row.update(
        slide_id="TCGA-EX-9999-01Z-00-DX1",
        patient_id="TCGA-EX-9999",
        status="failed",
        error="openslide could not read it: truncated file",
    )
    write_table_atomic(pa.Table.from_pylist([row], schema=SLIDES_SCHEMA), slide_path(store, row["slide_id"]))
    res = explain.explain_run(toy.run, store=store, out=root / "explain", top_slides=1, report=False)
    report = explain.write_report(toy.run, explain_dir=res.out, store=store, out=root / "report.html")
    return res, report, store


def _visible_text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)>.*?</\1>", " ", html, flags=re.S))


def test_report_opens_on_a_summary_then_collapsed_gene_sections(explained, toy):
    _, report, _ = explained
    html = report.read_text()
    ids = re.findall(r'<section id="(\w+)">', html)
    assert ids == list(_report.SECTIONS) and ids[0] == "summary"
    summary = html[html.index('<section id="summary">') : html.index('<section id="genes">')]
    assert "Median Pearson r" in summary and "Genes well predicted" in summary and "Best model" in summary
    pooled = explain.load_run(toy.run).table("metrics").query("fold == -1")
    missed = sorted(set(GENES) - set(pooled.loc[pooled["well_predicted"].astype(bool), "gene"]))
    assert 'class="verdict"' in summary and (not missed or f"by any model: {', '.join(missed)}" in summary)
    sections = re.findall(r'<details class="gene" id="gene-(\w+)">', html)  # collapsed: no `open`
    assert set(sections) == set(GENES) and len(sections) <= _report.MAX_FIGURE_GENES
    assert re.search(r'<select id="gene-pick">', html)
    for g in GENES:
        assert f'<option value="gene-{g}">' in html


def test_columns_are_named_for_readers_and_p_values_never_read_zero(explained):
    _, report, _ = explained
    text = _visible_text(report.read_text())
    for name in ("Pearson r", "FDR (Benjamini–Hochberg)", "RMSE of the training mean", "p (Wilcoxon)"):
        assert name in text
    for raw in ("pearson_r", "rmse_baseline", "well_predicted", "wilcoxon_p", "median_pearson_r"):
        assert raw not in text
    assert "<0.001" in text.replace("&lt;", "<")
    assert not re.search(r"(?<![\d.])0\.000(?!\d)", text)


def test_report_is_self_contained(explained):
    _, report, _ = explained
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    srcs = re.findall(r'src="data:image/(png|jpeg);base64,([^"]+)"', html)
    assert len(srcs) == html.count("<img ") > len(GENES)
    magic = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
    for kind, s in srcs:
        assert base64.b64decode(s).startswith(magic[kind])
    assert sum(len(s) * 3 // 4 for _, s in srcs) <= _report.IMAGE_BUDGET_BYTES


def test_qc_contact_sheet_shows_every_slide_and_names_the_failed_one(explained, toy):
    _, report, _ = explained
    html = report.read_text()
    qc = html[html.index('<section id="qc">') : html.index('<section id="localisation">')]
    assert qc.count("<figure") == len(toy.slides) + 1
    assert qc.count('alt="QC of ') == len(toy.slides)  # the failed slide has no thumbnail
    assert "TCGA-EX-9999-01Z-00-DX1" in qc and "truncated file" in qc
    assert f"{8 * 6:,} tiles" in qc  # the toy's 8 × 6 grid


def test_figures_stay_within_the_gene_and_byte_limits(explained, toy, tmp_path, monkeypatch):
    res, _, store = explained
    monkeypatch.setattr(_report, "MAX_FIGURE_GENES", 1)
    html = explain.write_report(
        toy.run, explain_dir=res.out, store=store, out=tmp_path / "one.html"
    ).read_text()
    assert len(re.findall(r'<details class="gene"', html)) == 1
    pooled = explain.load_run(toy.run).table("metrics").query("fold == -1 and model != 'mean'")
    well = pooled[pooled["well_predicted"].astype(bool)]
    first = (well if not well.empty else pooled).sort_values("pearson_r").iloc[-1]["gene"]
    assert re.findall(r'<details class="gene" id="gene-(\w+)"', html) == [first]  # well predicted, best r
    monkeypatch.setattr(_report, "IMAGE_BUDGET_BYTES", 30_000)
    small = explain.write_report(toy.run, explain_dir=res.out, store=store, out=tmp_path / "small.html")
    html = small.read_text()
    assert "left out to keep the report under" in html
    assert sum(len(s) * 3 // 4 for s in re.findall(r'base64,([^"]+)"', html)) <= 30_000


def test_format_p_and_model_names():
    assert [_report.format_p(p) for p in (1e-300, 0.0009999, 0.001, 0.5, np.nan)] == [
        "<0.001",
        "<0.001",
        "0.001",
        "0.500",
        "–",
    ]
    assert _report.model_name("mil") == "attention-MIL" and _report.model_name("custom") == "custom"


@pytest.mark.parametrize("window", list(WIDTHS), ids=list(WIDTHS))
def test_report_renders_in_headless_chromium(explained, tmp_path, window):
    if explain.find_chromium() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); .ci/run installs it")
    _, report, _ = explained
    width, height = WIDTHS[window]
    dom = explain.render_dom(report, width=width, height=height)
    n = dom.count("<img ")
    assert n > len(GENES) and f'data-images="{n}/{n}"' in dom  # every embedded image decoded
    assert 'data-overflow="no"' in dom  # nothing wider than the window: wide tables scroll in their box
    png = explain.screenshot(report, out=tmp_path / f"{window}.png", width=width, height=height)
    with Image.open(png) as im:
        assert im.size == (width, height)
        grey = np.asarray(im.convert("L"))
    assert grey.std() > 5  # not a blank page
    gene = explain.screenshot(
        report, out=tmp_path / "gene.png", width=width, height=height, anchor="gene-HOTA"
    )
    with Image.open(gene) as im:
        assert np.asarray(im.convert("L")).std() > 5
