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

Random-projection estimators of ‖J(x_α)‖²_F for a training step (the ``jr`` regularizer's
``estimator`` option); each has its parameter gradient from ordinary autograd:

* ``vjp`` — Hoffman et al. Algorithm 1 verbatim: v̂ uniform on S^{C−1},
  C‖v̂ᵀJ‖² with v̂ᵀJ from one backward pass with ``create_graph`` (reverse over reverse).
  Unbiased; per-sample variance (2C Σs⁴ − 2(Σs²)²)/(C+2) (eq. 15, s = singular values of J).
* ``jvp`` — forward mode: a Rademacher probe u ∈ {±1}^D in input space, ‖J u‖² with J u
  from the same forward pass that gives the logits (:func:`jvp_forward`; reverse over
  forward). Unbiased (E uuᵀ = I); per-sample variance 2(‖JᵀJ‖²_F − Σ_i (JᵀJ)²_ii) ≤ 2Σs⁴.
  No input gradient is formed, so the step's backward reaches only the parameters.
* ``fd`` — finite difference: ‖f(x + h·u) − f(x)‖²/h², same u, one more forward (with the
  same dropout masks, and batch-norm statistics put back) and an ordinary backward. Biased:
  for f three times differentiable along the probes, with M_k = max over probes and |t| ≤ h
  of ‖d^k/dt^k f(x + t·u)‖,
  |E fd − ‖J‖²_F| ≤ h²(M₂²/4 + ‖J‖_F·M₃/3) + h³M₂M₃/6 + h⁴M₃²/36 —
  the O(h) term (J u)·∂²_u f is odd in u and cancels (u and −u are equally likely); float
  round-off adds about 2ε‖f‖/h to ‖f(x+hu) − f(x)‖/h. Where f is *not* differentiable —
  max-pool ties (LeNet' over MNIST's constant background), ReLU kinks — the quotient tends
  to a one-sided directional derivative, not to autograd's Jacobian, and the bias does not
  vanish as h → 0: measured +26 % (``lenet-mnist``) and +6 % (``lenet-mnist-jr``) against
  the exact pixel-space ‖J‖²_F on 100 MNIST test images, at every h from 1e-1 to 1e-4. Its
  parameter gradient suffers more: a sample whose shift moves a max-pool argmax contributes
  an O(1/h) error, so on LeNet' (random inputs, float64) the first layer's gradient was off
  by 9× its norm at h = 1e-3 and by 2.5e-4 at h = 1e-4, while Algorithm 1 and ``jvp`` match
  autograd exactly. Offered for smooth networks; never chosen by ``auto``.
* ``auto`` — in a training step, the estimator measured fastest for the device type and
  n_proj (:data:`AUTO_ESTIMATOR`); given precomputed logits, ``vjp`` (the others need their
  own forward).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError

#: valid values of the ``method`` argument / option
JACOBIAN_METHODS = ("auto", "batched", "loop")
#: batched pass: at most this many input-sized elements (classes × batch × numel(x_α)) per chunk
_BATCHED_BUDGET = 1 << 24
#: estimators of ‖J‖²_F for the ``jr`` regularizer (see the module docstring)
JR_ESTIMATORS = ("auto", "vjp", "jvp", "fd")
#: the estimator ``estimator='auto'`` runs in a training step, by (device type, n_proj): the
#: fastest unbiased one measured there (benchmarks/README.md; LeNet', batch 100, CPU, 1 thread:
#: n_proj = 1 jvp 1.8×, vjp 2.4× a plain step; n_proj = 3 vjp 4.6×, jvp 5.8× — each further
#: forward-mode probe is a whole forward pass, each further Algorithm 1 probe one backward).
#: Anything not listed — CUDA among them, not measured yet — runs Algorithm 1 (``vjp``), the
#: estimator Hoffman et al. timed on a GPU.
AUTO_ESTIMATOR = {("cpu", 1): "jvp"}
#: default step h of the ``fd`` estimator (per input coordinate, in the penalised space)
FD_STEP = 1e-3


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


