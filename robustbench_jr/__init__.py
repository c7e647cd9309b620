"""robustbench-jr: fooling-distance audits and Jacobian regularization for image classifiers.

The public API (three lines for an audit of any pixel-space ``nn.Module``)::

    import robustbench_jr
    result = robustbench_jr.audit(model, x, y, searches="all", seed=0)
    result.summary(); result.curve("cw")

* :func:`audit` / :func:`run_audit` — in-memory models and tensors / checkpoint specs;
* :func:`load_model` — any checkpoint form ``jr-eval`` accepts, as a pixel-space model;
* :func:`train` / :func:`finetune` — Jacobian-regularized training and post-processing;
* :func:`build_search` — one fooling-distance search, ``search.run(model, x, y, seed)``.
"""

from ._version import __version__

from .attacks import SEARCHES, build_search  # noqa: E402
from .errors import JRError  # noqa: E402
from .evaluation import AuditConfig, AuditResult, ResultStore, audit, run_audit, summarize_run  # noqa: E402
from .models import PixelSpaceModel, load_model  # noqa: E402
from .runtime import Event, derive_seed, resolve_device  # noqa: E402
from .training import TrainConfig, finetune, train  # noqa: E402

__all__ = [
    "AuditConfig", "AuditResult", "Event", "JRError", "PixelSpaceModel", "ResultStore", "SEARCHES", "TrainConfig",
    "__version__", "audit", "build_search", "derive_seed", "finetune", "load_model", "resolve_device", "run_audit",
    "summarize_run", "train",
]
