"""The self-contained HTML report: one file, images embedded as base64 PNG (JPEG for large photographic
figures), no external URLs."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from slide2expr.contract import write_bytes_atomic
from slide2expr.explain._figures import model_summary
from slide2expr.explain._inputs import ExplainError, Run, load_run
from slide2expr.explain._layout import HOTSPOTS_FILE, MANIFEST, REPORT_HTML

#: Section ids of the report, in order (each is an ``<section id=…>`` with an ``<h2>``).
SECTIONS = {
    "summary": "Run summary",
    "comparison": "Model comparison",
    "scatter": "Per-gene predictions",
    "heatmaps": "Heatmaps and hotspots",
    "gallery": "Gallery: top attention tiles by expression",
    "shap": "SHAP for the tree baselines",
    "localisation": "Localisation against truth",
}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;
color:#1d1f24;line-height:1.45}
header{border-bottom:3px solid #7a2048;margin-bottom:8px}
h1{font-size:1.6em;margin:18px 0 4px}
h2{font-size:1.25em;margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px;color:#7a2048}
h3{font-size:1.02em;margin:18px 0 6px}
nav a{margin-right:14px;color:#7a2048;text-decoration:none;font-size:.92em}
table{border-collapse:collapse;font-size:.82em;margin:8px 0 14px}
th,td{border:1px solid #d6d6d6;padding:3px 8px;text-align:right}
th{background:#f4eef1}
td:first-child,th:first-child{text-align:left}
figure{margin:12px 0 22px}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.note{background:#fff8e6;border-left:4px solid #e0a800;padding:6px 10px;font-size:.88em}
.muted{color:#777;font-size:.85em}
"""

# sets <body data-images="ok/total"> once every image has decoded, so a headless browser can check the render
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


#: PNGs larger than this are embedded as JPEG: slide thumbnails and tile galleries are photographs, which JPEG
#: stores in a fraction of the bytes at no visible loss (a smaller PNG is kept: plots stay sharp).
_JPEG_ABOVE_BYTES = 150_000
#: JPEG quality of those embedded photographs.
_JPEG_QUALITY = 85
#: Smallest screenshot (width, height) in px: a page narrower than a phone's is not a view anyone reads.
MIN_SCREENSHOT_PX = (320, 240)
#: Characters of Chromium's stderr quoted in an error (its last lines say why it failed).
_STDERR_TAIL = 800


def _img(path: Path, alt: str) -> str:
    raw = Path(path).read_bytes()
    mime = "image/png"
    if len(raw) > _JPEG_ABOVE_BYTES:
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(raw)).convert("RGB").save(
            buf, format="JPEG", quality=_JPEG_QUALITY, optimize=True
        )
        if buf.tell() < len(raw):
            raw, mime = buf.getvalue(), "image/jpeg"
    data = base64.b64encode(raw).decode()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(df: pd.DataFrame, *, floatfmt: str = "{:.3f}", max_rows: int = 200) -> str:
    if df is None or df.empty:
        return '<p class="muted">(no rows)</p>'
    more = len(df) - max_rows
    d = df.head(max_rows)
    text = d.to_html(
        index=False,
        escape=True,
        border=0,
        na_rep="–",
        float_format=lambda v: floatfmt.format(v),
    )
    if more > 0:
        text += f'<p class="muted">… {more} more rows in the Parquet file.</p>'
    return text


def _section(sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(SECTIONS[sid])}</h2>\n{body}\n</section>'


def _figures(manifest: dict, section: str, base: Path) -> str:
    items = manifest.get("figures", {}).get(section, [])
    if not items:
        return '<p class="muted">(nothing to show for this run)</p>'
    return "\n".join(_figure(base / rel, cap) for cap, rel in items)


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
) -> Path:
    """Write the self-contained HTML report of a run.

    Parameters
    ----------
    run
        The run directory (config, metrics, comparisons, predictions, plots/*.png, localisation.parquet).
    explain_dir
        Where :func:`explain_run` wrote its figures and ``manifest.json`` (default ``RUN/explain``); sections
        without figures say so.
    out
        The HTML file (default ``explain_dir/report.html``).

    Returns
    -------
    pathlib.Path
        The report. Every image is embedded as a base64 PNG; the file references no URL.
    """
    run = load_run(run.path if isinstance(run, Run) else run)  # the tables as they are on disk now
    base = Path(explain_dir) if explain_dir is not None else run.layout.explain
    out = report_path(run, explain_dir=base, out=out)
    manifest_path = base / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    parts = [
        _section("summary", _summary(run, manifest)),
        _section("comparison", _comparison(run)),
        _section("scatter", _figures(manifest, "scatter", base)),
        _section("heatmaps", _heatmaps(manifest, base)),
        _section("gallery", _figures(manifest, "gallery", base)),
        _section("shap", _figures(manifest, "shap", base)),
        _section("localisation", _localisation(run, manifest, base)),
    ]
    nav = " ".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in SECTIONS.items())
    title = title or f"slide2expr report — {run.path.name}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>"
        f'<header><h1>{html.escape(title)}</h1><p class="muted">run {html.escape(str(run.path))} · written '
        f"{stamp}</p><nav>{nav}</nav></header>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    return write_bytes_atomic(out, doc.encode("utf-8"))


