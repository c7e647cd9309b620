"""Jacobian and input-gradient regularizers, and the exact ‖J‖_F measurement.

Registered regularizers (``build_regularizer(name, lam, **options)``):
``none``, ``jr``, ``jr-exact`` (Hoffman et al.); ``datagrad``, ``spectreg``, ``frobreg``,
``jacreg``, ``onehot``, ``randomonehot`` (Varga et al.); ``input-grad``,
``cross-lipschitz`` (the comparisons of Jakubovitz–Giryes).
"""

from .base import REGULARIZERS, RegOutput, Regularizer, build_regularizer, register
from .core import (
    AUTO_ESTIMATOR, FD_STEP, JACOBIAN_METHODS, JR_ESTIMATORS, Replay, input_gradient, jacobian_rows,
    jacobian_sq_norms, jacobian_sq_norms_and_row_sum, jr_fd_per_sample, jr_jvp_per_sample,
    jr_projection_estimate, jr_projection_per_sample, jacobian_channel_sq_norms, jvp_forward,
    mean_jacobian_norm, mean_jacobian_norms, rademacher, resolve_estimator, unit_directions,
)
from . import jr  # noqa: F401  (registers jr, jr-exact, none)
from . import varga  # noqa: F401  (registers datagrad, spectreg, frobreg, jacreg, onehot, randomonehot)
from . import jg  # noqa: F401  (registers input-grad, cross-lipschitz)
from .cyclo import CycloResult, cyclopropagation

__all__ = [
    "AUTO_ESTIMATOR", "CycloResult", "FD_STEP", "JACOBIAN_METHODS", "JR_ESTIMATORS", "REGULARIZERS", "RegOutput",
    "Regularizer", "Replay", "build_regularizer", "cyclopropagation", "input_gradient", "jacobian_rows",
    "jacobian_sq_norms", "jacobian_sq_norms_and_row_sum", "jr_fd_per_sample", "jr_jvp_per_sample",
    "jr_projection_estimate", "jr_projection_per_sample", "jacobian_channel_sq_norms", "jvp_forward",
    "mean_jacobian_norm", "mean_jacobian_norms", "rademacher", "register", "resolve_estimator", "unit_directions",
]
