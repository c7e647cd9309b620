"""Jacobian of the logits w.r.t. the input: Hoffman et al. Algorithm 1 and the exact norm.

Everything here works in the space of the tensor ``x`` the logits were computed
from (the [0, 1] pixel space for a :class:`PixelSpaceModel`). ``input_scale``
(a tensor broadcastable to ``x``, e.g. the model's per-channel std) turns the
pixel-space Jacobian into the normalised-input Jacobian, J_norm = J_pixel · std,
which is the space Hoffman et al. report ‖J‖_F in.

Exact Jacobians come in two implementations that give the same numbers:

* ``method='loop'``: C backward passes, one per class (Sokolić et al.; Hoffman et al.
  eq. 6). Memory of one input gradient at a time.
* ``method='batched'``: one vmapped backward pass over the C one-hot cotangents
  (``torch.autograd.grad(..., is_grads_batched=True)``), in chunks of classes so that
  chunk·B·numel(x_α) stays under ``_BATCHED_BUDGET`` elements.
* ``method='auto'`` (default): ``batched`` on CUDA, ``loop`` elsewhere. On CPU the
  batched pass does the same arithmetic in one call and measured no faster (LeNet',
  1 thread: 0.8–1.1× the loop without a graph, 0.55–0.95× with ``create_graph``);
  on GPU it replaces C kernel-launch-bound passes by one. If the batched pass is not
  supported for some operator, ``auto`` falls back to the loop.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError

#: valid values of the ``method`` argument / option
JACOBIAN_METHODS = ("auto", "batched", "loop")
#: batched pass: at most this many input-sized elements (classes × batch × numel(x_α)) per chunk
_BATCHED_BUDGET = 1 << 24


def _randn(shape, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from ``generator`` with ``like``'s dtype, on ``like``'s device.

    Drawn on the generator's own device (so a CPU generator also serves a CUDA model and
    a seed gives the same numbers on every device), then moved.
    """
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _randint(high: int, shape, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Uniform integers in [0, high) from ``generator``, on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randint(0, high, shape, generator=generator, device=device).to(like.device)


def unit_directions(batch: int, classes: int, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Per-sample directions uniform on the unit sphere S^{C−1}: a [B, C] tensor on
    ``like``'s device and dtype, drawn from ``generator``."""
    v = _randn((batch, classes), generator, like)
    return v / v.norm(dim=1, keepdim=True)


def _scaled(g: torch.Tensor, input_scale: Optional[torch.Tensor]) -> torch.Tensor:
    return g if input_scale is None else g * input_scale


def _sq_norm(g: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 norm of a [B, ...] tensor."""
    return g.pow(2).flatten(1).sum(1)


def input_gradient(x: torch.Tensor, outputs: torch.Tensor, grad_outputs: Optional[torch.Tensor] = None,
                   input_scale: Optional[torch.Tensor] = None, create_graph: bool = True,
                   retain_graph: Optional[bool] = None) -> torch.Tensor:
    """∂(grad_outputs · outputs)/∂x, scaled by ``input_scale``: one backward pass.

    With ``grad_outputs`` = w_α per sample this is J(x_α)ᵀ w_α (the projection trick of
    Varga et al. §5.2); sample α's row depends only on x_α when the samples do not
    interact (eval mode, or no batch norm).
    """
    if grad_outputs is None:
        grad_outputs = torch.ones_like(outputs)
    (g,) = torch.autograd.grad(outputs, x, grad_outputs=grad_outputs, create_graph=create_graph,
                               retain_graph=create_graph if retain_graph is None else retain_graph)
    return _scaled(g, input_scale)


def jr_projection_per_sample(
    x: torch.Tensor,
    logits: torch.Tensor,
    n_proj: int = 1,
    generator: Optional[torch.Generator] = None,
    input_scale: Optional[torch.Tensor] = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """Per-sample terms of Hoffman et al. Algorithm 1: a [B] tensor whose α-th entry is
    (C/n_proj) Σ_μ ‖v̂_μαᵀ J(x_α)‖², v̂ uniform on S^{C−1}, an unbiased estimate of
    ‖J(x_α)‖²_F (eq. 7) with variance given by eq. (15) divided by n_proj."""
    batch, classes = logits.shape
    total = logits.new_zeros(batch)
    for i in range(n_proj):
        v = unit_directions(batch, classes, generator, logits)
        jv = input_gradient(x, logits, v, input_scale, create_graph=create_graph,
                            retain_graph=create_graph or i < n_proj - 1)
        total = total + classes * _sq_norm(jv) / n_proj
    return total


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
    return jr_projection_per_sample(x, logits, n_proj, generator, input_scale, create_graph).mean()


def resolve_method(method: str, x: torch.Tensor) -> str:
    """'auto' → 'batched' on CUDA, 'loop' elsewhere; checks the name."""
    if method not in JACOBIAN_METHODS:
        raise ConfigError(f"unknown Jacobian method {method!r}; valid: {', '.join(JACOBIAN_METHODS)}")
    if method == "auto":
        return "batched" if x.device.type == "cuda" else "loop"
    return method


def _chunk(batch: int, classes: int, x: torch.Tensor, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        return max(1, min(int(chunk_size), classes))
    per_class = max(1, batch * (x[0].numel() if x.dim() else 1))
    return max(1, min(classes, _BATCHED_BUDGET // per_class))


def _batched_chunks(x, outputs, create_graph, chunk_size):
    """Yield [k, B, ...] blocks of Jacobian rows (classes c0..c0+k−1) by vmapped backward
    passes over one-hot cotangents. The graph is kept, so a caller can still fall back."""
    batch, classes = outputs.shape
    k = _chunk(batch, classes, x, chunk_size)
    for c0 in range(0, classes, k):
        c1 = min(classes, c0 + k)
        eye = torch.zeros(c1 - c0, batch, classes, dtype=outputs.dtype, device=outputs.device)
        eye[torch.arange(c1 - c0, device=outputs.device), :, torch.arange(c0, c1, device=outputs.device)] = 1
        (g,) = torch.autograd.grad(outputs, x, grad_outputs=eye, is_grads_batched=True,
                                   create_graph=create_graph, retain_graph=True)
        yield g


def _rows_batched(x, outputs, create_graph, chunk_size):
    return torch.cat(list(_batched_chunks(x, outputs, create_graph, chunk_size)), 0).transpose(0, 1)


def _rows_loop(x, outputs, create_graph):
    classes = outputs.shape[1]
    rows = []
    for c in range(classes):
        (g,) = torch.autograd.grad(outputs[:, c].sum(), x, create_graph=create_graph,
                                   retain_graph=create_graph or c < classes - 1)
        rows.append(g)
    return torch.stack(rows, dim=1)


def jacobian_rows(
    x: torch.Tensor, logits: torch.Tensor, create_graph: bool = False, method: str = "auto",
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """The full per-sample Jacobian ∂z_c/∂x as a [B, C, *x.shape[1:]] tensor.

    ``logits`` may be any [B, C] output computed from ``x`` (e.g. softmax probabilities).
    ``method``: see the module docstring; ``chunk_size``: classes per batched pass.
    Valid because sample α's logits depend only on x_α (true in eval mode; in train
    mode with batch norm the cross-sample terms are ignored, as in Hoffman et al.).
    Without ``create_graph`` the graph of ``logits`` is freed afterwards.
    """
    chosen = resolve_method(method, x)
    if chosen == "batched":
        try:
            return _rows_batched(x, logits, create_graph, chunk_size)
        except (RuntimeError, NotImplementedError):
            if method != "auto":
                raise
    return _rows_loop(x, logits, create_graph)


def jacobian_sq_norms(
    x: torch.Tensor, logits: torch.Tensor, input_scale: Optional[torch.Tensor] = None,
    create_graph: bool = False, method: str = "auto", chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Per-sample exact ‖J(x_α)‖²_F = Σ_c ‖∂z_c/∂x_α‖², a [B] tensor.

    The loop accumulates one class at a time (memory of one input gradient);
    the batched method builds the chunked rows (see :func:`jacobian_rows`).
    """
    chosen = resolve_method(method, x)
    if chosen == "batched":
        try:
            total = logits.new_zeros(logits.shape[0])
            for g in _batched_chunks(x, logits, create_graph, chunk_size):
                total = total + _scaled(g, input_scale).pow(2).flatten(2).sum(2).sum(0)
            return total
        except (RuntimeError, NotImplementedError):
            if method != "auto":
                raise
    batch, classes = logits.shape
    total = logits.new_zeros(batch)
    for c in range(classes):
        (g,) = torch.autograd.grad(logits[:, c].sum(), x, create_graph=create_graph,
                                   retain_graph=create_graph or c < classes - 1)
        total = total + _sq_norm(_scaled(g, input_scale))
    return total


def jacobian_channel_sq_norms(x: torch.Tensor, logits: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Per-sample, per-input-channel Σ_c Σ_pixels (∂z_c/∂x)², a [B, C_in] tensor (no graph).

    Summing over channels gives ‖J‖²_F in the space of ``x``; weighting channel k by
    scale_k² gives it in a rescaled space (e.g. the normalised input, scale = std), so
    one pass yields the norm in both spaces.
    """
    chosen = resolve_method(method, x)
    if chosen == "batched":
        try:
            total = None
            for g in _batched_chunks(x, logits, False, None):
                part = g.pow(2).flatten(3).sum(3).sum(0)
                total = part if total is None else total + part
            return total
        except (RuntimeError, NotImplementedError):
            if method != "auto":
                raise
    classes = logits.shape[1]
    total = None
    for c in range(classes):
        (g,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < classes - 1)
        part = g.pow(2).flatten(2).sum(2)
        total = part if total is None else total + part
    return total


def mean_jacobian_norms(
    model: torch.nn.Module,
    images: torch.Tensor,
    scales: dict,
    batch_size: int = 500,
    device: Optional[torch.device | str] = None,
    method: str = "auto",
) -> dict:
    """Mean exact ‖J(x)‖_F over ``images`` in several input spaces from ONE Jacobian pass.

    ``scales`` maps a name to None (the space of the model's input) or a per-channel
    scale tensor broadcastable to [1, C, 1, 1] (e.g. the model's std for the normalised
    input). Returns {name: (mean, per-sample norms)}. Eval mode, no graph kept.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = device or (param.device if param is not None else "cpu")
    dtype = param.dtype if param is not None else torch.float32
    chans = []
    try:
        for start in range(0, len(images), batch_size):
            xb = images[start:start + batch_size].to(device)
            xb = (xb.to(dtype) / 255.0) if xb.dtype == torch.uint8 else xb.to(dtype)
            xb = xb.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                chans.append(jacobian_channel_sq_norms(xb, logits, method).detach().double().cpu())
    finally:
        model.train(was_training)
    per_channel = torch.cat(chans) if chans else torch.zeros(0, 1, dtype=torch.float64)
    out = {}
    for name, scale in scales.items():
        if scale is None:
            w = torch.ones(per_channel.shape[1], dtype=torch.float64)
        else:
            w = torch.as_tensor(scale, dtype=torch.float64).flatten().cpu().pow(2)
            w = w.expand(per_channel.shape[1]) if w.numel() == 1 else w
        per = (per_channel * w).sum(1).sqrt()
        out[name] = (float(per.mean()) if len(per) else float("nan"), per)
    return out


def mean_jacobian_norm(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 500,
    input_scale: Optional[torch.Tensor] = None,
    device: Optional[torch.device | str] = None,
    return_per_sample: bool = False,
    method: str = "auto",
):
    """Mean over ``images`` of the exact ‖J(x)‖_F (not squared), in eval mode, no graph kept.

    ``images`` are model inputs (pixel space for a PixelSpaceModel); uint8 images are
    scaled to [0, 1]. ``input_scale`` is a per-channel factor (e.g. the model's std, for
    the normalised-input Jacobian). With ``return_per_sample`` also returns the [N] norms.
    ``method`` picks the exact-Jacobian implementation (see the module docstring).
    """
    mean, per = mean_jacobian_norms(model, images, {"j": input_scale}, batch_size, device, method)["j"]
    return (mean, per) if return_per_sample else mean
