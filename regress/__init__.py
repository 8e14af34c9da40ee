"""regress: targets, attention-MIL and baseline regressors of bag-level targets, one CV harness, statistics.

- :func:`import_targets` / :func:`import_star_counts` — expression matrices and GDC STAR-counts files into
  ``STORE/targets/<name>.parquet`` (``sql.list_targets`` lists them, ``sql.load_cohort`` reads them).
- Estimators over bags: :class:`AttentionMILRegressor`, :class:`HE2RNARegressor`, the pooled baselines
  (:func:`lgbm_regressor`, :func:`ridge_regressor`, :class:`MeanRegressor`), composed by :class:`NestedMIL`
  (settings and bag readout chosen by inner patient-grouped CV), :class:`SeedEnsemble` and
  :class:`PerGeneRegressor`; :class:`TileProjection` is the fitted tile step of the torch models.
- The model registry: :func:`make_model`, :func:`list_models`, :func:`model_info`, :func:`register_model`.
- :func:`compare` — every model on the same patient-grouped folds (:func:`plan_compare` → :func:`cross_fit` →
  :func:`null_fits` → :func:`summarise` → :func:`write_run`); :func:`train` / :func:`predict` — one model on a
  whole cohort. Statistics on both axes: per gene across patients (:func:`steiger_test`, the null rule of
  :func:`metrics_table`) and across genes (:func:`paired_comparison`).
- Fixed doors for ``explain``: ``predict_tiles`` (:class:`TileScores`), :func:`pooled_parts`,
  :func:`load_fold_models`.

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
    PooledParts,
    PooledStatsSearch,
    learned_nothing,
    lgbm_regressor,
    lgbm_size_params,
    pooled_parts,
    ridge_regressor,
)
from slide2expr.regress._checks import BagInputError
from slide2expr.regress._compare import (
    ComparePlan,
    CompareResult,
    compare,
    plan_compare,
    print_summary,
    summarise,
)
from slide2expr.regress._folds import FoldOutputs, cross_fit, make_folds, null_fits, permute_by_group
from slide2expr.regress._genes import (
    GeneSelection,
    GeneSelectionError,
    GeneSelectionWarning,
    read_gene_file,
    select_genes,
    top_genes_of,
)
from slide2expr.regress._harness import CompareError, CompareInterrupted, LeftOutBagsWarning
from slide2expr.regress._meta import PerGeneRegressor, SeedEnsemble, TileScores
from slide2expr.regress._mil import GRAZIANI2022, AttentionMILRegressor, HE2RNARegressor
from slide2expr.regress._models import (
    MIL_MODELS,
    MODEL_NAMES,
    ModelInfo,
    UnknownModelError,
    list_models,
    make_model,
    model_info,
    register_model,
)
from slide2expr.regress._nested import NestedMIL
from slide2expr.regress._persist import (
    EncoderMismatchError,
    PredictInterrupted,
    TrainPlan,
    TransformMismatchError,
    check_encoder,
    check_predict,
    check_transform,
    load_fold_models,
    load_model,
    load_model_config,
    plan_train,
    predict,
    train,
)
from slide2expr.regress._plots import plot_compare_pearson
from slide2expr.regress._projection import TileProjection
from slide2expr.regress._runs import write_run
from slide2expr.regress._stats import (
    bh_fdr,
    gene_comparisons,
    metrics_table,
    paired_comparison,
    regression_metrics,
    steiger_test,
)
from slide2expr.regress._streaming import MemoryBoundWarning, StreamingError, peak_rss_gb
from slide2expr.regress._targets import (
    PANELS,
    SamplesWithoutSlidesWarning,
    TargetsError,
    TargetsReport,
    import_star_counts,
    import_targets,
    read_sample_sheet,
    read_star_counts,
    resolve_sample_types,
)

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
    "CompareInterrupted",
    "ComparePlan",
    "CompareResult",
    "EncoderMismatchError",
    "FoldOutputs",
    "GeneSelection",
    "GeneSelectionError",
    "GeneSelectionWarning",
    "HE2RNARegressor",
    "LeftOutBagsWarning",
    "MemoryBoundWarning",
    "StreamingError",
    "peak_rss_gb",
    "MeanRegressor",
    "ModelInfo",
    "NestedMIL",
    "OutputExistsError",
    "PerGeneRegressor",
    "PooledParts",
    "PooledStatsSearch",
    "PredictInterrupted",
    "SamplesWithoutSlidesWarning",
    "SeedEnsemble",
    "TargetsError",
    "TargetsReport",
    "TileProjection",
    "TileScores",
    "TrainPlan",
    "TransformMismatchError",
    "UnknownModelError",
    "bh_fdr",
    "check_encoder",
    "check_predict",
    "check_transform",
    "compare",
    "cross_fit",
    "gene_comparisons",
    "import_star_counts",
    "import_targets",
    "learned_nothing",
    "lgbm_regressor",
    "lgbm_size_params",
    "list_models",
    "load_fold_models",
    "load_model",
    "load_model_config",
    "make_folds",
    "make_model",
    "metrics_table",
    "model_info",
    "null_fits",
    "paired_comparison",
    "permute_by_group",
    "plan_compare",
    "plan_train",
    "plot_compare_pearson",
    "pooled_parts",
    "predict",
    "read_gene_file",
    "read_sample_sheet",
    "read_star_counts",
    "resolve_sample_types",
    "print_summary",
    "register_model",
    "regression_metrics",
    "ridge_regressor",
    "select_genes",
    "steiger_test",
    "summarise",
    "top_genes_of",
    "train",
    "write_run",
]
