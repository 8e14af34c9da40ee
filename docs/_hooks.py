"""MkDocs hooks: the reference parts of the docs are generated from the code at build time, never typed by hand.

A page holds a marker ``<!-- generated: WHAT [ARG] -->`` on a line of its own; :func:`on_page_markdown` replaces it:

- ``schema NAME``: the columns of a contract schema (``SLIDES_SCHEMA`` …, ``embeddings``) with their types and
  what each means (:data:`COLUMN_DOCS`);
- ``encoders``: the encoder registry, with measured speed where ``benchmarks/results/`` has some;
- ``estimates``: hours and disk per 100 slides for each benchmarked encoder and device;
- ``queries``: the named queries (``sql/*.sql``) with their purpose, grain and parameters;
- ``models``: the model registry;
- ``cli``: every command of the ``slide2expr`` app with its arguments and options;
- ``benchmarks``: the results page (``benchmarks/results.py``);
- ``cohort_scale SECTION``: the figures of one section of ``benchmarks/results/cohort_scale.json`` (``write``,
  ``ann-choice``, ``compare``, …) with the date, machine and commit they were measured on;
- ``validity``: the validity page ``benchmarks/validity.py`` writes (``benchmarks/results/validity.md``), its
  headings one level down;
- ``tutorial``: the cells of ``docs/tutorial.ipynb``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: (\w+)(?: (\S+))? -->$", re.M)

#: What each column of each schema means, in the reader's words. The tests check that every column of every schema
#: is described here (a new column must be explained before the docs build).
COLUMN_DOCS: dict[str, dict[str, str]] = {
    "SLIDES_SCHEMA": {
        "slide_id": "The slide's id: the file name without extension, or the slide list's `slide_id`.",
        "patient_id": "Its patient (TCGA barcodes are parsed: `TCGA-XX-XXXX`; other cohorts give a patient column).",
        "path": "Where the slide file was read from.",
        "file_size": "Size of the file in bytes (part of its fingerprint: a changed file is featurized again).",
        "file_mtime_ns": "Modification time of the file, ns (fingerprint).",
        "head_sha256": "SHA-256 of the file's first MiB (fingerprint).",
        "vendor": "OpenSlide's vendor (`aperio`, `hamamatsu`, `generic-tiff` …).",
        "width": "Level-0 width in pixels.",
        "height": "Level-0 height in pixels.",
        "mpp_x": "Level-0 µm per pixel along x.",
        "mpp_y": "Level-0 µm per pixel along y.",
        "mpp_source": "`metadata` (the file's own) or `override` (`--mpp-override` or the slide list's `mpp`).",
        "objective_power": "The scanner's objective power, when the file records it.",
        "levels": "Pyramid levels in the file.",
        "status": "`ok`, `no_tissue` (tissue detection found none) or `failed` (see `error`).",
        "error": "Why the slide failed, in one line (empty when ok).",
        "n_tiles": "Tissue tiles of the latest featurize run that read the slide.",
        "tissue_area_mm2": "Area of the tissue found, mm².",
        "tiling": "The tiling of that run, e.g. `mpp1.00_px224_ov0`.",
        "encoder": "The encoder of that run.",
        "seconds_read": "Seconds spent reading and decoding the slide's tiles.",
        "seconds_total": "Seconds the slide took from opening to its written files.",
        "featurized_at": "When the row was written (UTC).",
    },
    "TILES_SCHEMA": {
        "slide_id": "The slide.",
        "tile_id": "The tile's number within the slide and tiling (files are in tile_id order).",
        "x": "Left edge of the tile, level-0 pixels.",
        "y": "Top edge of the tile, level-0 pixels.",
        "w": "Width of the tile, level-0 pixels (the tile's size in µm divided by the slide's mpp).",
        "h": "Height of the tile, level-0 pixels.",
        "tissue_frac": "Share of the tile covered by tissue (kept when at least `--min-tissue`).",
    },
    "embeddings": {
        "slide_id": "The slide.",
        "tile_id": "The tile (joins `tiles` on slide_id, tile_id within the same tiling).",
        "x": "Left edge, level-0 pixels (as in `tiles`).",
        "y": "Top edge, level-0 pixels.",
        "embedding": "The encoder's vector, a fixed-size list of float32 (or float16); `FLOAT[d]` in SQL.",
    },
    "TARGETS_SCHEMA": {
        "sample_id": "The sample the value was measured on (a TCGA sample barcode, or the matrix's row name).",
        "patient_id": "Its patient: bags are joined to targets on this.",
        "gene": "Gene symbol.",
        "value": "The value models learn, after the import's transform (e.g. log1p).",
        "raw_value": "The value as imported (TPM, counts …).",
        "gene_id": "Ensembl gene id, from GDC STAR-counts files (empty for other imports).",
        "gene_type": "GENCODE gene type (`protein_coding` …), from GDC STAR-counts files.",
    },
    "FOLDS_SCHEMA": {
        "bag_id": "The bag: a patient (default) or a slide (`by='slide'`).",
        "patient_id": "Its patient: all bags of a patient share a fold.",
        "fold": "The cross-validation fold that holds the bag out (0 … n_folds − 1).",
    },
    "PREDICTIONS_SCHEMA": {
        "model": "The model's name (`mil`, `lgbm`, `ridge`, `mean` …).",
        "fold": "The fold that held the bag out; `-1` in a prediction directory (a model fitted on every fold).",
        "bag_id": "The bag predicted.",
        "patient_id": "Its patient.",
        "gene": "The gene.",
        "y_true": "The measured value (on the targets' transformed scale).",
        "y_pred": "The model's prediction for the held-out bag.",
    },
    "METRICS_SCHEMA": {
        "model": "The model.",
        "gene": "The gene.",
        "fold": "The held-out fold, or `-1`: pooled over every fold's held-out predictions (the row to read).",
        "n": "Bags in the fold (or in all folds, pooled).",
        "folds_selected": "How many folds' gene selection kept this gene (its pooled row uses those folds).",
        "pearson_r": "Pearson correlation of predictions with the measured values.",
        "pearson_p": "Its two-sided p-value.",
        "spearman_rho": "Spearman rank correlation.",
        "spearman_p": "Its p-value.",
        "r2": "Coefficient of determination (1 − SSE ÷ the sum of squares about the mean; can be negative).",
        "mae": "Mean absolute error.",
        "rmse": "Root mean squared error.",
        "rmse_baseline": "RMSE of predicting each held-out bag its fold's training mean (the floor to beat).",
        "fdr": "Benjamini–Hochberg FDR of `pearson_p` across the model's genes (pooled rows).",
        "well_predicted": "r > 0, FDR < 0.05, RMSE below the training mean's and, where a null was fitted, "
        "`beats_null` (pooled rows).",
        "null_r": "Pearson r of the same model refitted on permuted training targets (its null; pooled rows).",
        "null_rmse": "RMSE of that null.",
        "null_p": "One-sided Steiger test that the model's r exceeds its null's on the same patients.",
        "null_fdr": "Benjamini–Hochberg FDR of `null_p` across the model's genes.",
        "beats_null": "r above the null's, `null_fdr` < 0.05 and RMSE below the null's.",
    },
    "COMPARISONS_SCHEMA": {
        "model_a": "First model of the pair.",
        "model_b": "Second model.",
        "metric": "The per-gene metric compared (`pearson_r`).",
        "n_genes": "Genes in the comparison.",
        "median_diff": "Median over genes of A − B.",
        "ci_low": "Lower end of the bootstrap 95 % interval of that median.",
        "ci_high": "Upper end.",
        "wilcoxon_stat": "Wilcoxon signed-rank statistic of the per-gene differences.",
        "wilcoxon_p": "Its two-sided p-value.",
        "n_genes_a_better": "Genes where A's r is significantly above B's on the same patients (FDR < 0.05).",
        "n_genes_b_better": "Genes where B's is significantly above A's.",
        "n_genes_tied": "Genes where the two predictions are equal.",
    },
    "ATTENTION_SCHEMA": {
        "model": "The attention model (`mil`, `mil-embedding`).",
        "fold": "The fold that held the bag out (its model never saw these tiles).",
        "bag_id": "The bag.",
        "slide_id": "The tile's slide.",
        "tile_id": "The tile.",
        "x": "Left edge, level-0 pixels.",
        "y": "Top edge, level-0 pixels.",
        "gene": "The gene (instance-mode MIL attends per gene).",
        "attention": "Softmax attention within the bag: sums to 1 over the bag's tiles; × tiles in the bag gives "
        "1 for an average tile (the maps' raw scale). For an ensemble (the nested `mil`), the mean of its networks' "
        "attention.",
        "attention_logit": "The score before the softmax (comparable across bags); for an ensemble, the mean of its "
        "networks' scores.",
        "tile_pred": "The tile's own predicted expression (instance mode; for an ensemble, the mean of its "
        "networks'); empty in embedding mode.",
    },
    "TRUTH_TILES_SCHEMA": {
        "slide_id": "The slide (synthetic cohorts only).",
        "tile_id": "The tile.",
        "gene": "The gene.",
        "driver_frac": "Share of the tile covered by the gene's planted driver regions.",
    },
}


def schema_of(name: str):
    """The pyarrow schema named ``name`` in :mod:`slide2expr.contract` (``embeddings``: a 1,024-d example)."""
    from slide2expr import contract

    return contract.embeddings_schema(1024) if name == "embeddings" else getattr(contract, name)


def schema_table(name: str) -> str:
    """A Markdown table of the schema's columns: name, Arrow type, nullable, meaning."""
    docs = COLUMN_DOCS.get(name, {})
    lines = ["| column | type | may be empty | meaning |", "|---|---|---|---|"]
    for f in schema_of(name):
        kind = str(f.type).replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{kind}` | {'yes' if f.nullable else 'no'} | {docs.get(f.name, '')} |")
    return "\n".join(lines)


def _measured_speeds() -> dict[str, str]:
    """Encoder → its measured featurize speed, from the newest benchmark results (empty when there are none)."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.results import encoder_speeds
    finally:
        sys.path.pop(0)
    return encoder_speeds(ROOT / "benchmarks" / "results")


def encoder_table() -> str:
    """The encoder registry: dimension, parameters, licence, gated, where weights come from, measured speed."""
    from slide2expr.featurize.encoders import WEIGHTS_ENV, list_encoders

    speeds = _measured_speeds()
    lines = [
        "| encoder | dim | parameters | licence | gated | weights | measured speed |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in list_encoders():
        if not s.needs_weights:
            where = "none needed"
        elif s.hf_hub_id:
            where = f"`${WEIGHTS_ENV}/{s.weights_file}` or the hub (`{s.hf_hub_id}`)"
        else:
            where = f"`${WEIGHTS_ENV}/{s.weights_file}`" if s.weights_file else "a Python package"
        params = f"{s.params_m:,.1f} M" if s.params_m else "—"
        lines.append(
            f"| `{s.name}` | {s.dim} | {params} | {s.licence} | {'yes' if s.gated else 'no'} | {where} | "
            f"{speeds.get(s.name, 'not measured')} |"
        )
    return "\n".join(lines)


def estimates_table() -> str:
    """Hours and disk per 100 TCGA-sized slides for each benchmarked encoder and device."""
    from slide2expr.featurize.encoders import list_encoders

    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.results import TILES_PER_TCGA_SLIDE, estimates
    finally:
        sys.path.pop(0)
    rows = estimates(ROOT / "benchmarks" / "results", dims={s.name: s.dim for s in list_encoders()})
    if not rows:
        return "*No featurize benchmark recorded yet.*"
    lines = [
        f"| encoder | device | tiles/s end to end | hours per 100 slides ({TILES_PER_TCGA_SLIDE:,} tiles each) | "
        "disk per 100 slides | measured | load average then |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        disk = f"{r['disk_gb']:.1f} GB" if r["disk_gb"] else "—"
        load = f"{r['load_average']:.1f}" if r.get("load_average") is not None else "—"
        lines.append(
            f"| `{r['encoder']}` | {r['device']} | {r['tiles_per_s']:,.1f} | {r['hours']:.1f} | {disk} | {r['date']} "
            f"| {load} |"
        )
    return "\n".join(lines)


def query_list() -> str:
    """The named queries: name, purpose, grain, parameters."""
    from slide2expr.sql import list_queries

    lines = ["| query | purpose | one row per | parameters |", "|---|---|---|---|"]
    for name, q in list_queries().items():
        params = ", ".join(f"`${p}` {t}" for p, (t, _) in q.params.items()) or "—"
        lines.append(f"| `{name}` | {q.purpose} | {q.grain.removeprefix('one row per ')} | {params} |")
    return "\n".join(lines)


def model_list() -> str:
    """The model registry: name, what it is, whether a run records its attention."""
    from slide2expr import regress

    lines = ["| model | what it is | attention recorded |", "|---|---|---|"]
    for name in regress.list_models():
        info = regress.model_info(name)
        lines.append(f"| `{name}` | {info.description} | {'yes' if info.attention else 'no'} |")
    return "\n".join(lines)


def _md_text(text: str) -> str:
    """Help text made safe for Markdown: ``<NAME>`` stays text, not an HTML tag."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _command_doc(path: tuple[str, ...], cmd) -> list[str]:
    from slide2expr._app import type_name

    title = " ".join(("slide2expr", *path))
    out = [f"### `{title}`", "", _md_text((cmd.help or "").strip().replace("\\[", "[")), ""]
    rows = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        names = ", ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])])
        if p.param_type_name == "argument":
            names = f"`{p.name.upper()}`"
        kind = p.metavar or type_name(p)
        empty = p.default is None or p.default is False or p.default in ((), [])
        default = "" if p.required or empty else f"`{p.default}`"
        default = default.replace("Format.", "")
        help_ = _md_text(getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
        kind = kind.replace("|", "\\|")
        rows.append(f"| {names} | {kind} | {'required' if p.required else default} | {help_} |")
    if rows:
        out += ["| argument or option | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    return out


def cli_reference() -> str:
    """Every command of the app, generated from the Typer app itself."""
    from typer.main import get_command

    from slide2expr.cli import app

    root = get_command(app)
    out: list[str] = []

    def walk(group, prefix=()):
        for name, cmd in sorted(group.commands.items()):
            path = (*prefix, name)
            if hasattr(cmd, "commands"):
                out.extend([f"## `slide2expr {' '.join(path)}`", "", _md_text((cmd.help or "").strip()), ""])
                walk(cmd, path)
            else:
                out.extend(_command_doc(path, cmd))

    walk(root)
    return "\n".join(out)


def benchmarks_page() -> str:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.results import render
    finally:
        sys.path.pop(0)
    return render(ROOT / "benchmarks" / "results", heading_level=2)


def _figure(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "—" if value is None else f"`{value}`" if isinstance(value, str) else str(value)


def _figure_rows(figures: dict, prefix: str = "") -> list[str]:
    """``| name | value |`` rows of a section's numbers and strings; a mapping of mappings is opened (rows named
    ``a · b``), a mapping of numbers is one row, a list of mappings one row each; per-gene tables are left to the
    JSON."""
    rows = []
    for k, v in figures.items():
        if k.endswith("_by_gene"):
            continue
        if isinstance(v, dict) and any(isinstance(x, dict) for x in v.values()):
            rows += _figure_rows(v, prefix=f"{prefix}{k} · ")
        elif isinstance(v, dict):
            rows.append(f"| {prefix}{k} | {', '.join(f'{a}: {_figure(b)}' for a, b in v.items())} |")
        elif isinstance(v, (int, float, str)) or v is None:
            rows.append(f"| {prefix}{k} | {_figure(v)} |")
        elif isinstance(v, list) and all(isinstance(x, (int, float, str)) for x in v):
            rows.append(f"| {prefix}{k} | {', '.join(_figure(x) for x in v)} |")
        elif isinstance(v, list) and all(isinstance(x, dict) for x in v):  # e.g. one row per query setting
            rows += [f"| {prefix}{k} | {', '.join(f'{a}: {_figure(b)}' for a, b in x.items())} |" for x in v]
    return rows


def cohort_scale_figures(section: str) -> str:
    """One section of ``benchmarks/results/cohort_scale.json`` as a table, with where and when it was measured."""
    path = ROOT / "benchmarks" / "results" / "cohort_scale.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    figures = data.get("sections", {}).get(section)
    if figures is None:
        return (
            f"*Not measured yet on this machine: `python benchmarks/cohort_scale.py {section} --store STORE "
            "--save` records it.*"
        )
    m = data.get("machine", {})
    where = f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB"
    rows = _figure_rows(figures)
    head = (
        f"*`{section}`, from `benchmarks/results/cohort_scale.json` ({data.get('date', '')[:10]}, {where}, "
    )
    head += f"commit `{data.get('commit')}`; the file was last written then).*"
    return "\n".join([head, "", "| figure | value |", "|---|---|", *rows])


