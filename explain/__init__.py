"""explain: where expression comes from — heatmaps, hotspots (GeoJSON), gallery, SHAP, localisation, HTML report.

Reads a run directory written by ``regress.compare`` (or a prediction directory written by ``regress.predict``) and
its store through ``slide2expr.sql``, and the run's fitted models through ``slide2expr.regress``'s public
functions.

- :func:`explain_run` — every output of a run (``regress.compare``) or prediction directory (``regress.predict``);
  :func:`plan_explain` — its checks and the files it would write, :func:`run_plan` — writing them, as one folder
  swapped in at the end; :func:`explain_model` — predict new slides with a model directory, then explain them.
- :func:`write_detections` (every tile as a QuPath detection with its scores), :func:`write_overlay` (a score map
  as a pyramidal TIFF aligned to the slide).
- :func:`tile_score_map`, :func:`find_hotspots`, :func:`gallery`, :func:`shap_tree`, :func:`localisation_auroc`,
  :func:`write_report` — the steps, each usable alone.

>>> from slide2expr import explain
>>> explain.ExplainLayout("RUN/explain").report.as_posix()
'RUN/explain/report.html'
"""

from __future__ import annotations

from slide2expr.explain._figures import model_summary, plot_scatter, save_figure
from slide2expr.explain._gallery import Gallery, gallery, plot_gallery
from slide2expr.explain._hotspots import find_hotspots, gene_colors, hotspots_to_geojson, write_geojson
from slide2expr.explain._inputs import ExplainError, Run, load_run
from slide2expr.explain._layout import EXPLAIN_OUTPUTS, ExplainLayout, check_explain_out
from slide2expr.explain._localisation import (
    attention_scores,
    localisation_auroc,
    plot_localisation,
    shap_scores,
)
from slide2expr.explain._maps import ScoreMap, plot_heatmap, plot_slide_maps, tile_score_map
from slide2expr.explain._new_slides import NewSlidesPlan, explain_model, is_model_dir, plan_explain_model
from slide2expr.explain._overlay import write_overlay
from slide2expr.explain._plan import ExplainPlan, LearnedNothingWarning, check_explain_args, plan_explain
from slide2expr.explain._qupath import measurement_name, tile_detections, write_detections
from slide2expr.explain._report import (
    check_screenshot_size,
    find_chromium,
    render_dom,
    report_path,
    screenshot,
    write_report,
)
from slide2expr.explain._run import (
    ExplainInterrupted,
    ExplainResult,
    explain_run,
    run_plan,
    slide_score_maps,
    write_maps,
)
from slide2expr.explain._shap import (
    ShapResult,
    plot_shap_importance,
    plot_shap_summary,
    shap_tree,
    tree_models,
)

__all__ = [
    "EXPLAIN_OUTPUTS",
    "ExplainError",
    "ExplainInterrupted",
    "ExplainLayout",
    "ExplainPlan",
    "ExplainResult",
    "Gallery",
    "LearnedNothingWarning",
    "NewSlidesPlan",
    "Run",
    "ScoreMap",
    "ShapResult",
    "attention_scores",
    "check_explain_args",
    "check_explain_out",
    "check_screenshot_size",
    "explain_model",
    "explain_run",
    "find_chromium",
    "find_hotspots",
    "gallery",
    "gene_colors",
    "hotspots_to_geojson",
    "is_model_dir",
    "load_run",
    "localisation_auroc",
    "measurement_name",
    "model_summary",
    "plan_explain",
    "plan_explain_model",
    "plot_gallery",
    "plot_heatmap",
    "plot_localisation",
    "plot_scatter",
    "plot_shap_importance",
    "plot_shap_summary",
    "plot_slide_maps",
    "render_dom",
    "report_path",
    "run_plan",
    "save_figure",
    "screenshot",
    "shap_scores",
    "shap_tree",
    "slide_score_maps",
    "tile_detections",
    "tile_score_map",
    "tree_models",
    "write_detections",
    "write_geojson",
    "write_maps",
    "write_overlay",
    "write_report",
]
