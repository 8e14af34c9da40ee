"""featurize: slides → tissue → tiles → encoder → Parquet store. Owns the store schema.

>>> from slide2expr.featurize import featurize_cohort, open_slide, list_encoders
"""

from __future__ import annotations

from slide2expr.featurize import _tuning  # noqa: F401 - first, before anything loads torch
from slide2expr.featurize._inputs import (
    SlideInput,
    SlideListError,
    collect_slides,
    file_fingerprint,
    select_shard,
)
from slide2expr.featurize._pipeline import FeaturizeSummary, SlideResult
from slide2expr.featurize._reader import (
    MissingMPPError,
    SlideError,
    SlideOpenError,
    SlideReader,
    SlideReadError,
    open_slide,
)
from slide2expr.featurize._run import DeviceMemoryError, featurize_cohort, magnification_to_mpp
from slide2expr.featurize._tissue import TileGrid, tile_grid, tissue_mask

# The encoder API imports torch and timm (≈2 s, ≈450 MB): load it on first use, so that `import sql` and
# `import explain`, which only need the store contract and the reader, stay light.
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
    raise AttributeError(f"module 'featurize' has no attribute {name!r}")


__all__ = [
    "DeviceMemoryError",
    "bf16_supported",
    "WeightsMismatchError",
    "UnknownEncoderError",
    "weights_available",
    "get_spec",
    "Encoder",
    "EncoderSpec",
    "FeaturizeSummary",
    "MissingMPPError",
    "SlideError",
    "SlideInput",
    "SlideListError",
    "SlideOpenError",
    "SlideReadError",
    "SlideReader",
    "SlideResult",
    "TileGrid",
    "WeightsNotFoundError",
    "collect_slides",
    "create_encoder",
    "featurize_cohort",
    "file_fingerprint",
    "list_encoders",
    "magnification_to_mpp",
    "open_slide",
    "register_encoder",
    "select_shard",
    "tile_grid",
    "tissue_mask",
]
