"""The audit's ‖J‖_F measurement: mean Frobenius norm of the input–logit Jacobian over the
evaluated samples, in two input spaces, exact or estimated.

Spaces: ``pixel`` — w.r.t. the [0, 1] pixel input the searches perturb; ``normalized`` —
w.r.t. the model's normalised input (x − mean)/std, the space Hoffman et al. report ‖J‖_F
in (J_norm = J_pixel · std, per channel; known only for models that carry their
``input_scale``, e.g. :class:`~robustbench_jr.models.PixelSpaceModel`).

Methods (``--jacobian``):

* ``exact`` — one backward pass per class (:func:`robustbench_jr.jacobian.mean_jacobian_norms`,
  both spaces from one pass); standard error 0.
* ``estimate`` — Hoffman et al.'s random projections (Algorithm 1): per sample ``n_proj``
  directions v̂ uniform on the unit sphere of the C logits, drawn from a generator seeded
  with (seed, sample id), so the numbers do not depend on batching; C‖v̂ᵀJ‖² is an unbiased
  estimate of ‖J‖²_F (one backward pass each, both spaces from the same pass). Per sample
  ‖J‖_F is estimated by the square root of the mean over the projections; the stated
  standard error is that of the mean over the N samples due to the projections (the
  per-sample variance of the mean of the projections, estimated from their spread, through
  the delta method, √(Σ_i var_i)/N). The square root's bias (E√ŝ ≈ √s − Var ŝ/(8 s^{3/2}))
  is corrected to second order with the same variance estimate.
* ``off`` — nothing is measured.
* ``auto`` (default) — ``exact`` where it is cheap, i.e. classes × input components ≤
  :data:`EXACT_MAX_COST` (MNIST: 10 × 784, CIFAR-10: 10 × 3,072, CIFAR-100: 100 × 3,072),
  else ``estimate`` (ImageNet: 1,000 × 150,528, where the exact norm costs 1,000 backward
  passes per image before the first search starts).

Every ‖J‖_F the tool shows names its N (samples it averages) and its space.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from ..attacks.base import eval_mode
from ..jacobian import mean_jacobian_norms
from ..runtime import generator

__all__ = ["DEFAULT_PROJECTIONS", "EXACT_MAX_COST", "JACOBIAN_MODES", "ROWS", "card_norms", "describe",
           "estimate_norms", "exact_norms", "measure", "resolve_mode", "summarize_norms"]

JACOBIAN_MODES = ("auto", "exact", "estimate", "off")
#: ``auto`` measures exactly when classes × input components is at most this
EXACT_MAX_COST = 1_000_000
#: random projections per sample of the ``estimate`` method
DEFAULT_PROJECTIONS = 16
#: the rows of the per-sample tensor :func:`measure` returns
ROWS = ("pixel", "normalized", "var_pixel", "var_normalized")


def resolve_mode(mode: str, num_classes: Optional[int], n_inputs: Optional[int]) -> str:
    """``exact``, ``estimate`` or ``off`` for a requested ``mode`` (``auto`` by cost)."""
    if mode != "auto":
        return mode
    if not num_classes or not n_inputs:
        return "exact"
    return "exact" if num_classes * n_inputs <= EXACT_MAX_COST else "estimate"


def _scale(model) -> Optional[torch.Tensor]:
    s = getattr(model, "input_scale", None)
    return None if s is None else torch.as_tensor(s).detach()


def exact_norms(model, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Per-sample exact ‖J‖_F, a float64 [4, N] tensor (:data:`ROWS`; normalized NaN without
    an ``input_scale``; variances 0)."""
    scale = _scale(model)
    scales = {"pixel": None} if scale is None else {"pixel": None, "normalized": scale}
    res = mean_jacobian_norms(model, images, scales, batch_size=batch_size, device=device)
    n = len(images)
    out = torch.zeros(4, n, dtype=torch.float64)
    out[0] = res["pixel"][1].double()
    out[1] = res["normalized"][1].double() if scale is not None else float("nan")
    return out


