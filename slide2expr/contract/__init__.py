"""The contract between the stages: the store's layout and schemas, ``Tiling``, ``Cohort``, and the layout of
run and model directories.

Every stage imports what it shares with another stage from here, and this package imports no stage. Each name has
one owner: a file name, a schema or a folder rule is spelled here and nowhere else.

>>> from slide2expr.contract import Tiling, embeddings_path
>>> embeddings_path("STORE", Tiling(mpp=0.5, tile_px=224), "uni", "TCGA-AA-3511-01Z-00-DX1").as_posix()
'STORE/embeddings/mpp0.50_px224_ov0/uni/TCGA-AA-3511-01Z-00-DX1.parquet'
"""

from __future__ import annotations

from slide2expr.contract._cohort import Cohort
from slide2expr.contract._ids import tcga_patient, tcga_sample
from slide2expr.contract._run import (
    ATTENTION_SCHEMA,
    COMPARISONS_SCHEMA,
    FOLDS_SCHEMA,
    KNOWN_OUTPUTS,
    METRICS_SCHEMA,
    PREDICTIONS_SCHEMA,
    RUN_FILES,
    TRUTH_TILES_SCHEMA,
    ModelLayout,
    OutputExistsError,
    RunLayout,
    check_output_dir,
    describe_output,
    prepare_output_dir,
)
from slide2expr.contract._store import (
    EMBEDDINGS_DIR,
    META_KEYS,
    QC_DIR,
    SLIDES_DIR,
    SLIDES_SCHEMA,
    STORE_DIRS,
    STORE_FORMAT,
    STORE_JSON,
    TARGETS_DIR,
    TARGETS_SCHEMA,
    TILES_DIR,
    TILES_SCHEMA,
    StoreError,
    check_id,
    check_store,
    decode_metadata,
    embeddings_path,
    embeddings_schema,
    encode_metadata,
    init_store,
    package_version,
    qc_path,
    read_metadata,
    slide_path,
    targets_path,
    tiles_path,
    write_bytes_atomic,
    write_table_atomic,
)
from slide2expr.contract._tiling import Tiling, TilingError, tiling_name

__all__ = [
    "ATTENTION_SCHEMA",
    "COMPARISONS_SCHEMA",
    "EMBEDDINGS_DIR",
    "FOLDS_SCHEMA",
    "KNOWN_OUTPUTS",
    "METRICS_SCHEMA",
    "META_KEYS",
    "PREDICTIONS_SCHEMA",
    "QC_DIR",
    "RUN_FILES",
    "SLIDES_DIR",
    "SLIDES_SCHEMA",
    "STORE_DIRS",
    "STORE_FORMAT",
    "STORE_JSON",
    "TARGETS_DIR",
    "TARGETS_SCHEMA",
    "TILES_DIR",
    "TILES_SCHEMA",
    "TRUTH_TILES_SCHEMA",
    "Cohort",
    "ModelLayout",
    "OutputExistsError",
    "RunLayout",
    "StoreError",
    "Tiling",
    "TilingError",
    "check_id",
    "check_output_dir",
    "check_store",
    "decode_metadata",
    "describe_output",
    "embeddings_path",
    "embeddings_schema",
    "encode_metadata",
    "init_store",
    "package_version",
    "prepare_output_dir",
    "qc_path",
    "read_metadata",
    "slide_path",
    "targets_path",
    "tcga_patient",
    "tcga_sample",
    "tiles_path",
    "tiling_name",
    "write_bytes_atomic",
    "write_table_atomic",
]
