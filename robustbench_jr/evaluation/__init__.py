"""The audit: plan (models, samples, searches, identity), execute (batches, store, resume),
the resumable result store and the metric registry."""

from .audit import ALL_SEARCHES, AuditConfig, AuditResult, ModelResult, audit, batch_key, json_document, run_audit
from .execute import execute, summarize_run
from .metrics import error_at, error_curve, order_violations, rho_adv, summarize
from .plan import AuditPlan, plan_audit
from .store import DB_NAME, RESULT_COLUMNS, ResultStore

__all__ = [
    "ALL_SEARCHES", "AuditConfig", "AuditPlan", "AuditResult", "DB_NAME", "ModelResult", "RESULT_COLUMNS",
    "ResultStore", "audit", "batch_key", "error_at", "error_curve", "execute", "json_document",
    "order_violations", "plan_audit", "rho_adv", "run_audit", "summarize", "summarize_run",
]
