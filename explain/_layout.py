"""Where each file of explain's output folder lives: one spelling of each name, for the writer and the dry run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
REPORT_HTML = "report.html"
HOTSPOTS_FILE = "hotspots.parquet"
GALLERY_FILE = "gallery.parquet"
FIGURES_DIR = "figures"
SHAP_DIR = "shap"
GEOJSON_DIR = "geojson"
DETECTIONS_DIR = "detections"
MAPS_DIR = "maps"
GALLERY_DIR = "gallery"
OVERLAYS_DIR = "overlays"

#: The entries explain writes at the top of its output folder. Replacing the folder (``overwrite=True``) is refused
#: when it holds anything else, so nothing of the user's is deleted.
EXPLAIN_OUTPUTS = frozenset(
    {
        MANIFEST,
        REPORT_HTML,
        HOTSPOTS_FILE,
        GALLERY_FILE,
        FIGURES_DIR,
        SHAP_DIR,
        GEOJSON_DIR,
        DETECTIONS_DIR,
        MAPS_DIR,
        GALLERY_DIR,
        OVERLAYS_DIR,
    }
)


def heatmap_path(maps: str | os.PathLike, model: str, gene: str, slide_id: str, scale: str) -> Path:
    """A heatmap figure in the maps folder ``maps``: ``<model>/<gene>/<slide_id>_<scale>.png``."""
    return Path(maps) / model / gene / f"{slide_id}_{scale}.png"


@dataclass(frozen=True)
class ExplainLayout:
    """The files :func:`explain_run` writes under its output folder ``root``.

    Examples
    --------
    >>> out = ExplainLayout("RUN/explain")
    >>> out.heatmap("mil", "GNLY", "S1").as_posix(), out.shap_tiles("lgbm").as_posix()
    ('RUN/explain/maps/mil/GNLY/S1_percentile.png', 'RUN/explain/shap/tiles_lgbm.parquet')
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def scatter(self) -> Path:
        return self.root / FIGURES_DIR / "scatter.png"

    @property
    def localisation_figure(self) -> Path:
        return self.root / FIGURES_DIR / "localisation.png"

    def shap_global(self, model: str) -> Path:
        return self.root / SHAP_DIR / f"global_{model}.parquet"

    def shap_tiles(self, model: str) -> Path:
        return self.root / SHAP_DIR / f"tiles_{model}.parquet"

    def shap_importance(self, model: str) -> Path:
        return self.root / SHAP_DIR / f"importance_{model}.png"

    def shap_summary(self, model: str, gene: str) -> Path:
        return self.root / SHAP_DIR / f"summary_{model}_{gene}.png"

    @property
    def hotspots(self) -> Path:
        return self.root / HOTSPOTS_FILE

    def geojson(self, slide_id: str) -> Path:
        """Hotspots of a slide as QuPath annotations."""
        return self.root / GEOJSON_DIR / f"{slide_id}.geojson"

    def detections(self, slide_id: str) -> Path:
        """Every tile of a slide as a QuPath detection with its attention and prediction per gene."""
        return self.root / DETECTIONS_DIR / f"{slide_id}.geojson"

    def overlay(self, model: str, gene: str, slide_id: str, score: str) -> Path:
        """A pyramidal TIFF of one score map, aligned to the slide's level-0 pixels."""
        return self.root / OVERLAYS_DIR / model / gene / f"{slide_id}_{score}.tiff"

    @property
    def maps(self) -> Path:
        """The folder of :func:`write_maps`: ``maps/<model>/<gene>/<slide_id>_<scale>.png``."""
        return self.root / MAPS_DIR

    def heatmap(self, model: str, gene: str, slide_id: str, scale: str = "percentile") -> Path:
        return heatmap_path(self.maps, model, gene, slide_id, scale)

    def gallery_figure(self, model: str, gene: str) -> Path:
        return self.root / GALLERY_DIR / f"{model}_{gene}.png"

    @property
    def gallery(self) -> Path:
        return self.root / GALLERY_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def report(self) -> Path:
        return self.root / REPORT_HTML


def check_explain_out(out: str | os.PathLike, *, overwrite: bool) -> Path:
    """Raise :class:`~slide2expr.contract.OutputExistsError` unless explain may write ``out``: absent, empty, or
    holding only explain's own outputs (:data:`EXPLAIN_OUTPUTS`) with ``overwrite``.

    Examples
    --------
    >>> import tempfile
    >>> from slide2expr.contract import OutputExistsError
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "notes.txt").write_text("mine")
    ...     try:
    ...         check_explain_out(d, overwrite=True)
    ...     except OutputExistsError as exc:
    ...         print(str(exc).split(": ")[0].endswith("(notes.txt)"))
    True
    """
    from slide2expr.contract import OutputExistsError

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"out {root} is a file, not a folder: choose another out (--out)")
    if not root.is_dir():
        return root
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return root
    foreign = [
        n for n in entries if n not in EXPLAIN_OUTPUTS and not (n.startswith(".") and n.endswith(".tmp"))
    ]
    if not overwrite:
        held = "files explain did not write" if foreign else "an earlier explain output"
        raise OutputExistsError(
            f"out {root} is not empty (it holds {held}): choose another out (--out), or replace an earlier explain "
            "output with overwrite (--overwrite); nothing was written"
        )
    if foreign:
        shown = ", ".join(foreign[:10]) + (" …" if len(foreign) > 10 else "")
        raise OutputExistsError(
            f"out {root} holds entries that explain did not write ({shown}): not replacing it even with "
            "overwrite (--overwrite); choose another out (--out), or move those away"
        )
    return root
