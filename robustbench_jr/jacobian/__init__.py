"""Jacobian and input-gradient regularizers, and the exact ‖J‖_F measurement."""

from .base import REGULARIZERS, RegOutput, Regularizer, build_regularizer, register
from .core import (
    jacobian_rows, jacobian_sq_norms, jr_projection_estimate, mean_jacobian_norm, unit_directions,
)
from . import jr  # noqa: F401  (registers jr, jr-exact, none)

__all__ = [
    "REGULARIZERS", "RegOutput", "Regularizer", "build_regularizer", "jacobian_rows",
    "jacobian_sq_norms", "jr_projection_estimate", "mean_jacobian_norm", "register", "unit_directions",
]