def estimate_norms(model, images: torch.Tensor, ids, n_proj: int, seed: int, device) -> torch.Tensor:
    """Per-sample random-projection estimates of ‖J‖_F and the variances of the estimates,
    a float64 [4, N] tensor (:data:`ROWS`); see the module docstring."""
    n = len(images)
    out = torch.zeros(4, n, dtype=torch.float64)
    if n == 0:
        return out
    scale = _scale(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = images.to(device)
    x = (x.to(dtype) / 255.0) if x.dtype == torch.uint8 else x.to(dtype)
    x = x.detach().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(x)
        c = logits.shape[1]
        v = torch.stack([torch.randn(n_proj, c, generator=generator(seed, "jacobian-estimate", int(i)),
                                     dtype=torch.float64) for i in ids])  # [N, k, C]
        v = (v / v.norm(dim=2, keepdim=True)).to(device=device, dtype=logits.dtype)
        q = torch.zeros(2, n_proj, n, dtype=torch.float64)
        w = None if scale is None else scale.to(torch.float64).flatten().cpu().pow(2)
        for k in range(n_proj):
            (g,) = torch.autograd.grad(logits, x, v[:, k], retain_graph=k < n_proj - 1)
            ch = g.detach().double().pow(2).flatten(2).sum(2).cpu()  # [N, C_in]
            q[0, k] = c * ch.sum(1)
            if w is not None:
                q[1, k] = c * (ch * (w.expand(ch.shape[1]) if w.numel() == 1 else w)).sum(1)
    for j in range(2):
        if j == 1 and scale is None:
            out[1] = float("nan")
            out[3] = float("nan")
            continue
        s = q[j].mean(0)
        var_s = q[j].var(0, unbiased=True) / n_proj if n_proj > 1 else s.pow(2) * 2.0  # eq. 15 bound, k = 1
        root = s.clamp_min(0).sqrt()
        var_root = torch.where(s > 0, var_s / (4 * s.clamp_min(1e-300)), torch.zeros_like(s))
        # second-order correction of the square root's bias: E√ŝ ≈ √s − Var(ŝ)/(8 s^{3/2})
        out[j] = root + torch.where(s > 0, var_root / (2 * root.clamp_min(1e-300)), torch.zeros_like(s))
        out[2 + j] = var_root
    return out


def measure(model, data, batch_size: int, device, mode: str, n_proj: int = DEFAULT_PROJECTIONS, seed: int = 0,
            owns: Callable[[int], bool] = lambda bi: True) -> torch.Tensor:
    """Per-sample ‖J‖_F of ``data`` (an ImageDataset) by ``mode`` (``exact``/``estimate``) over
    the batches ``owns`` accepts (zeros elsewhere, so ranks can sum): float64 [4, N] (:data:`ROWS`)."""
    n = len(data)
    out = torch.zeros(4, n, dtype=torch.float64)
    for bi, start in enumerate(range(0, n, batch_size)):
        if not owns(bi):
            continue
        sl = slice(start, min(start + batch_size, n))
        if mode == "exact":
            out[:, sl] = exact_norms(model, data.pixels(sl), batch_size, device)
        else:
            out[:, sl] = estimate_norms(model, data.pixels(sl, device=device), data.ids[sl].tolist(), n_proj,
                                        seed, device)
    return out


def summarize_norms(per: torch.Tensor, method: str, n_proj: Optional[int] = None) -> dict:
    """The stored ‖J‖_F measurement from :func:`measure`'s per-sample tensor: method, N, the mean
    in each space and its standard error (0 for exact; None for a space that is not known)."""
    per = torch.as_tensor(per, dtype=torch.float64)
    n = int(per.shape[1])

    def mean(row):
        v = per[row]
        return None if n == 0 or bool(torch.isnan(v).any()) else float(v.mean())

    def se(row):
        v = per[row]
        return None if n == 0 or bool(torch.isnan(v).any()) else float(math.sqrt(float(v.sum())) / n)

    out = {"method": method, "n": n, "pixel": mean(0), "normalized": mean(1),
           "se_pixel": se(2), "se_normalized": se(3)}
    if method == "estimate":
        out["n_proj"] = int(n_proj or DEFAULT_PROJECTIONS)
    return out


def card_norms(card: Optional[dict]) -> Optional[dict]:
    """The checkpoint card's whole-test-set ‖J‖_F (``metrics.jacobian_norm``, pixel space, and
    ``metrics.jacobian_norm_normalized_input``), with its N (``metrics.test_samples``); None
    when the card has neither."""
    m = (card or {}).get("metrics") or {}
    pix, nrm = m.get("jacobian_norm"), m.get("jacobian_norm_normalized_input")
    if pix is None and nrm is None:
        return None
    return {"pixel": None if pix is None else float(pix), "normalized": None if nrm is None else float(nrm),
            "n": m.get("test_samples"), "method": "exact", "set": m.get("test_set")}


def describe(j: Optional[dict], space: str = "pixel") -> str:
    """``13.275 (pixel, exact, N=100)`` / ``13.2 ± 0.31 (pixel, estimate, N=100)`` / ``–``."""
    if not j or j.get("method") == "off" or j.get(space) is None:
        return "– (not measured)" if j and j.get("method") == "off" else "–"
    v = float(j[space])
    se = j.get(f"se_{space}")
    name = {"pixel": "pixel", "normalized": "normalised input"}[space]
    pm = f" ± {se:.2g}" if j.get("method") == "estimate" and se is not None and np.isfinite(se) else ""
    n = j.get("n")
    return f"{v:.3f}{pm} ({name}, {j.get('method', 'exact')}, N={n if n is not None else '?'})"
