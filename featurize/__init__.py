"""featurize: slides → tissue → tiles → encoder → Parquet store. Owns the store schema.

>>> from featurize import featurize_cohort, open_slide, list_encoders
"""

from __future__ import annotations

from featurize import _tuning  # noqa: F401 - first, before anything loads torch
from featurize._inputs import SlideInput, SlideListError, collect_slides, file_fingerprint, select_shard
from featurize._pipeline import FeaturizeSummary, SlideResult, qc_path
from featurize._reader import (
    MissingMPPError,
    SlideError,
    SlideOpenError,
    SlideReader,
    SlideReadError,
    open_slide,
)
from featurize._run import DeviceMemoryError, featurize_cohort, magnification_to_mpp
from featurize._store import (
    EMBEDDINGS_DIR,
    SLIDES_DIR,
    SLIDES_SCHEMA,
    STORE_FORMAT,
    TARGETS_DIR,
    TARGETS_SCHEMA,
    TILES_DIR,
    TILES_SCHEMA,
    StoreError,
    embeddings_path,
    embeddings_schema,
    init_store,
    read_metadata,
    slide_path,
    targets_path,
    tcga_patient,
    tcga_sample,
    tiles_path,
    tiling_name,
    write_bytes_atomic,
    write_table_atomic,
)
from featurize._tissue import TileGrid, tile_grid, tissue_mask

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
        from featurize import encoders

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
    "EMBEDDINGS_DIR",
    "SLIDES_DIR",
    "SLIDES_SCHEMA",
    "STORE_FORMAT",
    "TARGETS_DIR",
    "TARGETS_SCHEMA",
    "TILES_DIR",
    "TILES_SCHEMA",
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
    "StoreError",
    "TileGrid",
    "WeightsNotFoundError",
    "collect_slides",
    "create_encoder",
    "embeddings_path",
    "embeddings_schema",
    "featurize_cohort",
    "file_fingerprint",
    "init_store",
    "list_encoders",
    "magnification_to_mpp",
    "open_slide",
    "qc_path",
    "read_metadata",
    "register_encoder",
    "select_shard",
    "slide_path",
    "targets_path",
    "tcga_patient",
    "tcga_sample",
    "tile_grid",
    "tiles_path",
    "tiling_name",
    "tissue_mask",
    "write_bytes_atomic",
    "write_table_atomic",
]
