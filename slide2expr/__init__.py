"""slide2expr: predict bulk gene expression from H&E whole-slide images and show where in the tissue it comes from.

The stages are namespaces of one package, in the order the data flows::

    import slide2expr as s2e

    opts = s2e.featurize.FeaturizeOptions(encoder="uni", mpp=0.5, tile_px=224)  # how to featurize
    s2e.featurize.featurize_cohort("slides/", store="STORE", options=opts)   # slides → Parquet store
    con = s2e.sql.connect("STORE")                                           # DuckDB views over the store
    cohort = s2e.sql.load_cohort("STORE", encoder="uni", targets="expr")     # bags + targets
    result = s2e.regress.compare(cohort, models=["mil", "ridge"], out="RUN")  # same folds for every model
    s2e.explain.explain_run("RUN", store="STORE")                            # maps, hotspots, report

``s2e.contract`` holds what the stages share (store layout, ``Tiling``, ``Cohort``, run layout); ``s2e.synth``
writes synthetic cohorts with ground truth. Each namespace is imported on first use, so ``import slide2expr``
stays light.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slide2expr")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

_SUBPACKAGES = ("contract", "featurize", "sql", "regress", "explain", "synth")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])


__all__ = ["__version__", *_SUBPACKAGES]
