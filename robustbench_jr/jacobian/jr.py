"""Jacobian regularization: Hoffman et al. (2019) random projection and the exact norm."""

from __future__ import annotations

import warnings
import weakref

from ..config import Spec
from .base import RegOutput, Regularizer, register
from .core import (
    FD_STEP, JR_ESTIMATORS, Replay, jacobian_sq_norms, jr_fd_per_sample, jr_jvp_per_sample,
    jr_projection_per_sample, resolve_estimator,
)


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
    λ/2 · mean_α ‖J(x_α)‖²_F (eqs. 5, 7, 8).

    ``estimator`` picks how ‖J(x_α)‖²_F is estimated (the module docstring of
    :mod:`robustbench_jr.jacobian.core` gives each one's variance or bias):
    ``vjp`` is Algorithm 1 itself; ``jvp`` a forward-mode Rademacher probe in input space,
    also unbiased; ``fd`` the finite difference ‖f(x + h·u) − f(x)‖²/h² with h = ``fd_step``
    (biased, see there); ``auto`` (default) runs, in a training step
    (:meth:`penalized_forward`), the one measured fastest for the device type and n_proj
    (:data:`~robustbench_jr.jacobian.core.AUTO_ESTIMATOR`: ``jvp`` on CPU with n_proj = 1,
    Algorithm 1 otherwise), and Algorithm 1 when the logits are given (``reg(model, x, y, logits)``).
    ``jvp`` and ``fd`` given logits run their own forward pass(es) and do not use them.
    If ``auto`` picks ``jvp`` and the model has an operator without a forward-mode formula,
    the step is redone with Algorithm 1 (with a warning), and so are later steps of that model.
    """

    name = "jr"
    description = "Jacobian regularization by random projection (Hoffman et al. Alg. 1)"
    options = {"n_proj": 1, "space": "pixel", "estimator": "auto", "fd_step": FD_STEP}
    option_specs = {**Regularizer.option_specs, "estimator": Spec(choices=JR_ESTIMATORS), "fd_step": Spec(gt=0)}

    def __init__(self, lam: float = 0.0, **opts):
        super().__init__(lam, **opts)
        # given logits, only Algorithm 1 differentiates through them (and needs x.requires_grad)
        self.needs_input_grad = self.opts["estimator"] in ("auto", "vjp")
        #: model → whether its forward-mode pass works (learnt on its first 'auto' step)
        self._forward_mode_ok: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def weight(self, value):
        return 0.5 * self.lam * value

    def _own_forward(self, estimator, model, x, generator):
        n, scale = self.opts["n_proj"], self.input_scale(model)
        if estimator == "jvp":
            return jr_jvp_per_sample(model, x, n, generator, scale)
        return jr_fd_per_sample(model, x, n, generator, scale, float(self.opts["fd_step"]))

    def per_sample(self, model, x, y, logits, generator):
        estimator = self.opts["estimator"]
        if estimator in ("auto", "vjp"):
            return jr_projection_per_sample(x, logits, self.opts["n_proj"], generator, self.input_scale(model))
        return self._own_forward(estimator, model, x, generator)[1]

    def penalized_forward(self, model, x, y, generator=None):
        estimator = resolve_estimator(self.opts["estimator"], x.device, self.opts["n_proj"])
        if estimator == "jvp" and self.opts["estimator"] == "auto":
            ok = self._forward_mode_ok.get(model)
            if ok is False:
                estimator = "vjp"
            elif ok is None:  # first step of this model: be ready to undo a failed forward-mode pass
                undo = Replay(model, x.device, buffers=True)
                gen_state = generator.get_state() if generator is not None else None
                try:
                    logits, per = self._own_forward("jvp", model, x, generator)
                    self._forward_mode_ok[model] = True
                except NotImplementedError as exc:
                    undo.rewind()
                    if generator is not None:
                        generator.set_state(gen_state)
                    self._forward_mode_ok[model] = False
                    warnings.warn(f"regularizer 'jr': the model has no forward-mode derivative ({exc}); "
                                  f"estimator 'auto' uses Algorithm 1 (estimator 'vjp') for it instead",
                                  stacklevel=2)
                    estimator = "vjp"
                else:
                    value = per.mean()
                    return logits, RegOutput(loss=self.weight(value), value=value.detach())
        if estimator == "vjp":
            return Regularizer.penalized_forward(self, model, x, y, generator)
        logits, per = self._own_forward(estimator, model, x, generator)
        value = per.mean()
        return logits, RegOutput(loss=self.weight(value), value=value.detach())


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
