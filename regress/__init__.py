"""regress: targets, attention-MIL and baseline regressors of bag-level targets, one CV harness, statistics.

>>> from slide2expr import regress
>>> regress.MODEL_NAMES
('mil', 'mil-embedding', 'lgbm', 'ridge', 'he2rna', 'mean')
"""

from __future__ import annotations

from slide2expr.contract import OutputExistsError
from slide2expr.regress._baselines import (
    LGBM_PARAMS,
    BagPooler,
    MeanRegressor,
    PerGeneRegressor,
    PooledParts,
    lgbm_regressor,
    pooled_parts,
    ridge_regressor,
)
from slide2expr.regress._compare import (
    CompareError,
    CompareResult,
    LeftOutBagsWarning,
    compare,
    make_folds,
    print_summary,
)
from slide2expr.regress._mil import GRAZIANI2022, AttentionMILRegressor, HE2RNARegressor, TileScores
from slide2expr.regress._models import MIL_MODELS, MODEL_NAMES, UnknownModelError, make_model
from slide2expr.regress._persist import (
    EncoderMismatchError,
    TransformMismatchError,
    check_encoder,
    check_transform,
    load_fold_models,
    load_model,
    load_model_config,
    predict,
    train,
)
from slide2expr.regress._plots import plot_compare_pearson
from slide2expr.regress._stats import bh_fdr, metrics_table, paired_comparison, regression_metrics
from slide2expr.regress._targets import (
    PANELS,
    SamplesWithoutSlidesWarning,
    TargetsError,
    TargetsReport,
    import_star_counts,
    import_targets,
)
from slide2expr.regress._torchbag import BagInputError

__all__ = [
    "GRAZIANI2022",
    "LGBM_PARAMS",
    "MIL_MODELS",
    "MODEL_NAMES",
    "PANELS",
    "AttentionMILRegressor",
    "BagInputError",
    "BagPooler",
    "CompareError",
    "CompareResult",
    "EncoderMismatchError",
    "HE2RNARegressor",
    "LeftOutBagsWarning",
    "MeanRegressor",
    "OutputExistsError",
    "PerGeneRegressor",
    "PooledParts",
    "SamplesWithoutSlidesWarning",
    "TargetsError",
    "TargetsReport",
    "TileScores",
    "TransformMismatchError",
    "UnknownModelError",
    "bh_fdr",
    "check_encoder",
    "check_transform",
    "compare",
    "import_star_counts",
    "import_targets",
    "lgbm_regressor",
    "load_fold_models",
    "load_model",
    "load_model_config",
    "make_folds",
    "make_model",
    "metrics_table",
    "paired_comparison",
    "plot_compare_pearson",
    "pooled_parts",
    "predict",
    "print_summary",
    "regression_metrics",
    "ridge_regressor",
    "train",
]
