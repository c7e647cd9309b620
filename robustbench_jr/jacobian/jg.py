"""The input-gradient regularizers Jakubovitz & Giryes (2018, §2 eqs. 5–6; §4) compare against.

Both are written by JG as sums over the N training samples next to a summed
cross-entropy; dividing both by N gives the per-sample means used here next to the
batch-mean cross-entropy, with the same λ. ``loss = λ · value``.
"""

from __future__ import annotations

from .base import Regularizer, register
from .core import _sq_norm, jacobian_sq_norms_and_row_sum
from .varga import DataGrad


@register
class InputGradient(DataGrad):
    """Input gradient regularization (Ross & Doshi-Velez 2018; JG eq. 5):
    value = mean_α ‖∂/∂x_α Σ_k −y_αk log softmax(z_α)_k‖² = mean_α ‖∂L_CE(x_α, y_α)/∂x_α‖²;
    loss = λ · value. Numerically identical to ``datagrad`` (double backpropagation);
    registered under JG's name for their comparison."""

    name = "input-grad"
    description = "input gradient regularization of the cross-entropy (Ross & Doshi-Velez; JG eq. 5)"


@register
class CrossLipschitz(Regularizer):
    """Cross-Lipschitz regularization (Hein & Andriushchenko 2017; JG eq. 6):
    value = mean_α Σ_{k,l=1..C} ‖∇_x z_k(x_α) − ∇_x z_l(x_α)‖²  (ordered pairs, no 1/C² factor);
    loss = λ · value.

    Computed without the C² pairs through Σ_{k,l}‖g_k − g_l‖² = 2C Σ_k‖g_k‖² − 2‖Σ_k g_k‖²:
    the exact ‖J‖²_F and the row sum Σ_k g_k from the same C backward passes (or one batched
    pass), no further pass. Clamped at 0 against round-off.
    """

    name = "cross-lipschitz"
    description = "Cross-Lipschitz: Σ_{k,l} ‖∇z_k − ∇z_l‖² per sample (Hein & Andriushchenko; JG eq. 6)"
    options = {"space": "pixel", "method": "auto"}

    def per_sample(self, model, x, y, logits, generator):
        classes = logits.shape[1]
        scale = self.input_scale(model)
        sq, row_sum = jacobian_sq_norms_and_row_sum(x, logits, scale, create_graph=True, method=self.opts["method"])
        return (2 * classes * sq - 2 * _sq_norm(row_sum)).clamp_min(0)
