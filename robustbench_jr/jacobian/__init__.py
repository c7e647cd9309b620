"""Jacobian and input-gradient regularizers, and the exact ‖J‖_F measurement.

Registered regularizers (``build_regularizer(name, lam, **options)``):
``none``, ``jr``, ``jr-exact`` (Hoffman et al.); ``datagrad``, ``spectreg``, ``frobreg``,
``jacreg``, ``onehot``, ``randomonehot`` (Varga et al.); ``input-grad``,
``cross-lipschitz`` (the comparisons of Jakubovitz–Giryes).
"""

from .base import REGULARIZERS, RegOutput, Regularizer, build_regularizer, register
from .core import (
    JACOBIAN_METHODS, input_gradient, jacobian_rows, jacobian_sq_norms, jr_projection_estimate,
    jr_projection_per_sample, jacobian_channel_sq_norms, mean_jacobian_norm, mean_jacobian_norms,
    unit_directions,
)
from . import jr  # noqa: F401  (registers jr, jr-exact, none)
from . import varga  # noqa: F401  (registers datagrad, spectreg, frobreg, jacreg, onehot, randomonehot)
from . import jg  # noqa: F401  (registers input-grad, cross-lipschitz)
from .cyclo import CycloResult, cyclopropagation

__all__ = [
    "CycloResult", "JACOBIAN_METHODS", "REGULARIZERS", "RegOutput", "Regularizer", "build_regularizer",
    "cyclopropagation", "input_gradient", "jacobian_rows", "jacobian_sq_norms", "jr_projection_estimate",
    "jr_projection_per_sample", "jacobian_channel_sq_norms", "mean_jacobian_norm", "mean_jacobian_norms", "register", "unit_directions",
]
