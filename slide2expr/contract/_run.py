"""The output folders: a run directory (``compare``), a model directory (``train``), and the rule that replaces
one only when told, and then cleanly.

A run directory::

    RUN/
      config.json                  what was compared: store, targets, encoder, tiling, models, folds, genes, …
      folds.parquet                one row per bag: bag_id, patient_id, fold
      predictions.parquet          model × held-out bag × gene
      metrics.parquet              model × gene × fold (fold -1: pooled over the held-out predictions)
      comparisons.parquet          model pairs, paired over genes
      attention.parquet            attention models: held-out tiles × genes
      models/<model>/fold<k>.joblib
      partial/                     while compare runs: each finished model × fold (removed at the end)
      plots/                       figures of the comparison
      explain/                     what ``explain`` wrote (maps, hotspots, report)
      localisation.parquet         explain's localisation AUROCs (synthetic cohorts)
      truth_tiles.parquet          tile-level ground truth (synthetic cohorts)

A model directory holds ``model.joblib`` and ``config.json``.

A prediction directory (``predict --out``) holds one model's outputs on bags it never saw::

    PRED/
      config.json                  kind "predictions": the model directory and its identity, store, encoder,
                                   tiling, genes, models ([the model's name])
      predictions.parquet          bag × gene, in PREDICTIONS_SCHEMA, fold -1 (PREDICT_FOLD)
      attention.parquet            attention models: tiles × genes (attention, tile predictions), fold -1
      explain/, localisation.parquet, truth_tiles.parquet      as in a run directory
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

CONFIG_JSON = "config.json"
FOLDS_FILE = "folds.parquet"
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.parquet"
COMPARISONS_FILE = "comparisons.parquet"
ATTENTION_FILE = "attention.parquet"
MODELS_DIR = "models"
PLOTS_DIR = "plots"
EXPLAIN_DIR = "explain"
#: A compare run's finished model × fold outputs while it runs (resume reads them; removed when it ends).
PARTIAL_DIR = "partial"
PARTIAL_SETTINGS = "settings.json"
#: ``partial/``'s folder of the folds' projected bags of a cohort read on access (``regress`` keeps them for the
#: nulls and a resumed run).
PARTIAL_PROJECTED = "projected"
LOCALISATION_FILE = "localisation.parquet"
TRUTH_TILES_FILE = "truth_tiles.parquet"
#: The fitted estimator of a model directory (``train``).
MODEL_FILE = "model.joblib"

#: The files ``compare`` writes into every run directory.
RUN_FILES = (CONFIG_JSON, FOLDS_FILE, PREDICTIONS_FILE, METRICS_FILE, COMPARISONS_FILE, ATTENTION_FILE)

#: ``kind`` in the ``config.json`` of a prediction directory.
PREDICTION_KIND = "predictions"
#: The ``fold`` of every row of a prediction directory: its model was fitted on all of its training bags, so no
#: cross-validation fold held these bags out (``-1`` stands for "all folds", as in the metrics' pooled rows).
PREDICT_FOLD = -1
#: The files ``predict`` writes into every prediction directory (``attention.parquet`` for attention models).
PREDICTION_FILES = (CONFIG_JSON, PREDICTIONS_FILE, ATTENTION_FILE)

#: What slide2expr writes into a run, model or prediction directory. Replacing one (``overwrite=True``) deletes
#: these and nothing else.
KNOWN_OUTPUTS = frozenset((*RUN_FILES, *PREDICTION_FILES)) | {
    MODELS_DIR,
    PARTIAL_DIR,
    PLOTS_DIR,
    EXPLAIN_DIR,
    LOCALISATION_FILE,
    TRUTH_TILES_FILE,
    MODEL_FILE,
}

_FOLD_MODEL = re.compile(r"fold(\d+)\.joblib")

# ---- schemas -------------------------------------------------------------------------------------------------

FOLDS_SCHEMA = pa.schema([("bag_id", pa.string()), ("patient_id", pa.string()), ("fold", pa.int32())])
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("fold", pa.int32()),
        ("bag_id", pa.string()),
        ("patient_id", pa.string()),
        ("gene", pa.string()),
        ("y_true", pa.float64()),
        ("y_pred", pa.float64()),
    ]
)
METRICS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("gene", pa.string()),
        ("fold", pa.int32()),
        ("n", pa.int64()),
        (
            "folds_selected",
            pa.int32(),
        ),  # folds whose gene selection kept the gene (its pooled rows use those)
        *(
            (c, pa.float64())
            for c in (
                "pearson_r",
                "pearson_p",
                "spearman_rho",
                "spearman_p",
                "r2",
                "mae",
                "rmse",
                "rmse_baseline",
                "fdr",
            )
        ),
        ("well_predicted", pa.bool_()),
        # the model's null (the same model fitted on permuted training targets), pooled rows only
        *((c, pa.float64()) for c in ("null_r", "null_rmse", "null_p", "null_fdr")),
        ("beats_null", pa.bool_()),
    ]
)
COMPARISONS_SCHEMA = pa.schema(
    [
        ("model_a", pa.string()),
        ("model_b", pa.string()),
        ("metric", pa.string()),
        ("n_genes", pa.int64()),
        *((c, pa.float64()) for c in ("median_diff", "ci_low", "ci_high", "wilcoxon_stat", "wilcoxon_p")),
        # the across-patients axis: genes where Steiger's test favours a or b (BH-FDR < 0.05), or the predictions tie
        *((c, pa.int64()) for c in ("n_genes_a_better", "n_genes_b_better", "n_genes_tied")),
    ]
)
ATTENTION_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("fold", pa.int32()),
        ("bag_id", pa.string()),
        ("slide_id", pa.string()),
        ("tile_id", pa.int32()),
        ("x", pa.int64()),
        ("y", pa.int64()),
        ("gene", pa.string()),
        ("attention", pa.float32()),
        ("attention_logit", pa.float32()),
        ("tile_pred", pa.float32()),
    ]
)
#: Rows per row group of ``attention.parquet``: rows are grouped by fold and bag, so small groups let a reader of a
#: few slides skip the rest by the groups' slide_id statistics.
ATTENTION_ROW_GROUP_ROWS = 131_072


#: ``RUN/truth_tiles.parquet``: tile-level ground truth of a synthetic cohort, the share of each tile covered by each
#: gene's planted driver regions (``slide2expr.synth.write_truth_tiles``).
TRUTH_TILES_SCHEMA = pa.schema(
    [("slide_id", pa.string()), ("tile_id", pa.int32()), ("gene", pa.string()), ("driver_frac", pa.float32())]
)


# ---- layouts -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLayout:
    """Where each file of a run directory lives.

    Examples
    --------
    >>> run = RunLayout("RUN")
    >>> run.metrics.as_posix(), run.model("mil", 2).as_posix()
    ('RUN/metrics.parquet', 'RUN/models/mil/fold2.joblib')
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_JSON

    @property
    def folds(self) -> Path:
        return self.root / FOLDS_FILE

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def comparisons(self) -> Path:
        return self.root / COMPARISONS_FILE

    @property
    def attention(self) -> Path:
        return self.root / ATTENTION_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def explain(self) -> Path:
        return self.root / EXPLAIN_DIR

    @property
    def localisation(self) -> Path:
        return self.root / LOCALISATION_FILE

    @property
    def truth_tiles(self) -> Path:
        return self.root / TRUTH_TILES_FILE

    def table(self, name: str) -> Path:
        """``RUN/<name>.parquet``, e.g. ``table("metrics")``."""
        return self.root / f"{name}.parquet"

    def model(self, model: str, fold: int) -> Path:
        """``models/<model>/fold<k>.joblib``: the estimator of ``model`` fitted without fold ``fold``."""
        return self.root / MODELS_DIR / model / f"fold{int(fold)}.joblib"

    def fold_models(self, model: str) -> dict[int, Path]:
        """The saved fold models of ``model``, by fold (empty when none were saved)."""
        folder = self.root / MODELS_DIR / model
        found = {}
        for p in sorted(folder.glob("fold*.joblib")):
            m = _FOLD_MODEL.fullmatch(p.name)
            if m is not None:
                found[int(m.group(1))] = p
        return dict(sorted(found.items()))

    @property
    def partial(self) -> Path:
        """``partial/``: a running compare's finished model × fold outputs (:data:`PARTIAL_DIR`)."""
        return self.root / PARTIAL_DIR

    @property
    def partial_settings(self) -> Path:
        """``partial/settings.json``: the settings and their fingerprint, which a resumed compare must match."""
        return self.partial / PARTIAL_SETTINGS

    @property
    def partial_projected(self) -> Path:
        """``partial/projected/``: the folds' projected bags of a cohort read on access (:data:`PARTIAL_PROJECTED`)."""
        return self.partial / PARTIAL_PROJECTED

    def partial_fold(self, model: str, fold: int, part: str = "predictions") -> Path:
        """``partial/<model>/fold<k>.<part>.parquet``: ``predictions`` (written last: the fit is done) or
        ``attention`` of one finished model × fold."""
        return self.partial / model / f"fold{int(fold)}.{part}.parquet"