def rademacher(shape, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Independent ±1 entries, each sign with probability ½, drawn from ``generator`` (on its
    own device, as :func:`_randn`) and returned in ``like``'s dtype and device."""
    device = generator.device if generator is not None else like.device
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=like.dtype)
    return bits.mul_(2).sub_(1).to(like.device)


def resolve_estimator(estimator: str, device, n_proj: int = 1) -> str:
    """The estimator a training step on ``device`` with ``n_proj`` projections runs: ``auto`` →
    :data:`AUTO_ESTIMATOR` for (device type, n_proj), ``vjp`` where none is listed; checks the name."""
    if estimator not in JR_ESTIMATORS:
        raise ConfigError(f"unknown Jacobian estimator {estimator!r}; valid: {', '.join(JR_ESTIMATORS)}")
    if estimator != "auto":
        return estimator
    return AUTO_ESTIMATOR.get((torch.device(device).type, int(n_proj)), "vjp")


class Replay:
    """Repeat a model's forward pass with the random draws of the first one, leaving no trace.

    Create it just before the first pass: it records the CPU random generator (and, for a
    CUDA ``device``, that device's). ``replay(fn)`` runs ``fn`` with the generators rewound to
    that point — dropout draws the same masks — and afterwards puts the generators and the
    model's buffers (batch-norm running statistics) back as they were before ``fn``: the
    extra pass changes neither the random stream nor the running statistics. With
    ``buffers=True`` the buffers are also recorded at creation and :meth:`rewind` undoes
    everything since (generators and buffers)."""

    def __init__(self, model: torch.nn.Module, device, buffers: bool = False):
        self.model, self.device = model, torch.device(device)
        self.rng = self._rng()
        self.saved = self._buffers() if buffers else None

    def _rng(self):
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng(self, state) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def _buffers(self):
        return [(b, b.detach().clone()) for b in self.model.buffers()]

    @staticmethod
    def _put(saved) -> None:
        # through .data: running statistics are updated inside the batch-norm kernel without
        # a version bump, so writing them back must not bump it either
        for b, value in saved:
            b.data.copy_(value)

    def __call__(self, fn):
        after, saved = self._rng(), self._buffers()
        self._set_rng(self.rng)
        try:
            return fn()
        finally:
            self._put(saved)
            self._set_rng(after)

    def rewind(self) -> None:
        """Put generators and buffers back to their state at creation (needs ``buffers=True``)."""
        self._set_rng(self.rng)
        self._put(self.saved)


#: the linear layers whose forward-mode formula :class:`_TangentsThroughLinearLayers` replaces
_LINEAR_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d, F.linear)


class _TangentsThroughLinearLayers(TorchFunctionMode):
    """Forward mode through convolutions and linear layers without the parameters' zero tangents.

    PyTorch's forward-mode formula for ``conv(x, W, b)`` is conv(x_t, W) + conv(x, W_t, b_t), and
    when W and b have no tangent (ours never do) the second term is still computed, on
    materialised zeros: a whole extra convolution per layer (≈ 13 % of a LeNet' JR step on CPU).
    Inside this mode, such a call on a dual input whose weight and bias carry no tangent is done
    as two calls, conv(x, W, b) and conv(x_t, W) — the same numbers and the same graph for the
    backward. Every other call goes through unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LINEAR_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
            primal, tangent = fwAD.unpack_dual(args[0])
            rest, kw = list(args[1:]), dict(kwargs)
            weight = rest[0] if rest else kw.get("weight")
            bias_positional = len(rest) > 1
            bias = rest[1] if bias_positional else kw.get("bias")
            if (tangent is not None and isinstance(weight, torch.Tensor) and fwAD.unpack_dual(weight).tangent is None
                    and (bias is None or fwAD.unpack_dual(bias).tangent is None)):
                out = func(primal, *rest, **kw)
                if bias_positional:
                    rest[1] = None
                else:
                    kw["bias"] = None
                return fwAD.make_dual(out, func(tangent, *rest, **kw))
        return func(*args, **kwargs)


def jvp_forward(model, x: torch.Tensor, tangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward-mode pass: the logits ``model(x)`` and their directional derivative J·tangent
    (both [B, C]), differentiable w.r.t. the parameters. ``x`` needs no grad; no input gradient is
    formed. Convolutions and linear layers skip PyTorch's zero parameter tangents
    (:class:`_TangentsThroughLinearLayers`). Raises NotImplementedError where an operator has no
    forward-mode formula."""
    with fwAD.dual_level(), _TangentsThroughLinearLayers():
        out = model(fwAD.make_dual(x.detach(), tangent))
        logits, jt = fwAD.unpack_dual(out)
    return logits, (torch.zeros_like(logits) if jt is None else jt)


