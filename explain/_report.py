"""The self-contained HTML report: one file that opens on a one-screen summary, then a table of every gene and a
collapsible section per gene with its figures, the cohort's QC contact sheet, the model comparison and the run's
settings. Images are embedded (downscaled PNG or JPEG) within a byte budget; the file references no URL."""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contract import qc_path, read_parquet_metadata, store_path, tiles_path, write_bytes_atomic
from slide2expr.explain._figures import compress_image, model_summary, plot_scatter, png_bytes
from slide2expr.explain._inputs import ExplainError, Run, load_run
from slide2expr.explain._layout import HOTSPOTS_FILE, MANIFEST, REPORT_HTML

#: Section ids of the report, in order (each is a ``<section id=…>`` with an ``<h2>``).
SECTIONS = {
    "summary": "Summary",
    "genes": "Genes",
    "models": "Model comparison",
    "qc": "Cohort QC",
    "localisation": "Localisation against truth",
    "settings": "Run settings",
}
#: At most this many genes get figures (scatter, heatmaps, gallery): the genes explain drew maps for (else every
#: gene), well-predicted ones first, then by the best pooled Pearson r of any model. The gene table lists all.
MAX_FIGURE_GENES = 8
#: Heatmap figures shown per gene (explain draws one per chosen slide).
MAX_HEATMAPS_PER_GENE = 3
#: Bytes of embedded images the report holds at most; a figure past it is left out and named in a note.
IMAGE_BUDGET_BYTES = 9_000_000
#: Longest side of an embedded figure in px; QC thumbnails are smaller.
FIGURE_PX = 1600
QC_THUMB_PX = 200
#: Slides shown in the QC contact sheet (slides that failed are always named, in a table of their own).
MAX_QC_SLIDES = 300
#: Column names as a reader says them.
COLUMN_NAMES = {
    "model": "Model",
    "gene": "Gene",
    "n": "Patients",
    "pearson_r": "Pearson r",
    "pearson_p": "p (Pearson)",
    "spearman_rho": "Spearman ρ",
    "spearman_p": "p (Spearman)",
    "r2": "R²",
    "mae": "MAE",
    "rmse": "RMSE",
    "rmse_baseline": "RMSE of the training mean",
    "fdr": "FDR (Benjamini–Hochberg)",
    "well_predicted": "Well predicted",
    "model_a": "Model A",
    "model_b": "Model B",
    "metric": "Compared on",
    "n_genes": "Genes",
    "median_diff": "Median difference (A − B)",
    "wilcoxon_p": "p (Wilcoxon)",
    "score": "Tile score",
    "auroc": "AUROC",
    "n_pos": "Driver tiles",
    "n_neg": "Other tiles",
    "auroc_slide_mean": "AUROC, mean over slides",
    "n_slides": "Slides",
    "null_r": "Null model's Pearson r",
    "null_rmse": "Null model's RMSE",
    "null_p": "p (beats its null)",
    "null_fdr": "FDR (beats its null)",
    "beats_null": "Beats its null",
    "folds_selected": "Folds that kept the gene",
    "n_genes_a_better": "Genes A better",
    "n_genes_b_better": "Genes B better",
    "n_genes_tied": "Genes tied",
}
#: Columns holding p-values or FDRs: shown as ``<0.001`` below 0.001, never as ``0.000``.
P_COLUMNS = {"pearson_p", "spearman_p", "fdr", "wilcoxon_p", "null_p", "null_fdr"}
#: Short names of the registered models.
MODEL_NAMES = {
    "mil": "attention-MIL",
    "mil-embedding": "attention-MIL (embedding)",
    "lgbm": "LightGBM",
    "ridge": "ridge",
    "he2rna": "HE2RNA",
    "mean": "training mean",
}
#: Smallest screenshot (width, height) in px: a page narrower than a phone's is not a view anyone reads.
MIN_SCREENSHOT_PX = (320, 240)
#: Characters of Chromium's stderr quoted in an error (its last lines say why it failed).
_STDERR_TAIL = 800
WELL_PREDICTED_RULE = (
    "Well predicted: held-out Pearson r above 0, Benjamini–Hochberg FDR below 0.05 across genes, an RMSE below "
    "that of predicting every patient the training folds' mean and, where the run refitted the model on permuted "
    "targets (its null), a correlation significantly above the null's."
)

