"""Where each file of explain's output folder lives: one spelling of each name, for the writer and the dry run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
REPORT_HTML = "report.html"
HOTSPOTS_FILE = "hotspots.parquet"
GALLERY_FILE = "gallery.parquet"


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
        return self.root / "figures" / "scatter.png"

    @property
    def localisation_figure(self) -> Path:
        return self.root / "figures" / "localisation.png"

    def shap_global(self, model: str) -> Path:
        return self.root / "shap" / f"global_{model}.parquet"

    def shap_tiles(self, model: str) -> Path:
        return self.root / "shap" / f"tiles_{model}.parquet"

    def shap_importance(self, model: str) -> Path:
        return self.root / "shap" / f"importance_{model}.png"

    def shap_summary(self, model: str, gene: str) -> Path:
        return self.root / "shap" / f"summary_{model}_{gene}.png"

    @property
    def hotspots(self) -> Path:
        return self.root / HOTSPOTS_FILE

    def geojson(self, slide_id: str) -> Path:
        return self.root / "geojson" / f"{slide_id}.geojson"

    @property
    def maps(self) -> Path:
        """The folder of :func:`write_maps`: ``maps/<model>/<gene>/<slide_id>_<scale>.png``."""
        return self.root / "maps"

    def heatmap(self, model: str, gene: str, slide_id: str, scale: str = "percentile") -> Path:
        return heatmap_path(self.maps, model, gene, slide_id, scale)

    def gallery_figure(self, model: str, gene: str) -> Path:
        return self.root / "gallery" / f"{model}_{gene}.png"

    @property
    def gallery(self) -> Path:
        return self.root / GALLERY_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def report(self) -> Path:
        return self.root / REPORT_HTML
