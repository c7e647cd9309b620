"""The audit: searches over a dataset, resumable result store."""

from .store import DB_NAME, RESULT_COLUMNS, ResultStore

__all__ = ["DB_NAME", "RESULT_COLUMNS", "ResultStore"]
