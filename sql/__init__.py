"""sql: the store's read side — DuckDB views, named queries, targets and bags.

- :func:`connect` — a DuckDB connection with views ``slides``, ``tiles``, ``embeddings`` (``FLOAT[d]``),
  ``embedding_files``, ``targets`` and, with ``run=``, ``folds``, ``predictions``, ``metrics``, ``attention``,
  ``comparisons`` (the views of ``sql/_views.sql``).
- :func:`list_queries` / :func:`run_query` — the named queries ``sql/<name>.sql`` with bound ``$parameters``;
  :func:`run_sql` for ad-hoc SQL.
- :func:`list_targets` — the targets sets of a store (``slide2expr.regress.import_targets`` writes them).
- :func:`load_cohort` / :func:`iter_cohort` — bags for training as views into one flat ``(N, d)`` array.
- :func:`read_slides` — the slides table; :func:`read_slide`, :func:`read_tiles`, :func:`read_embeddings` — one
  slide's row, tile grid and embeddings; :func:`open_run` — a run directory's config and tables (:class:`Run`).
- :func:`similar_tiles` — the k tiles most similar to a tile (exact, or through the similarity index that
  :func:`build_similarity_index` derives from the store; :func:`open_similarity_index` for many queries).
- :func:`lazy_cohort` — the same bags read on access (a bag, or a uniform sample of its rows, straight from the
  pages), for cohorts larger than memory; :func:`open_cohort` — in memory or read on access by a memory setting
  (``max_memory_gb``, default :func:`default_max_memory_gb`).
- :func:`pooled_features` — every bag's mean/max/min/std per dimension from one streaming pass, cached beside the
  store (fold-independent features for the pooled baselines, whatever the cohort's size).

The same ``.sql`` files run in the plain ``duckdb`` shell (``pip install duckdb-cli``), from the repository root::

    duckdb -c "set variable store = '/path/to/STORE'" -c ".read sql/_views.sql" -c ".read sql/cohort_summary.sql"
    duckdb -c "set variable store = '/path/to/STORE'" -c ".read sql/_views.sql" \
           -c "prepare q as $(cat sql/patient_bag.sql)" \
           -c "execute q(patient_id := 'TCGA-AA-3511', encoder := 'uni')"

(``set variable run = '/path/to/RUN'`` before ``.read`` adds the run views; a quote in a path is doubled.)

>>> from slide2expr import sql
>>> "cohort_summary" in sql.list_queries()
True
"""

from __future__ import annotations

from slide2expr.contract import Cohort
from slide2expr.sql._bags import MissingTargetsWarning, UnpairedSlidesWarning, iter_cohort, load_cohort
from slide2expr.sql._connect import RUN_VIEWS, STORE_VIEWS, connect, sql_text
from slide2expr.sql._lazy import (
    LazyCohort,
    check_max_memory_gb,
    default_max_memory_gb,
    lazy_cohort,
    open_cohort,
)
from slide2expr.sql._pooled import STREAMED_STATS, PooledFeatures, pooled_features
from slide2expr.sql._queries import QueryError, QueryInfo, get_query, list_queries, run_query, run_sql
from slide2expr.sql._read import Run, open_run, read_embeddings, read_slide, read_slides, read_tiles
from slide2expr.sql._similar import (
    BuildReport,
    SimilarityError,
    SimilarityIndex,
    SimilarPlan,
    build_similarity_index,
    open_similarity_index,
    plan_similar,
    similar_tiles,
    similar_to_vector,
)
from slide2expr.sql._targets import list_targets

__all__ = [
    "RUN_VIEWS",
    "STORE_VIEWS",
    "Cohort",
    "MissingTargetsWarning",
    "UnpairedSlidesWarning",
    "QueryError",
    "QueryInfo",
    "Run",
    "connect",
    "get_query",
    "iter_cohort",
    "list_queries",
    "list_targets",
    "load_cohort",
    "open_run",
    "read_embeddings",
    "read_slide",
    "read_slides",
    "read_tiles",
    "run_query",
    "run_sql",
    "sql_text",
    "BuildReport",
    "SimilarityError",
    "SimilarityIndex",
    "SimilarPlan",
    "build_similarity_index",
    "open_similarity_index",
    "plan_similar",
    "similar_tiles",
    "similar_to_vector",
    "STREAMED_STATS",
    "PooledFeatures",
    "pooled_features",
    "LazyCohort",
    "check_max_memory_gb",
    "default_max_memory_gb",
    "open_cohort",
    "lazy_cohort",
]