_CSS = """
:root{--accent:#7a2048;--muted:#666;--line:#ddd}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:0 20px 48px;color:#1d1f24;line-height:1.45}
header{border-bottom:3px solid var(--accent);padding-top:14px}
h1{font-size:1.5em;margin:0 0 2px}
h2{font-size:1.25em;margin-top:30px;border-bottom:1px solid var(--line);padding-bottom:4px;color:var(--accent)}
h3{font-size:1.02em;margin:16px 0 6px}
nav{position:sticky;top:0;background:#fff;padding:6px 0;z-index:2;border-bottom:1px solid var(--line)}
nav a{margin-right:16px;color:var(--accent);text-decoration:none;font-size:.95em;white-space:nowrap}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:10px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;background:#fbf8f9}
.card b{display:block;font-size:1.25em}
.card span{color:var(--muted);font-size:.85em}
.verdict{font-size:1.05em;background:#f3f8f1;border-left:4px solid #3a7d2c;padding:8px 12px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;margin:6px 0 12px}
th,td{border:1px solid #d6d6d6;padding:3px 8px;text-align:right}
th{background:#f4eef1;font-weight:600}
td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left}
figure{margin:10px 0 18px}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
details.gene{border:1px solid var(--line);border-radius:6px;margin:8px 0;padding:0 12px}
details.gene>summary{cursor:pointer;padding:8px 0;font-weight:600}
details.gene[open]>summary{border-bottom:1px solid var(--line);margin-bottom:6px}
.ok{color:#2f7d20}.no{color:#a33}
.note{background:#fff8e6;border-left:4px solid #e0a800;padding:6px 10px;font-size:.88em}
.muted{color:var(--muted);font-size:.85em}
.toolbar{margin:8px 0}
.toolbar select,.toolbar button{font-size:.95em;margin-right:8px}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.sheet figure{margin:0;border:1px solid var(--line);border-radius:4px;padding:4px;font-size:.78em}
.sheet figure.bad{border-color:#c44;background:#fdf0f0}
.sheet img{width:100%;height:auto;border:0}
.back{display:none}
body.focus section:not(#genes),body.focus #genes>:not(details.focused):not(.back){display:none}
body.focus .back{display:block}
"""

# sets <body data-images="ok/total"> once every image has decoded and data-overflow="yes|no" (wider than the
# window), so a headless browser can check the render;
# the gene picker and the gene table's links open a gene's section and scroll to it; an address ending in #gene-…
# opens the report on that gene alone (a link to share one gene), "whole report" shows everything again
_SCRIPT = """
function showGene(id){var d=document.getElementById(id);if(!d)return;d.open=true;d.scrollIntoView();}
function openAll(v){document.querySelectorAll('details.gene').forEach(function(d){d.open=v;});}
function focusGene(id){var d=document.getElementById(id);if(!d)return;d.open=true;d.classList.add('focused');
  document.body.classList.add('focus');window.scrollTo(0,0);setTimeout(function(){window.scrollTo(0,0);},0);}
function unfocus(){document.body.classList.remove('focus');}
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  var wide = document.documentElement.scrollWidth > window.innerWidth;
  document.body.setAttribute('data-overflow', wide ? 'yes' : 'no');
  var pick = document.getElementById('gene-pick');
  if (pick) pick.addEventListener('change', function () { showGene(pick.value); });
  if (location.hash.indexOf('#gene-') === 0) focusGene(location.hash.slice(1));
});
window.addEventListener('hashchange', function () {
  if (location.hash.indexOf('#gene-') === 0) showGene(location.hash.slice(1));
});
"""


