"""Gradient regularizers compared by Varga, Csiszárik & Zombori (2018), §5.1–5.2.

Notation (Varga §5): logits z = g(x) ∈ R^C, probabilities p = f(x) = softmax(z),
J_g = ∂z/∂x, J_f = ∂p/∂x, y the label (one-hot when written as a vector), L the
per-sample cross-entropy. Every term below is per sample, averaged over the batch
(``value``); the penalty added to the batch-mean cross-entropy is ``loss = λ · value``
(Varga's L + λR — no ½, unlike Hoffman's λ/2). Gradients are taken w.r.t. the input
the logits came from (the [0, 1] pixel space); ``space='normalized'`` multiplies them
by the model's std first. Random draws come from the explicit ``generator`` and have
the logits' dtype and device.

==============  ==============================================  =========================
name            per-sample value                                 relation to ‖J_g‖²_F
==============  ==============================================  =========================
datagrad        ‖∂L/∂x‖² = ‖J_gᵀ(p − y)‖²  (Claim 2)              projection on p − y
spectreg        (1/n) Σ_μ ‖∂(r_μ·z)/∂x‖²,  r_μ ~ N(0, I_C)        unbiased (Claim 1)
frobreg         ‖J_g‖²_F  (exact)                                 equal
jacreg          ‖J_f‖²_F  (exact, softmax probabilities)          —
onehot          ‖∂z_y/∂x‖²                                        true-class row only
randomonehot    (C/n) Σ_μ ‖∂z_{k_μ}/∂x‖²,  k_μ ~ U{0..C−1}        unbiased (Claim 1)
==============  ==============================================  =========================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import Regularizer, register
from .core import _randint, _randn, _sq_norm, input_gradient, jacobian_sq_norms


def class_indices(y: torch.Tensor, logits: torch.Tensor, who: str) -> torch.Tensor:
    """Check that ``y`` holds one class index per sample, in range; return it as long on the logits' device."""
    batch, classes = logits.shape
    if y is None or y.dim() != 1 or y.shape[0] != batch or y.is_floating_point() or y.is_complex():
        raise InputError(f"regularizer {who!r} needs y as a [B] tensor of class indices (B = {batch}), "
                         f"got {None if y is None else (tuple(y.shape), str(y.dtype))}")
    y = y.to(device=logits.device, dtype=torch.long)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(f"regularizer {who!r}: labels must lie in [0, {classes}), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


@register
class DataGrad(Regularizer):
    """Double backpropagation / DataGrad (Drucker & LeCun 1991; Varga §5.1 and Fig. 1).

    value = mean_α ‖∂L(x_α, y_α)/∂x_α‖², L the per-sample cross-entropy of the logits;
    loss = λ · value. By Varga Claim 2 (§5.2) this equals mean_α ‖J_g(x_α)ᵀ(softmax(z_α) − y_α)‖².
    ``y`` may be class indices [B] or class probabilities [B, C] (as ``F.cross_entropy``).
    """

    name = "datagrad"
    description = "DataGrad / double backprop: ‖∂CE/∂x‖² per sample (Varga et al. §5.1)"
    options = {"space": "pixel"}

    def per_sample(self, model, x, y, logits, generator):
        if y is None:
            raise InputError(f"regularizer {self.name!r} needs the labels y")
        ce = F.cross_entropy(logits, y.to(logits.device), reduction="sum")
        # the sum's gradient w.r.t. x_α is ∂L_α/∂x_α: samples do not interact (eval mode / no batch norm)
        (g,) = torch.autograd.grad(ce, x, create_graph=True)
        scale = self.input_scale(model)
        return _sq_norm(g if scale is None else g * scale)


@register
class SpectReg(Regularizer):
    """Spectral regularization (Varga §3, §5.1; Fig. 1): a Gaussian random projection of the
    logit Jacobian.

    value = mean_α (1/n_proj) Σ_μ ‖∂(r_μα · z_α)/∂x_α‖² = ‖J_gᵀ r‖², r ~ N(0, I_C), an unbiased
    estimate of mean_α ‖J_g(x_α)‖²_F (Claim 1); loss = λ · value. One backward pass per projection.
    ``shared=True`` draws one r per batch (as Varga's Fig. 1 code does), else one per sample.
    Varga §5.1 also writes the projection as J_gᵀ r/√C; that constant 1/C is absorbed in λ
    and not applied here (the §3 definition and the Fig. 1 code have no such factor).
    """

    name = "spectreg"
    description = "SpectReg: ‖∂(r·z)/∂x‖², r ~ N(0, I) (Varga et al. §5.1)"
    options = {"n_proj": 1, "space": "pixel", "shared": False}  # shared: a bool, checked by its default's type

    def per_sample(self, model, x, y, logits, generator):
        batch, classes = logits.shape
        n, scale = self.opts["n_proj"], self.input_scale(model)
        total = logits.new_zeros(batch)
        for _ in range(n):
            r = _randn((1 if self.opts["shared"] else batch, classes), generator, logits).expand(batch, classes)
            total = total + _sq_norm(input_gradient(x, logits, r, scale)) / n
        return total


@register
class FrobReg(Regularizer):
    """Frobenius regularizer (Varga §5.1): value = mean_α ‖J_g(x_α)‖²_F computed exactly
    (C backward passes or one batched pass); loss = λ · value.

    Same quantity as ``jr-exact`` (form='hoffman'), which weights it λ/2 as Hoffman eq. (5);
    ``frobreg`` weights it λ as Varga do, so frobreg(λ) ≡ jr-exact(2λ). The random-projection
    estimates of the same quantity are ``jr`` (unit sphere, Hoffman) and ``spectreg`` (Gaussian).
    """

    name = "frobreg"
    description = "FrobReg: exact ‖∂z/∂x‖²_F of the logits (Varga et al. §5.1)"
    options = {"space": "pixel", "method": "auto"}

    def per_sample(self, model, x, y, logits, generator):
        return jacobian_sq_norms(x, logits, self.input_scale(model), create_graph=True, method=self.opts["method"])


@register
class JacReg(Regularizer):
    """Jacobian regularizer of Sokolić et al. as used by Varga §5.1: the squared Frobenius
    norm of the Jacobian of the softmax probabilities, computed exactly.

    value = mean_α ‖J_f(x_α)‖²_F with J_f = ∂softmax(z)/∂x = (diag p − p pᵀ) J_g; loss = λ · value.
    """

    name = "jacreg"
    description = "JacReg: exact ‖∂softmax(z)/∂x‖²_F (Varga et al. §5.1, Sokolić et al.)"
    options = {"space": "pixel", "method": "auto"}

    def per_sample(self, model, x, y, logits, generator):
        probs = torch.softmax(logits, dim=1)
        return jacobian_sq_norms(x, probs, self.input_scale(model), create_graph=True, method=self.opts["method"])


@register
class OneHot(Regularizer):
    """True-label one-hot projection (Varga §5.1): value = mean_α ‖J_g(x_α)ᵀ y_α‖² =
    mean_α ‖∂z_{y_α}/∂x_α‖², the gradient of the true class's logit; loss = λ · value."""

    name = "onehot"
    description = "OneHot: ‖∂z_y/∂x‖², the true-class logit gradient (Varga et al. §5.1)"
    options = {"space": "pixel"}

    def per_sample(self, model, x, y, logits, generator):
        y = class_indices(y, logits, self.name)
        w = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return _sq_norm(input_gradient(x, logits, w, self.input_scale(model)))


@register
class RandomOneHot(Regularizer):
    """Random one-hot projection (Varga §5.1): value = mean_α (1/n_proj) Σ_μ ‖√C J_g(x_α)ᵀ e_k‖²
    = mean_α (C/n_proj) Σ_μ ‖∂z_k/∂x_α‖², k = k_μα uniform on the C classes (drawn from the
    generator per sample and projection). The √C makes the covariance of √C·e_k the identity,
    so the estimate is unbiased for mean_α ‖J_g(x_α)‖²_F (Claim 1). loss = λ · value."""

    name = "randomonehot"
    description = "RandomOneHot: C‖∂z_k/∂x‖², k a uniformly random class (Varga et al. §5.1)"
    options = {"n_proj": 1, "space": "pixel"}

    def per_sample(self, model, x, y, logits, generator):
        batch, classes = logits.shape
        n, scale = self.opts["n_proj"], self.input_scale(model)
        total = logits.new_zeros(batch)
        for _ in range(n):
            k = _randint(classes, (batch,), generator, logits)
            w = F.one_hot(k, classes).to(logits.dtype)
            total = total + classes * _sq_norm(input_gradient(x, logits, w, scale)) / n
        return total
