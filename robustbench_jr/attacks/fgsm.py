"""FGSM fooling-distance search (Hoffman et al. 2019, App. F (ii)).

One gradient of the cross-entropy loss at the clean point gives the direction
s = sign(∇ₓ CE(x, y)) — exactly one backward pass per sample. The step size ε is
then searched with forward passes only: ε runs over a geometric grid from
``eps_min`` to ``eps_max`` (``grid_size`` points) until clip(x + ε·s, 0, 1) fools the
model, then ε is bisected between the last non-fooling grid point (or 0) and the
first fooling one until the bracket is narrower than ``rtol`` (relative). The
reported distance is that of the clipped image. ε > 1 changes nothing (every moved
pixel is saturated), so ``eps_max`` = 1 covers the whole range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import param
from ..errors import ConfigError
from .base import Found, Search, Tally, bisect_fooling, input_gradient, warn_zero_gradients


@dataclass
class FGSMConfig:
    #: smallest grid value of ε (Linf step in [0, 1] pixel units)
    eps_min: float = param(1e-3, gt=0)
    #: largest ε tried (1 saturates every pixel the sign moves)
    eps_max: float = param(1.0, gt=0)
    #: number of geometric grid points between eps_min and eps_max
    grid_size: int = param(40, ge=1)
    #: bisection stops when (hi − lo) ≤ rtol·hi
    rtol: float = param(1e-3, gt=0, lt=1)
    #: at most this many bisection steps
    max_bisection: int = param(20, ge=0)

    def validate(self) -> None:
        if not self.eps_min <= self.eps_max:
            raise ConfigError(f"fgsm: need eps_min ≤ eps_max, got {self.eps_min}, {self.eps_max}")


def fgsm_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """s = sign(∇ₓ CE(model(x), y)) per sample, at the clean point: one forward and one backward pass."""
    _, g = input_gradient(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    return g.sign()


def smallest_fooling_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor,
                         config: Optional[FGSMConfig] = None, *, clip: bool = True,
                         tally: Optional[Tally] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the smallest ε at which ``model(x + ε·s)`` no longer predicts ``y``.

    ε runs over the config's geometric grid (``eps_min`` … ``eps_max``, ``grid_size``
    points), then is bisected between the last non-fooling point (or 0) and the first
    fooling one until ``hi − lo ≤ rtol·hi`` (at most ``max_bisection`` steps). The
    candidate is clipped to [0, 1] when ``clip`` (the search) and left on the straight
    line otherwise (e.g. a point of a cross-section plane). Samples whose ``s`` is all
    zero are not searched. Returns ``(eps, candidate)``: ε float64 [b], ``+inf`` where
    no grid point fools, and the candidate image at that ε (NaN where none). Forward
    passes are counted in ``tally`` when given.
    """
    cfg = FGSMConfig() if config is None else config
    b = x.shape[0]
    dev = x.device
    if cfg.grid_size == 1:
        grid = torch.tensor([cfg.eps_max], dtype=torch.float64)
    else:
        grid = torch.logspace(torch.log10(torch.tensor(cfg.eps_min, dtype=torch.float64)),
                              torch.log10(torch.tensor(cfg.eps_max, dtype=torch.float64)),
                              cfg.grid_size, dtype=torch.float64)
    lo = torch.zeros(b, dtype=torch.float64, device=dev)
    hi = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
    adv = torch.full_like(x, float("nan"))
    searching = (s.flatten(1) != 0).any(1)

    def evaluate(idx, eps):
        cand = x[idx] + eps.to(x.dtype).view(-1, 1, 1, 1) * s[idx]
        if clip:
            cand = cand.clamp(0, 1)
        with torch.no_grad():
            fooled = model(cand).argmax(1) != y[idx]
        if tally is not None:
            tally.add_forward(idx)
        return cand, fooled

    for eps in grid.tolist():
        idx = searching.nonzero().squeeze(1)
        if not idx.numel():
            break
        e = torch.full((idx.numel(),), eps, dtype=torch.float64, device=dev)
        cand, fooled = evaluate(idx, e)
        f_idx = idx[fooled]
        hi[f_idx] = eps
        adv[f_idx] = cand[fooled]
        lo[idx[~fooled]] = eps
        searching[f_idx] = False
    bisect_fooling(lo, hi, adv, evaluate, cfg.rtol, max_rounds=cfg.max_bisection)
    return hi, adv


class FGSMSearch(Search):
    """Sign of the clean-point gradient; smallest fooling ε by grid then bisection."""

    name = "fgsm"
    Config = FGSMConfig

    def _search(self, model, x, y, ids, seed):
        b = x.shape[0]
        dev = x.device
        tally = Tally(b, dev)
        all_idx = torch.arange(b, device=dev)
        s = fgsm_direction(model, x, y)
        tally.add_forward(all_idx)
        tally.add_grad(all_idx)
        warn_zero_gradients(self.name, int((s.flatten(1) == 0).all(1).sum()))
        eps, adv = smallest_fooling_eps(model, x, y, s, self.config, tally=tally)
        return Found(adv, torch.isfinite(eps), tally.forward, tally.grad)