def format_p(value) -> str:
    """A p-value or FDR as a reader wants it: ``<0.001`` below 0.001 (never ``0.000``), else three decimals.

    Examples
    --------
    >>> format_p(0.0), format_p(0.00042), format_p(0.0213), format_p(float("nan"))
    ('<0.001', '<0.001', '0.021', '–')
    """
    if value is None or not np.isfinite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def model_name(model: str) -> str:
    """The reader's name of a model (``mil`` → ``attention-MIL``); unknown names stay as they are."""
    return MODEL_NAMES.get(model, model)


def _cell(column: str, value) -> str:
    if column in P_COLUMNS:
        return format_p(value)
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if column in ("model", "model_a", "model_b"):
        return model_name(str(value))
    if column == "metric":
        return COLUMN_NAMES.get(str(value), str(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)


def html_table(
    df: pd.DataFrame, *, columns: dict[str, str] | None = None, raw: set[str] = frozenset()
) -> str:
    """A table with the reader's column names (:data:`COLUMN_NAMES`, or ``columns``) and formatted values;
    columns in ``raw`` hold HTML already."""
    if df is None or df.empty:
        return '<p class="muted">(no rows)</p>'
    names = {**COLUMN_NAMES, **(columns or {})}
    head = "".join(
        f"<th{' class=l' if df[c].dtype == object else ''}>{html.escape(names.get(c, c))}</th>"
        for c in df.columns
    )
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            text = str(v) if c in raw else html.escape(_cell(c, v))
            left = isinstance(v, str) and not text[:1].isdigit() and text[:1] not in "-−–<"
            cells.append(f"<td class=l>{text}</td>" if left else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>' + "".join(rows) + "</table></div>"


@dataclass
class _Images:
    """Embeds images within :data:`IMAGE_BUDGET_BYTES`; what does not fit is named in ``left_out``."""

    budget: int = IMAGE_BUDGET_BYTES
    used: int = 0
    left_out: list[str] = field(default_factory=list)

    def img(self, data: bytes, alt: str, *, max_px: int = FIGURE_PX) -> str:
        small, mime = compress_image(data, max_px=max_px)
        if self.used + len(small) > self.budget:
            self.left_out.append(alt)
            return ""
        self.used += len(small)
        return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(small).decode()}">'

    def figure(self, data: bytes, caption: str, *, max_px: int = FIGURE_PX) -> str:
        tag = self.img(data, caption, max_px=max_px)
        return f"<figure>{tag}<figcaption>{html.escape(caption)}</figcaption></figure>" if tag else ""


def report_path(
    run: str | os.PathLike | Run,
    *,
    explain_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> Path:
    """Where :func:`write_report` writes, after the checks it makes first (a run directory with ``metrics.parquet``).

    Raises :class:`ExplainError` naming what is missing.
    """
    run = load_run(run)
    run.table("metrics")
    base = Path(explain_dir) if explain_dir is not None else run.layout.explain
    return Path(out) if out is not None else base / REPORT_HTML


def write_report(
    run: str | os.PathLike | Run,
    *,
    explain_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    store: str | os.PathLike | None = None,
) -> Path:
    """Write the self-contained HTML report of a run.

    Parameters
    ----------
    run
        The run directory (config, metrics, comparisons, predictions, plots/*.png, localisation.parquet).
    explain_dir
        Where :func:`explain_run` wrote its figures and ``manifest.json`` (default ``RUN/explain``); genes without
        figures get a row in the gene table only.
    out
        The HTML file (default ``explain_dir/report.html``).
    store
        The store of the run, for the cohort QC contact sheet (default: the store named in the run's config).

    Returns
    -------
    pathlib.Path
        The report: a summary screen, a table of every gene, a collapsible section per gene with figures for at
        most :data:`MAX_FIGURE_GENES` genes, the QC contact sheet, the model comparison and the run's settings.
        Images are embedded (at most :data:`IMAGE_BUDGET_BYTES`); the file references no URL.
    """
    run = load_run(run.path if isinstance(run, Run) else run)  # the tables as they are on disk now
    base = Path(explain_dir) if explain_dir is not None else run.layout.explain
    out = report_path(run, explain_dir=base, out=out)
    manifest_path = base / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    store = store_path(store) if store is not None else store_path(run.config.get("store") or "")
    images = _Images(budget=IMAGE_BUDGET_BYTES)
    metrics = run.table("metrics")
    pooled = metrics[metrics["fold"] == -1]
    genes = _figure_genes(run, pooled, manifest)
    gene_part = _genes(run, pooled, manifest, base, genes, images)
    parts = [
        _section("summary", _summary(run, pooled, store, manifest)),
        _section("genes", gene_part),
        _section("models", _models(run, images)),
        _section("qc", _qc_sheet(run, store, images)),
        _section("localisation", _localisation(run, manifest, base, images)),
        _section("settings", _settings(run)),
    ]
    if images.left_out:
        parts.insert(
            1,
            f'<p class="note">{len(images.left_out)} figure(s) left out to keep the report under '
            f"{IMAGE_BUDGET_BYTES / 1e6:.0f} MB of images (they are files under {html.escape(str(base))}): "
            + html.escape("; ".join(images.left_out[:10]))
            + (" …" if len(images.left_out) > 10 else "")
            + "</p>",
        )
    nav = "".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in SECTIONS.items())
    title = title or f"slide2expr report — {run.path.name}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>"
        f'<header><h1>{html.escape(title)}</h1><p class="muted">run {html.escape(str(run.path))} · written '
        f"{stamp}</p></header><nav>{nav}</nav>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    return write_bytes_atomic(out, doc.encode("utf-8"))


def _section(sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(SECTIONS[sid])}</h2>\n{body}\n</section>'


def _best(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per gene, the row of the model with the highest pooled Pearson r (the training mean left out)."""
    d = pooled[pooled["model"] != "mean"].dropna(subset=["pearson_r"])
    if d.empty:
        return d
    return d.sort_values("pearson_r", ascending=False, kind="stable").groupby("gene", sort=False).head(1)


def _figure_genes(run: Run, pooled: pd.DataFrame, manifest: dict) -> list[str]:
    """The genes that get figures (the rule of :data:`MAX_FIGURE_GENES`), best first."""
    drawn = {Path(rel).parts[-2] for _, rel in manifest.get("figures", {}).get("heatmaps", [])}
    candidates = [g for g in run.genes if g in drawn] or list(run.genes)
    best = _best(pooled).set_index("gene")
    well = pooled.groupby("gene")["well_predicted"].apply(lambda s: bool(s.fillna(False).astype(bool).any()))

    def key(g):
        r = best["pearson_r"].get(g, np.nan)
        return (not well.get(g, False), -(r if np.isfinite(r) else -np.inf))

    return sorted(candidates, key=key)[:MAX_FIGURE_GENES]


def _summary(run: Run, pooled: pd.DataFrame, store: Path, manifest: dict) -> str:
    """The first screen: the cohort in numbers, the headline table per model, and what is well predicted."""
    cfg = run.config
    folds = run.table("folds", required=False)
    n_bags = len(folds) if folds is not None else "?"
    att = run.attention_index()
    n_slides = att["slide_id"].nunique() if att is not None and not att.empty else None
    tiling = str(cfg.get("tiling") or run.tiling)
    cards = [
        (f"{n_bags}", f"{cfg.get('by', 'patient')}s (bags), {cfg.get('n_folds')}-fold cross-validation"),
        (f"{len(run.genes)}", f"genes ({cfg.get('transform') or 'untransformed'} expression)"),
        (str(cfg.get("encoder")), f"tile encoder; tiling {tiling}"),
    ]
    if n_slides:
        cards.insert(1, (f"{n_slides}", "slides with held-out attention"))
    body = '<div class="cards">' + "".join(
        f"<div class='card'><b>{html.escape(a)}</b><span>{html.escape(b)}</span></div>" for a, b in cards
    )
    body += "</div>"
    summ = model_summary(pooled)
    body += "<h3>Held-out performance per model (pooled over the folds)</h3>" + html_table(
        summ,
        columns={
            "n_genes": "Genes",
            "median_pearson_r": "Median Pearson r",
            "n_well_predicted": "Genes well predicted",
            "median_rmse_over_baseline": "Median RMSE ÷ training mean's",
        },
    )
    body += _verdict(run, pooled, summ)
    body += f'<p class="muted">{html.escape(WELL_PREDICTED_RULE)}</p>'
    for n in manifest.get("notes", []):
        body += f'<p class="note">{html.escape(n)}</p>'
    return body


def _verdict(run: Run, pooled: pd.DataFrame, summ: pd.DataFrame) -> str:
    """One paragraph: the best model, how many genes it predicts well, and the genes no model predicts."""
    real = summ[summ["model"] != "mean"]
    if real.empty or not np.isfinite(real["median_pearson_r"].iloc[0]):
        return '<p class="verdict">No model produced usable predictions.</p>'
    top = real.iloc[0]
    well = pooled[pooled["well_predicted"].fillna(False).astype(bool)]
    any_well = set(well["gene"])
    missed = [g for g in run.genes if g not in any_well]
    text = (
        f"Best model: <b>{html.escape(model_name(top['model']))}</b>, median held-out Pearson r "
        f"{top['median_pearson_r']:.3f} over {int(top['n_genes'])} genes; it predicts "
        f"<b>{int(top['n_well_predicted'])} of {int(top['n_genes'])}</b> genes well. "
        f"{len(any_well)} of {len(run.genes)} genes are well predicted by at least one model."
    )
    if missed:
        shown = ", ".join(missed[:12]) + (f" and {len(missed) - 12} more" if len(missed) > 12 else "")
        text += f" Not well predicted by any model: {html.escape(shown)}."
    return f'<p class="verdict">{text}</p>'


def _gene_id(gene: str) -> str:
    return "gene-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in gene)


def _genes(
    run: Run, pooled: pd.DataFrame, manifest: dict, base: Path, genes: list[str], images: _Images
) -> str:
    """The gene picker, the table of every gene, and a collapsed section for each gene with figures."""
    models = [m for m in run.models if m != "mean"]
    r = pooled.pivot(index="gene", columns="model", values="pearson_r")
    wp = pooled.pivot(index="gene", columns="model", values="well_predicted").fillna(False).astype(bool)
    best = _best(pooled).set_index("gene")
    order = sorted(run.genes, key=lambda g: -np.nan_to_num(best["pearson_r"].get(g, np.nan), nan=-np.inf))
    rows = []
    for g in order:
        link = f'<a href="#{_gene_id(g)}">{html.escape(g)}</a>' if g in genes else html.escape(g)
        row = {"Gene": link, "Best model": model_name(best["model"].get(g, "–"))}
        for m in models:
            v = r[m].get(g, np.nan) if m in r.columns else np.nan
            star = " ★" if m in wp.columns and bool(wp[m].get(g, False)) else ""
            row[model_name(m)] = ("–" if not np.isfinite(v) else f"{v:.3f}") + star
        row["FDR (best model)"] = format_p(best["fdr"].get(g, np.nan))
        rows.append(row)
    table = pd.DataFrame(rows)
    body = (
        '<p class="back"><a href="#genes" onclick="unfocus()">← the whole report</a></p>'
        f"<p>Pearson r of held-out predictions per gene and model; ★ = well predicted. Figures are shown for "
        f"{len(genes)} gene(s): {_FIGURE_RULE}</p>"
    )
    options = "".join(f'<option value="{_gene_id(g)}">{html.escape(g)}</option>' for g in genes)
    body += (
        '<div class="toolbar"><label>Open a gene: <select id="gene-pick"><option value="">—</option>'
        f'{options}</select></label><button type="button" onclick="openAll(true)">open all</button>'
        '<button type="button" onclick="openAll(false)">close all</button></div>'
    )
    hotspots = base / HOTSPOTS_FILE
    hs = pd.read_parquet(hotspots) if hotspots.exists() else None
    preds = run.table("predictions")
    for g in genes:
        body += _gene_section(run, g, pooled, preds, hs, manifest, base, images)
    return body + "<h3>Every gene</h3>" + html_table(table, raw={"Gene"})


_FIGURE_RULE = (
    f"at most {MAX_FIGURE_GENES}, chosen among the genes explain drew maps for (every gene when it drew none), "
    "well-predicted genes first, then by the highest held-out Pearson r of any model."
)


def _gene_section(run, gene, pooled, preds, hs, manifest, base, images: _Images) -> str:
    """One gene: its metrics per model, held-out scatter, heatmaps (attention, tile predictions, tile SHAP) and
    the gallery of its top attention tiles."""
    d = pooled[pooled["gene"] == gene]
    best = _best(d)
    verdict = ""
    if not best.empty:
        b = best.iloc[0]
        ok = bool(d["well_predicted"].fillna(False).astype(bool).any())
        verdict = f" — r {b['pearson_r']:.3f} ({html.escape(model_name(b['model']))}) · " + (
            '<span class="ok">well predicted</span>' if ok else '<span class="no">not well predicted</span>'
        )
    cols = [
        "model",
        "pearson_r",
        "pearson_p",
        "fdr",
        "spearman_rho",
        "r2",
        "rmse",
        "rmse_baseline",
        "null_r",
        "null_fdr",
        "well_predicted",
    ]
    body = html_table(d[[c for c in cols if c in d.columns]])
    p = preds[(preds["gene"] == gene) & (preds["model"] != "mean")]
    if not p.empty:
        fig = plot_scatter(p, genes=[gene], metrics=pooled, title=None)
        caption = f"{gene}: held-out prediction against the measured value (transformed scale)"
        body += images.figure(png_bytes(fig), caption, max_px=700)
    figs = manifest.get("figures", {})
    maps = [(c, rel) for c, rel in figs.get("heatmaps", []) if Path(rel).parts[-2] == gene]
    if maps:
        body += (
            "<h3>Where the signal comes from</h3><p class='muted'>Each row: the H&amp;E thumbnail, then attention, "
            "the tiles' own predictions and, for the tree models, each tile's SHAP value, coloured by their "
            "percentile in the slide. Outlines are hotspots (also in geojson/ for QuPath); the bar is in mm.</p>"
        )
    for caption, rel in maps[:MAX_HEATMAPS_PER_GENE]:
        body += images.figure((base / rel).read_bytes(), caption)
    if hs is not None and not hs.empty:
        h = hs[hs["gene"] == gene]
        if not h.empty:
            body += (
                f"<p>{len(h)} hotspot(s) on {h['slide_id'].nunique()} slide(s); median area "
                f"{h['area_mm2'].median():.2f} mm².</p>"
            )
    for caption, rel in figs.get("gallery", []):
        if caption.split(":")[0] == gene:
            body += images.figure((base / rel).read_bytes(), caption, max_px=1400)
    return (
        f'<details class="gene" id="{_gene_id(gene)}"><summary>{html.escape(gene)}{verdict}</summary>'
        f"{body}</details>"
    )


def _models(run: Run, images: _Images) -> str:
    """The registered description of each model, the paired comparisons, and the run's own plots."""
    from slide2expr import regress

    rows = []
    for m in run.models:
        try:
            desc = regress.model_info(m).description
        except regress.UnknownModelError:
            desc = ""
        rows.append({"Model": model_name(m), "What it is": desc})
    body = html_table(pd.DataFrame(rows))
    comps = run.table("comparisons", required=False)
    if comps is not None and not comps.empty:
        c = comps.assign(
            ci=[f"{lo:+.3f} to {hi:+.3f}" for lo, hi in zip(comps["ci_low"], comps["ci_high"], strict=True)]
        )
        keep = ("model_a", "model_b", "metric", "n_genes", "median_diff", "ci", "wilcoxon_p")
        c = c[[k for k in (*keep, "n_genes_a_better", "n_genes_b_better") if k in c.columns]]
        body += (
            "<h3>Model against model, paired over genes</h3><p class='muted'>Median per-gene difference with its "
            "bootstrap 95 % confidence interval and the Wilcoxon signed-rank test.</p>"
            + html_table(c, columns={"ci": "95 % CI"})
        )
    for p in sorted(run.layout.plots.glob("*.png")):
        body += images.figure(p.read_bytes(), p.stem.replace("_", " "))
    return body


def _qc_sheet(run: Run, store: Path, images: _Images) -> str:
    """One thumbnail per slide with its tissue mask and tile count (``STORE/qc/<tiling>/``); failed slides named."""
    from slide2expr import sql
    from slide2expr.contract import StoreError

    try:
        slides = sql.read_slides(store)
    except StoreError as exc:
        return f'<p class="muted">No contact sheet: {html.escape(str(exc))} (write_report takes store=…).</p>'
    tiling = run.tiling
    bad = slides[slides["status"] != "ok"]
    body = f"<p>{len(slides)} slides in the store; tiling {html.escape(str(tiling))}.</p>"
    if not bad.empty:
        body += "<h3>Slides that were not featurized</h3>" + html_table(
            bad[["slide_id", "status", "error"]].fillna(""),
            columns={"slide_id": "Slide", "status": "Status", "error": "Why"},
        )
    cards = []
    shown = pd.concat([bad, slides[slides["status"] == "ok"]]).head(MAX_QC_SLIDES)
    for row in shown.itertuples(index=False):
        tiles = tiles_path(store, tiling, row.slide_id)
        n = _n_rows(tiles)
        png = qc_path(store, tiling, row.slide_id)
        tag = (
            images.img(png.read_bytes(), f"QC of {row.slide_id}", max_px=QC_THUMB_PX) if png.exists() else ""
        )
        cls = " class=bad" if row.status != "ok" else ""
        what = f"{n:,} tiles" if row.status == "ok" else html.escape(str(row.status))
        cards.append(
            f"<figure{cls}>{tag}<figcaption>{html.escape(row.slide_id)}<br>{what}</figcaption></figure>"
        )
    body += (
        "<p class='muted'>Each thumbnail shows the tissue found (outline) and the tiles kept.</p>"
        f'<div class="sheet">{"".join(cards)}</div>'
    )
    if len(slides) > MAX_QC_SLIDES:
        body += f'<p class="muted">The first {MAX_QC_SLIDES} of {len(slides)} slides are shown.</p>'
    return body


def _n_rows(path: Path) -> int:
    return read_parquet_metadata(path).num_rows if path.exists() else 0


def _localisation(run: Run, manifest: dict, base: Path, images: _Images) -> str:
    """The localisation table (``RUN/localisation.parquet``) and figure, or why there is none."""
    loc = run.table("localisation", required=False)
    if loc is None:
        return '<p class="muted">No ground truth for this cohort: localisation is measured on synthetic cohorts.</p>'
    body = (
        "<p>How well each tile score finds the tiles planted to drive a gene (AUROC: 1 = every driver tile ranks "
        "above every other tile, 0.5 = chance), pooled over slides. Negative-control genes have no driver tiles.</p>"
    )
    body += html_table(loc.dropna(subset=["auroc"]))
    for caption, rel in manifest.get("figures", {}).get("localisation", []):
        body += images.figure((base / rel).read_bytes(), caption)
    return body


def _settings(run: Run) -> str:
    """The run's configuration as written by compare."""
    cfg = run.config
    rows = [
        ("run", str(run.path)),
        ("store", cfg.get("store")),
        ("targets", cfg.get("targets")),
        ("encoder", cfg.get("encoder")),
        ("tiling", cfg.get("tiling")),
        ("bags", cfg.get("by", "patient")),
        ("folds", cfg.get("n_folds")),
        ("genes", ", ".join(run.genes)),
        ("models", ", ".join(run.models)),
        ("model parameters", json.dumps(cfg.get("model_params") or {})),
        ("target transform", cfg.get("transform")),
        ("seed", cfg.get("seed")),
        ("slide2expr", cfg.get("version")),
    ]
    return (
        '<div class="scroll"><table>'
        + "".join(
            f"<tr><th>{html.escape(k)}</th><td class=l>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        + "</table></div>"
    )


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _chromium_args(exe: str, profile: str) -> list[str]:
    return [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


def render_dom(
    path: str | os.PathLike, *, width: int = 1280, height: int = 900, timeout: float = 120.0
) -> str:
    """Open an HTML file in headless Chromium in a ``width`` × ``height`` window and return the DOM after load
    (``--dump-dom``).

    Raises :class:`ExplainError` when no Chromium is installed (``apt-get install chromium``) or it fails.
    """
    exe = find_chromium()
    if exe is None:
        raise ExplainError(
            "no Chromium on PATH: install it (Debian: apt-get install chromium) to render reports"
        )
    with tempfile.TemporaryDirectory(prefix="slide2expr-chromium-") as profile:
        cmd = _chromium_args(exe, profile) + [
            f"--window-size={int(width)},{int(height)}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            Path(path).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ExplainError(
            f"chromium failed on {path} (exit {proc.returncode}): {proc.stderr[-_STDERR_TAIL:]}"
        )
    return proc.stdout


def check_screenshot_size(width: int, height: int) -> None:
    """Raise :class:`ExplainError` unless a screenshot of ``width`` × ``height`` px is at least
    :data:`MIN_SCREENSHOT_PX`.

    Examples
    --------
    >>> try:
    ...     check_screenshot_size(100, 2400)
    ... except ExplainError as exc:
    ...     print(exc)
    width and height must be at least 320 and 240 px, got width=100, height=2400
    """
    if width < MIN_SCREENSHOT_PX[0] or height < MIN_SCREENSHOT_PX[1]:
        raise ExplainError(
            f"width and height must be at least {MIN_SCREENSHOT_PX[0]} and {MIN_SCREENSHOT_PX[1]} px, got "
            f"width={width}, height={height}"
        )


def screenshot(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike,
    width: int = 1280,
    height: int = 2400,
    anchor: str | None = None,
    timeout: float = 120.0,
) -> Path:
    """A PNG screenshot of an HTML file (e.g. the report) by headless Chromium; returns ``out``.

    ``anchor`` opens the page at ``#anchor`` (in the report, ``gene-<GENE>`` opens that gene's section).
    """
    check_screenshot_size(width, height)
    exe = find_chromium()
    if exe is None:
        raise ExplainError(
            "no Chromium on PATH: install it (Debian: apt-get install chromium) to take screenshots"
        )
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slide2expr-chromium-") as profile:
        cmd = _chromium_args(exe, profile) + [
            f"--window-size={int(width)},{int(height)}",
            "--virtual-time-budget=5000",
            f"--screenshot={out}",
            Path(path).resolve().as_uri() + (f"#{anchor}" if anchor else ""),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.exists():
        raise ExplainError(
            f"chromium could not screenshot {path} (exit {proc.returncode}): {proc.stderr[-_STDERR_TAIL:]}"
        )
    return out