def jr_jvp_per_sample(
    model, x: torch.Tensor, n_proj: int = 1, generator: Optional[torch.Generator] = None,
    input_scale: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``jvp`` estimator: (logits, [B] per-sample (1/n_proj) Σ_μ ‖J(x_α) u_μα‖²), u_μα
    Rademacher in the input space (times ``input_scale`` for a rescaled space). Unbiased for
    ‖J(x_α)‖²_F. The logits come from the first pass; each further projection is one more
    forward-mode pass that replays the first one's random draws (:class:`Replay`)."""
    x = x.detach()
    replay = Replay(model, x.device) if n_proj > 1 else None
    logits, total = None, None
    for i in range(n_proj):
        t = _scaled(rademacher(x.shape, generator, x), input_scale)
        if i == 0:
            logits, jt = jvp_forward(model, x, t)
        else:
            jt = replay(lambda: jvp_forward(model, x, t)[1])
        term = _sq_norm(jt) / n_proj
        total = term if total is None else total + term
    return logits, total


def jr_fd_per_sample(
    model, x: torch.Tensor, n_proj: int = 1, generator: Optional[torch.Generator] = None,
    input_scale: Optional[torch.Tensor] = None, step: float = FD_STEP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``fd`` estimator: (logits, [B] per-sample (1/n_proj) Σ_μ ‖f(x_α + h u_μα) − f(x_α)‖²/h²),
    u Rademacher in the input space (times ``input_scale``), h = ``step``. Each shifted pass
    replays the first pass's random draws and leaves the buffers as they were (:class:`Replay`).
    Biased by O(h²) where f is smooth, and by O(1) where it is not (see the module docstring)."""
    x = x.detach()
    replay = Replay(model, x.device)
    logits = model(x)
    total = None
    for _ in range(n_proj):
        t = _scaled(rademacher(x.shape, generator, x), input_scale)
        shifted = replay(lambda: model(x + step * t))
        term = (shifted - logits).pow(2).sum(1) / (step * step * n_proj)
        total = term if total is None else total + term
    return logits, total


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
    return _sq_norms(x, logits, input_scale, create_graph, method, chunk_size, False)[0]


def jacobian_sq_norms_and_row_sum(
    x: torch.Tensor, logits: torch.Tensor, input_scale: Optional[torch.Tensor] = None,
    create_graph: bool = False, method: str = "auto", chunk_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample ‖J(x_α)‖²_F, Σ_c ∂z_c/∂x) from the same C backward passes (or batched pass):
    the row sum costs no extra pass."""
    return _sq_norms(x, logits, input_scale, create_graph, method, chunk_size, True)


def _sq_norms(x, logits, input_scale, create_graph, method, chunk_size, with_sum):
    chosen = resolve_method(method, x)
    if chosen == "batched":
        try:
            total, rows = logits.new_zeros(logits.shape[0]), None
            for g in _batched_chunks(x, logits, create_graph, chunk_size):
                g = _scaled(g, input_scale)
                total = total + g.pow(2).flatten(2).sum(2).sum(0)
                if with_sum:
                    rows = g.sum(0) if rows is None else rows + g.sum(0)
            return total, rows
        except (RuntimeError, NotImplementedError):
            if method != "auto":
                raise
    batch, classes = logits.shape
    total, rows = logits.new_zeros(batch), None
    for c in range(classes):
        (g,) = torch.autograd.grad(logits[:, c].sum(), x, create_graph=create_graph,
                                   retain_graph=create_graph or c < classes - 1)
        g = _scaled(g, input_scale)
        total = total + _sq_norm(g)
        if with_sum:
            rows = g if rows is None else rows + g
    return total, rows


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
