"""featurize: slides → tissue → tiles → encoder → Parquet store.

>>> from slide2expr.featurize import FeaturizeOptions, featurize_cohort, open_slide, plan_cohort
>>> FeaturizeOptions(magnification=20, tile_px=256).tiling_params.name
'mpp0.50_px256_ov0'
"""

from __future__ import annotations

from slide2expr.featurize import _tuning  # noqa: F401 - first, before anything loads torch
from slide2expr.featurize._cohort import CohortPlan, PlannedSlide, plan_cohort
from slide2expr.featurize._embed import DeviceMemoryError
from slide2expr.featurize._inputs import (
    SlideInput,
    SlideListError,
    collect_slides,
    file_fingerprint,
    select_shard,
)
from slide2expr.featurize._options import FeaturizeOptions, FeaturizeOptionsError, magnification_to_mpp
from slide2expr.featurize._plan import SlidePlan, TilingParams, plan_slide
from slide2expr.featurize._ray import RayEngineError, featurize_cohort_ray
from slide2expr.featurize._reader import open_slide
from slide2expr.featurize._remove import RemovalError, StoreRemoval, plan_removal, remove_from_store
from slide2expr.featurize._run import featurize_cohort
from slide2expr.featurize._slide import (
    MissingMPPError,
    SlideError,
    SlideOpenError,
    SlideReader,
    SlideReadError,
)
from slide2expr.featurize._summary import FeaturizeInterrupted, FeaturizeSummary, SlideResult
from slide2expr.featurize._tissue import TileGrid, tile_grid, tissue_mask

# The encoder API imports torch and timm (seconds, hundreds of MB): load it on first use, so that `sql` and
# `explain`, which need only the store contract and the reader, stay light.
_ENCODER_NAMES = frozenset(
    {
        "Encoder",
        "EncoderSpec",
        "UnknownEncoderError",
        "WeightsMismatchError",
        "WeightsNotFoundError",
        "bf16_supported",
        "create_encoder",
        "get_spec",
        "list_encoders",
        "register_encoder",
        "weights_available",
    }
)


def __getattr__(name: str):
    if name in _ENCODER_NAMES:
        from slide2expr.featurize import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'slide2expr.featurize' has no attribute {name!r}")


__all__ = [
    "CohortPlan",
    "DeviceMemoryError",
    "Encoder",
    "EncoderSpec",
    "FeaturizeOptions",
    "FeaturizeInterrupted",
    "FeaturizeOptionsError",
    "FeaturizeSummary",
    "MissingMPPError",
    "PlannedSlide",
    "RayEngineError",
    "RemovalError",
    "SlideError",
    "SlideInput",
    "SlideListError",
    "SlideOpenError",
    "SlidePlan",
    "SlideReadError",
    "SlideReader",
    "SlideResult",
    "StoreRemoval",
    "TileGrid",
    "TilingParams",
    "UnknownEncoderError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "bf16_supported",
    "collect_slides",
    "create_encoder",
    "featurize_cohort",
    "featurize_cohort_ray",
    "file_fingerprint",
    "get_spec",
    "list_encoders",
    "magnification_to_mpp",
    "open_slide",
    "plan_cohort",
    "plan_removal",
    "plan_slide",
    "register_encoder",
    "remove_from_store",
    "select_shard",
    "tile_grid",
    "tissue_mask",
    "weights_available",
]
