"""The audit: runs searches over a dataset, resumable result store."""

from .audit import ALL_SEARCHES, AuditConfig, batch_key, run_audit, summarize_run
from .metrics import error_at, error_curve, order_violations, rho_adv, summarize
from .store import DB_NAME, RESULT_COLUMNS, ResultStore

__all__ = [
    "ALL_SEARCHES", "AuditConfig", "DB_NAME", "RESULT_COLUMNS", "ResultStore", "batch_key", "error_at",
    "error_curve", "order_violations", "rho_adv", "run_audit", "summarize", "summarize_run",
]
