"""Jacobian of the logits w.r.t. the input: Hoffman et al. Algorithm 1 and the exact norm.

Everything here works in the space of the tensor ``x`` the logits were computed
from (the [0, 1] pixel space for a :class:`PixelSpaceModel`). ``input_scale``
(a tensor broadcastable to ``x``, e.g. the model's per-channel std) turns the
pixel-space Jacobian into the normalised-input Jacobian, J_norm = J_pixel · std,
which is the space Hoffman et al. report ‖J‖_F in.
"""

from __future__ import annotations

from typing import Optional

import torch


def unit_directions(batch: int, classes: int, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Per-sample directions uniform on the unit sphere S^{C−1}: a [B, C] tensor on
    ``like``'s device and dtype, drawn from ``generator``."""
    v = torch.randn(batch, classes, generator=generator, device=like.device, dtype=like.dtype)
    return v / v.norm(dim=1, keepdim=True)


def _scaled(g: torch.Tensor, input_scale: Optional[torch.Tensor]) -> torch.Tensor:
    return g if input_scale is None else g * input_scale


def jr_projection_estimate(
    x: torch.Tensor,
    logits: torch.Tensor,
    n_proj: int = 1,
    generator: Optional[torch.Generator] = None,
    input_scale: Optional[torch.Tensor] = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """Hoffman et al. Algorithm 1: the random-projection estimate of the batch mean of
    ‖J(x_α)‖²_F.

    For each of ``n_proj`` projections a direction v̂_α uniform on the unit sphere is
    drawn per sample, Jv = ∂(z·v̂)/∂x by one backward pass, and
    J_F += C‖Jv‖² / (n_proj |B|). The estimate is unbiased: E[C (v̂ᵀJ)(Jᵀv̂)] = ‖J‖²_F.
    ``logits`` must have been computed from ``x`` with ``x.requires_grad``.
    """
    batch, classes = logits.shape
    total = logits.new_zeros(())
    for i in range(n_proj):
        v = unit_directions(batch, classes, generator, logits)
        (jv,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=create_graph,
                                    retain_graph=create_graph or i < n_proj - 1)
        total = total + classes * _scaled(jv, input_scale).pow(2).sum() / (n_proj * batch)
    return total


def jacobian_rows(
    x: torch.Tensor, logits: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """The full per-sample Jacobian ∂z_c/∂x as a [B, C, *x.shape[1:]] tensor (C backward passes).

    Valid because sample α's logits depend only on x_α (true in eval mode; in train
    mode with batch norm the cross-sample terms are ignored, as in Hoffman et al.).
    """
    rows = []
    classes = logits.shape[1]
    for c in range(classes):
        (g,) = torch.autograd.grad(logits[:, c].sum(), x, create_graph=create_graph,
                                   retain_graph=create_graph or c < classes - 1)
        rows.append(g)
    return torch.stack(rows, dim=1)


def jacobian_sq_norms(
    x: torch.Tensor, logits: torch.Tensor, input_scale: Optional[torch.Tensor] = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Per-sample exact ‖J(x_α)‖²_F, a [B] tensor (C backward passes)."""
    batch, classes = logits.shape
    total = logits.new_zeros(batch)
    for c in range(classes):
        (g,) = torch.autograd.grad(logits[:, c].sum(), x, create_graph=create_graph,
                                   retain_graph=create_graph or c < classes - 1)
        total = total + _scaled(g, input_scale).pow(2).flatten(1).sum(1)
    return total




def mean_jacobian_norm(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 500,
    input_scale: Optional[torch.Tensor] = None,
    device: Optional[torch.device | str] = None,
    return_per_sample: bool = False,
):
    """Mean over ``images`` of the exact ‖J(x)‖_F (not squared), in eval mode, no graph kept.

    ``images`` are model inputs (pixel space for a PixelSpaceModel); uint8 images are
    scaled to [0, 1]. With ``return_per_sample`` also returns the [N] tensor of norms.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = device or (param.device if param is not None else "cpu")
    dtype = param.dtype if param is not None else torch.float32
    norms = []
    try:
        for start in range(0, len(images), batch_size):
            xb = images[start:start + batch_size].to(device)
            xb = (xb.to(dtype) / 255.0) if xb.dtype == torch.uint8 else xb.to(dtype)
            xb = xb.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                sq = jacobian_sq_norms(xb, logits, input_scale)
            norms.append(sq.detach().sqrt().cpu())
    finally:
        model.train(was_training)
    per = torch.cat(norms) if norms else torch.zeros(0)
    mean = float(per.double().mean()) if len(per) else float("nan")
    return (mean, per) if return_per_sample else mean
