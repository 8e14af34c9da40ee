"""sql: the store's read side — DuckDB views, named queries, targets and bags."""

from __future__ import annotations

from sql._cohort import Cohort

__all__ = ["Cohort"]