@dataclass(frozen=True)
class ModelLayout:
    """Where each file of a model directory (``train``'s output) lives."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_JSON

    def exists(self) -> bool:
        return self.model.is_file() and self.config.is_file()


@dataclass(frozen=True)
class PredictionLayout:
    """Where each file of a prediction directory (``predict``'s output) lives.

    Examples
    --------
    >>> pred = PredictionLayout("PRED")
    >>> pred.attention.as_posix(), pred.explain.as_posix()
    ('PRED/attention.parquet', 'PRED/explain')
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_JSON

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS_FILE

    @property
    def attention(self) -> Path:
        return self.root / ATTENTION_FILE

    @property
    def explain(self) -> Path:
        return self.root / EXPLAIN_DIR

    @property
    def localisation(self) -> Path:
        return self.root / LOCALISATION_FILE

    @property
    def truth_tiles(self) -> Path:
        return self.root / TRUTH_TILES_FILE

    def exists(self) -> bool:
        """Whether ``root`` is a prediction directory: its ``config.json`` says kind ``"predictions"``."""
        return is_prediction_config(_read_config(self.config))


def is_prediction_config(config) -> bool:
    """Whether a ``config.json`` (as a dict) is that of a prediction directory.

    >>> is_prediction_config({"kind": "predictions"}), is_prediction_config({"n_folds": 5})
    (True, False)
    """
    return isinstance(config, dict) and config.get("kind") == PREDICTION_KIND


def _read_config(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- replacing an output folder ------------------------------------------------------------------------------


class OutputExistsError(ValueError):
    """An output folder that is not empty: pass ``overwrite=True`` (``--overwrite``) or choose another folder."""


def _is_temporary(name: str) -> bool:
    # the atomic writers' hidden temporary files (`.<name>.<hex>.tmp`) left by an interrupted run
    return name.startswith(".") and name.endswith(".tmp")


def describe_output(root: str | os.PathLike) -> str:
    """What ``root`` holds, in words: ``"a compare run"`` (…), ``"a prediction directory"`` (…), ``"a model written
    by train"`` or ``"files"``."""
    root = Path(root)
    if ModelLayout(root).model.exists():
        return "a model written by train"
    config = _read_config(RunLayout(root).config)
    if is_prediction_config(config):
        return "a prediction directory" + (" with explain output" if RunLayout(root).explain.exists() else "")
    if isinstance(config, dict) and "n_folds" in config:
        return "a compare run" + (" with explain output" if RunLayout(root).explain.exists() else "")
    return "files"


def check_output_dir(out: str | os.PathLike, *, overwrite: bool, option: str = "out") -> Path:
    """Raise :class:`OutputExistsError` unless ``out`` may be written: absent, empty, or replaceable.

    A non-empty folder is refused unless ``overwrite``; with ``overwrite``, one that holds anything slide2expr did
    not write (see :data:`KNOWN_OUTPUTS`) is refused too, naming those entries, so nothing of the user's is deleted.
    ``option`` names the argument in the messages.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{option} {root} is a file, not a folder: choose another {option}")
    if not root.is_dir():
        return root
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return root
    if not overwrite:
        raise OutputExistsError(
            f"{option} {root} is not empty (it holds {describe_output(root)}): choose another {option}, or replace "
            "its contents with overwrite (--overwrite)"
        )
    foreign = [n for n in entries if n not in KNOWN_OUTPUTS and not _is_temporary(n)]
    if foreign:
        shown = ", ".join(foreign[:10]) + (" …" if len(foreign) > 10 else "")
        raise OutputExistsError(
            f"{option} {root} holds entries that slide2expr did not write ({shown}): not replacing it even with "
            f"overwrite (--overwrite); choose another {option}, or move those away"
        )
    return root


def prepare_output_dir(out: str | os.PathLike, *, overwrite: bool, option: str = "out") -> Path:
    """Check ``out`` (:func:`check_output_dir`), delete its previous slide2expr outputs, and create it.

    Returns the folder, empty. With ``overwrite``, everything of an earlier run or model directory goes (fold
    models, ``explain/``, the report), so nothing stale is left beside the new outputs.
    """
    root = check_output_dir(out, overwrite=overwrite, option=option)
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root
