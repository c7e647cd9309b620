"""Cyclopropagation (Hoffman et al. 2019, Appendix C): closed-form gradients of the
Jacobian regularizer of a tanh multilayer perceptron, without double backpropagation.

The MLP is an ``nn.Sequential`` of ``nn.Linear`` layers, each optionally followed by
``nn.Tanh`` (an optional leading ``nn.Flatten`` and ``nn.Identity`` modules are
allowed). Layer ℓ = 1..L computes ẑ^(ℓ) = W^(ℓ) z^(ℓ−1) + b^(ℓ), z^(ℓ) = σ_ℓ(ẑ^(ℓ))
(eqs. 17–19) with σ_ℓ = tanh, or the identity for a Linear with no Tanh after it —
typically the logit layer (σ' = 1, σ'' = 0). With the layer Jacobians
J^(ℓ) = diag σ'(ẑ^(ℓ)) W^(ℓ) (eq. 20) and J = J^(L)···J^(1) (eq. 21), per sample

    R_JR = ½ ‖J‖²_F                                                 (eq. 22)
    Ω^(ℓ) = [J^(ℓ−1)···J^(1) · Jᵀ · J^(L)···J^(ℓ+1)]                 (eq. 28, shape n_{ℓ−1} × n_ℓ)
    B̃^(ℓ)_j = ∂R/∂b^(ℓ)_j = [B̃^(ℓ+1) W^(ℓ+1)]_j σ'(ẑ^(ℓ)_j) + σ''(ẑ^(ℓ)_j) Σ_i W^(ℓ)_{j,i} Ω^(ℓ)_{i,j}
                                                                     (eqs. 25, 29; B̃^(L+1) = 0, eq. 27)
    ∂R/∂W^(ℓ)_{j,i} = B̃^(ℓ)_j z^(ℓ−1)_i + σ'(ẑ^(ℓ)_j) Ω^(ℓ)_{i,j}      (eqs. 26, 30)

iterated for ℓ = L, …, 1. (Eq. 29's B̃^(ℓ+1)J^(ℓ+1)/σ'(ẑ^(ℓ+1)) is written here as
B̃^(ℓ+1)W^(ℓ+1), which is the same and needs no division by σ'.)

Batch reduction: the returned value and gradients are those of the batch **mean**
½ · (1/|B|) Σ_α ‖J(x_α)‖²_F — the term Hoffman eq. (5) multiplies by λ_JR — or of the
sum with ``reduction='sum'``. Gradients are w.r.t. the MLP's own input (no input scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class CycloResult:
    #: ½ ‖J‖²_F reduced over the batch (mean or sum), detached
    value: torch.Tensor
    #: parameter name (as in ``mlp.named_parameters()``) → ∂value/∂parameter
    grads: dict


def _parse_mlp(mlp: nn.Sequential):
    """[(name_prefix, Linear, is_tanh)] for the layers of ``mlp``; ConfigError on anything else."""
    if not isinstance(mlp, nn.Sequential):
        raise ConfigError(f"cyclopropagation needs an nn.Sequential of Linear/Tanh layers, got {type(mlp).__name__}")
    layers, items = [], list(mlp.named_children())
    for pos, (name, mod) in enumerate(items):
        if isinstance(mod, nn.Identity) or (isinstance(mod, nn.Flatten) and not layers):
            continue
        if isinstance(mod, nn.Linear):
            layers.append([name, mod, False])
        elif isinstance(mod, nn.Tanh) and layers and not layers[-1][2]:
            layers[-1][2] = True
        else:
            raise ConfigError(
                f"cyclopropagation supports an nn.Sequential of nn.Linear layers each optionally followed by "
                f"one nn.Tanh (and a leading nn.Flatten); module {name!r} ({type(mod).__name__}) at position "
                f"{pos} does not fit")
    if not layers:
        raise ConfigError("cyclopropagation: the nn.Sequential has no nn.Linear layer")
    return layers


def cyclopropagation(mlp: nn.Sequential, x: torch.Tensor, reduction: str = "mean") -> CycloResult:
    """Closed-form R_JR = ½‖J‖²_F of a tanh MLP and its gradients w.r.t. every weight and bias
    (Hoffman et al. App. C, eqs. 25–30); see the module docstring. ``x``: [B, I] (or
    [B, ...] with a leading Flatten). Cost: per sample O(Σ_ℓ n_{ℓ−1} n_ℓ (I + C)) —
    one sweep of Jacobian products up and one down, no autograd."""
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"cyclopropagation: reduction must be 'mean' or 'sum', got {reduction!r}")
    layers = _parse_mlp(mlp)
    with torch.no_grad():
        z = x.flatten(1)
        batch = z.shape[0]
        Ws, zs_in, d1, d2 = [], [], [], []  # W^(ℓ), z^(ℓ−1), σ'(ẑ^(ℓ)), σ''(ẑ^(ℓ))
        for _, lin, is_tanh in layers:
            W = lin.weight
            zhat = z @ W.T + (lin.bias if lin.bias is not None else 0)
            if is_tanh:
                t = torch.tanh(zhat)
                s1 = 1 - t * t
                s2 = -2 * t * s1
            else:
                t, s1, s2 = zhat, torch.ones_like(zhat), torch.zeros_like(zhat)
            Ws.append(W)
            zs_in.append(z)
            d1.append(s1)
            d2.append(s2)
            z = t
        L = len(layers)
        # lower products P_ℓ = J^(ℓ−1)···J^(1) ([B, n_{ℓ−1}, I]; P_1 = I, kept implicit)
        lower = [None]
        for ell in range(1, L):
            Jl = d1[ell - 1].unsqueeze(2) * Ws[ell - 1]  # J^(ℓ) for ℓ = ell (0-based ell−1)
            lower.append(Jl if lower[-1] is None else Jl @ lower[-1])
        J_last = d1[L - 1].unsqueeze(2) * Ws[L - 1]
        J = J_last if lower[-1] is None else J_last @ lower[-1]  # [B, C, I]
        value_per = 0.5 * J.pow(2).sum((1, 2))
        w = (1.0 / batch) if reduction == "mean" else 1.0

        grads = {}
        upper = None  # A_ℓ = J^(L)···J^(ℓ+1) as [B, C, n_ℓ]; A_L = I (implicit)
        Bnext = None  # B̃^(ℓ+1)
        for ell in range(L - 1, -1, -1):  # 0-based layer index; paper's ℓ = ell + 1
            W = Ws[ell]
            PJt = J.transpose(1, 2) if lower[ell] is None else lower[ell] @ J.transpose(1, 2)  # [B, n_{ℓ−1}, C]
            omega = PJt if upper is None else PJt @ upper  # [B, n_{ℓ−1}, n_ℓ]
            explicit = d2[ell] * torch.einsum("ji,bij->bj", W, omega)
            Bt = explicit if Bnext is None else (Bnext @ Ws[ell + 1]) * d1[ell] + explicit
            gW = torch.einsum("bj,bi->ji", Bt, zs_in[ell]) + torch.einsum("bj,bij->ji", d1[ell], omega)
            name, lin, _ = layers[ell]
            grads[f"{name}.weight"] = w * gW
            if lin.bias is not None:
                grads[f"{name}.bias"] = w * Bt.sum(0)
            Jl = d1[ell].unsqueeze(2) * W
            upper = Jl if upper is None else upper @ Jl
            Bnext = Bt
        value = value_per.mean() if reduction == "mean" else value_per.sum()
    return CycloResult(value=value, grads=grads)
