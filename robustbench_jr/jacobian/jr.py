"""Jacobian regularization: Hoffman et al. (2019) random projection and the exact norm."""

from __future__ import annotations

from ..config import Spec
from .base import Regularizer, register
from .core import jacobian_sq_norms, jr_projection_per_sample


@register
class NoRegularizer(Regularizer):
    name = "none"
    description = "no input-gradient regularization"
    needs_input_grad = False

    def per_sample(self, model, x, y, logits, generator):
        return logits.new_zeros(logits.shape[0])

    def compute(self, model, x, y, logits, generator):
        return logits.new_zeros(())


@register
class JacobianRandomProjection(Regularizer):
    """Hoffman et al. §2.3, Algorithm 1: penalty λ/2 · (C/(n_proj|B|)) Σ_α Σ_μ ‖v̂_μαᵀ J(x_α)‖²,
    v̂ uniform on S^{C−1} per sample and projection — an unbiased estimate of
    λ/2 · mean_α ‖J(x_α)‖²_F (eqs. 5, 7, 8)."""

    name = "jr"
    description = "Jacobian regularization by random projection (Hoffman et al. Alg. 1)"
    options = {"n_proj": 1, "space": "pixel"}

    def weight(self, value):
        return 0.5 * self.lam * value

    def per_sample(self, model, x, y, logits, generator):
        return jr_projection_per_sample(x, logits, self.opts["n_proj"], generator, self.input_scale(model))


@register
class JacobianExact(Regularizer):
    """Exact Frobenius norm of the logit Jacobian (C backward passes, or one batched pass).

    ``form='hoffman'``: λ/2 · mean_α ‖J(x_α)‖²_F (Hoffman eq. 5, the quantity Algorithm 1 estimates).
    ``form='jg'``: Jakubovitz–Giryes, λ · sqrt(mean_α ‖J(x_α)‖²_F), added to the batch-mean
    cross-entropy. Their eq. (4) adds λ·sqrt(Σ_α‖J‖²) to the *summed* cross-entropy, i.e.
    λ/√B on this quantity per sample; their released code, which produced their numbers,
    adds λ·‖J(x)‖_F of one sample to the *mean* cross-entropy — this RMS form is that scale
    without depending on which sample comes first, so λ = 0.1 (MNIST) means what it did there.
    ``method``: 'auto' | 'batched' | 'loop' (see :mod:`robustbench_jr.jacobian.core`).
    """

    name = "jr-exact"
    description = "exact Jacobian regularization (C backward passes)"
    options = {"space": "pixel", "form": "hoffman", "method": "auto"}
    option_specs = {**Regularizer.option_specs, "form": Spec(choices=("hoffman", "jg"))}

    def weight(self, value):
        return (0.5 if self.opts["form"] == "hoffman" else 1.0) * self.lam * value

    def per_sample(self, model, x, y, logits, generator):
        return jacobian_sq_norms(x, logits, self.input_scale(model), create_graph=True, method=self.opts["method"])

    def compute(self, model, x, y, logits, generator):
        sq = self.per_sample(model, x, y, logits, generator)
        if self.opts["form"] == "hoffman":
            return sq.mean()
        return sq.mean().clamp_min(1e-30).sqrt()