def tutorial_markdown() -> str:
    """The notebook's cells: Markdown as is, code in fenced blocks (run it to see the outputs)."""
    nb = json.loads((ROOT / "docs" / "tutorial.ipynb").read_text())
    out = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        out.append(src if cell["cell_type"] == "markdown" else f"```python\n{src}\n```")
    return "\n\n".join(out)


def validity_page() -> str:
    page = ROOT / "benchmarks" / "results" / "validity.md"
    if not page.is_file():
        return "*Not measured yet: `python benchmarks/validity.py` writes it.*"
    lines = page.read_text().splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines  # the page's own title
    return "\n".join("#" + line if line.startswith("## ") else line for line in body).strip()


GENERATORS = {
    "schema": schema_table,
    "encoders": encoder_table,
    "estimates": estimates_table,
    "queries": query_list,
    "models": model_list,
    "cli": cli_reference,
    "benchmarks": benchmarks_page,
    "cohort_scale": cohort_scale_figures,
    "validity": validity_page,
    "tutorial": tutorial_markdown,
}


def render_markers(markdown: str) -> str:
    """``markdown`` with every ``<!-- generated: … -->`` marker replaced by what it names."""

    def sub(m: re.Match) -> str:
        what, arg = m.group(1), m.group(2)
        if what not in GENERATORS:
            raise ValueError(f"unknown docs marker {m.group(0)!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[what](arg) if arg else GENERATORS[what]()

    return MARKER.sub(sub, markdown)


#: Where the API reference reads the package from: ``slide2expr/`` with the four stage folders linked in, the layout
#: the package has once installed (the stages sit at the top of the repository and install as ``slide2expr.*``).
API_SOURCE = ROOT / "build" / "api-src"
STAGES = ("featurize", "sql", "regress", "explain")


def api_source_tree() -> Path:
    """Build :data:`API_SOURCE` (symbolic links only) and return it."""
    pkg = API_SOURCE / "slide2expr"
    pkg.mkdir(parents=True, exist_ok=True)
    for entry in [*(ROOT / "slide2expr").iterdir(), *(ROOT / s for s in STAGES)]:
        if entry.name == "__pycache__" or entry.name.endswith(".egg-info"):
            continue
        link = pkg / entry.name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == entry.resolve():
                continue
            link.unlink()
        link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return API_SOURCE


class _NumpyProseFilter(logging.Filter):
    """Drops griffe's "Could not parse line" notes: prose after a numpy section (``Writes under out: …``) renders
    as text all the same. Every other warning (a broken link, a missing reference) still fails ``--strict``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Could not parse line" not in record.getMessage()


def on_startup(**kwargs):
    # before any plugin reads its configuration: mkdocstrings resolves its ``paths`` when it loads
    api_source_tree()


def on_config(config, **kwargs):
    api_source_tree()
    for name in ("griffe", "mkdocs.plugins.griffe", "mkdocs.plugins.mkdocstrings_handlers"):
        logging.getLogger(name).addFilter(_NumpyProseFilter())
    return config


def on_page_markdown(markdown: str, **kwargs) -> str:
    return render_markers(markdown)