def _summary(run: Run, manifest: dict) -> str:
    """The run's settings as a table, then the notes of what explain left out."""
    cfg = run.config
    folds = run.table("folds", required=False)
    rows = [
        ("encoder", cfg.get("encoder")),
        ("tiling", cfg.get("tiling")),
        ("bags", f"{len(folds)} ({cfg.get('by', 'patient')})" if folds is not None else "?"),
        ("folds", cfg.get("n_folds")),
        ("genes", ", ".join(run.genes)),
        ("models", ", ".join(run.models)),
        ("target transform", cfg.get("transform")),
        ("seed", cfg.get("seed")),
        ("slide2expr", cfg.get("version")),
    ]
    body = (
        "<table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )
    for n in manifest.get("notes", []):
        body += f'<p class="note">{html.escape(n)}</p>'
    return body


def _comparison(run: Run) -> str:
    """Per-model summary, Pearson r per gene with well-predicted stars, paired comparisons, the run's plots."""
    metrics = run.table("metrics")
    comps = run.table("comparisons", required=False)
    body = "<h3>Per model, over genes (pooled held-out predictions)</h3>" + _table(model_summary(metrics))
    pooled = metrics[metrics["fold"] == -1]
    wide = pooled.pivot(index="gene", columns="model", values="pearson_r").reindex(list(run.genes))
    wp = pooled.pivot(index="gene", columns="model", values="well_predicted").reindex(list(run.genes))
    wide.columns.name = None
    wide = wide.reset_index()
    body += "<h3>Pearson r per gene (★ = well predicted: r &gt; 0, FDR &lt; 0.05, RMSE below the mean predictor)</h3>"
    fmt = wide.copy()
    for m in wide.columns[1:]:
        fmt[m] = [
            ("–" if pd.isna(v) else f"{v:.3f}") + (" ★" if bool(w) is True else "")
            for v, w in zip(wide[m], wp[m].fillna(False).to_numpy(), strict=True)
        ]
    body += _table(fmt)
    if comps is not None and not comps.empty:
        body += (
            "<h3>Paired model comparisons (per-gene differences, Wilcoxon, bootstrap 95 % CI)</h3>"
            + _table(comps)
        )
    for p in sorted(run.layout.plots.glob("*.png")):
        body += _figure(p, p.stem.replace("_", " "))
    return body


def _heatmaps(manifest: dict, base: Path) -> str:
    """How to read the maps, the heatmap figures, and the hotspots per gene (from ``hotspots.parquet``)."""
    body = (
        "<p>Attention is shown as attention × tiles in the bag (1 = uniform weight) and every map as the "
        "percentile of its tile's score within the slide (0–100 %, colour bar on each panel). Outlines: hotspots "
        "(connected tiles above the slide's threshold), also exported as QuPath GeoJSON in level-0 pixels.</p>"
    )
    body += _figures(manifest, "heatmaps", base)
    hs_path = base / HOTSPOTS_FILE
    if hs_path.exists():
        hs = pd.read_parquet(hs_path)
        summ = hs.groupby(["model", "gene"], as_index=False).agg(
            slides=("slide_id", "nunique"),
            hotspots=("hotspot_id", "size"),
            median_area_mm2=("area_mm2", "median"),
            median_mean_score=("mean_score", "median"),
        )
        body += "<h3>Hotspots per gene</h3>" + _table(summ)
        if manifest.get("geojson"):
            body += f'<p class="muted">GeoJSON: {len(manifest["geojson"])} files under geojson/ (one per slide).</p>'
    return body


def _localisation(run: Run, manifest: dict, base: Path) -> str:
    """The localisation table (``RUN/localisation.parquet``) and figure, or why there is none."""
    body = ""
    loc = run.table("localisation", required=False)
    if loc is not None:
        body += (
            "<p>AUROC of each tile score against the planted driver tiles (driver_frac ≥ 0.5), pooled over slides; "
            "genes without driver tiles are negative controls (no AUROC).</p>"
        )
        body += _table(loc)
    body += (
        _figures(manifest, "localisation", base) if manifest.get("figures", {}).get("localisation") else ""
    )
    if not body:
        body = '<p class="muted">(no ground truth for this cohort: localisation is measured on synthetic cohorts)</p>'
    return body


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


def render_dom(path: str | os.PathLike, *, timeout: float = 120.0) -> str:
    """Open an HTML file in headless Chromium and return the DOM after load (``--dump-dom``).

    Raises :class:`ExplainError` when no Chromium is installed (``apt-get install chromium``) or it fails.
    """
    exe = find_chromium()
    if exe is None:
        raise ExplainError(
            "no Chromium on PATH: install it (Debian: apt-get install chromium) to render reports"
        )
    with tempfile.TemporaryDirectory(prefix="slide2expr-chromium-") as profile:
        cmd = _chromium_args(exe, profile) + [
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
    timeout: float = 120.0,
) -> Path:
    """A PNG screenshot of an HTML file (e.g. the report) by headless Chromium; returns ``out``."""
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
            Path(path).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.exists():
        raise ExplainError(
            f"chromium could not screenshot {path} (exit {proc.returncode}): {proc.stderr[-_STDERR_TAIL:]}"
        )
    return out
