"""Decoupled direction and norm (DDN, Rony et al. 2019), L2, with named departures.

The paper's algorithm (the defaults). Per sample, the perturbation δ lives on a sphere
of radius ε around the clean image x. At step k (k = 0 … ``steps`` − 1) the model is
evaluated at x̃ = x + δ (one forward and one backward pass):

* if x̃ is misclassified it is a candidate; the closest one over all steps is kept;
* the norm moves by γ: ε ← (1 − γ)·ε if x̃ is misclassified, else (1 + γ)·ε, and ε never
  exceeds the largest distance the box [0, 1] allows around x;
* the direction takes a normalised gradient step on the loss,
  δ ← δ − α_k·∇L/‖∇L‖, with α_k cosine-annealed from ``alpha`` (1) to ``alpha_final``
  (0.01) over the steps; L is the log-probability of the label (``loss: ce``, i.e. a
  step that raises the cross-entropy) or the logit margin Z_y − max_{j≠y} Z_j
  (``loss: margin``);
* δ is rescaled to norm ε and clipped so that x + δ stays in [0, 1].

ε starts at ``init_norm`` (1), γ is ``gamma`` (0.05). Step 0 evaluates the clean
image. The paper also rounds every iterate to 256 grey levels; like every search of
this package, this one measures distances on continuous [0, 1] pixels and does not.

Departures (options with their own names, off by default; the ``quick`` audit budget
turns them on, see ``evaluation.plan.BUDGETS``):

* ``norm_update: adaptive`` — a per-sample γ (a self-adaptive norm step in the spirit of
  Liu & Cao 2021 and of Rprop): it starts at ``gamma``, grows ×``gamma_up`` while
  consecutive iterates stay on the same side of the boundary (ε still has far to go),
  shrinks ×``gamma_down`` whenever the side flips (ε brackets the boundary), and stays
  in [``gamma_min``, ``gamma_max``]. The paper's fixed γ spends ~14 steps per doubling of
  ε and then can only place the boundary to within a factor 1 ± γ; the adaptive step
  travels fast and then locates it to ±``gamma_min``.
* ``alpha_relative: true`` — the direction step is α_k·ε instead of α_k (scale-free:
  the same schedule on MNIST, where distances are ~1, and on CIFAR, where they are ~0.1).
* ``tangent: true`` — a Riemannian gradient step on the sphere ‖δ‖ = ε: the direction
  step drops the normalised gradient's radial part, δ ← δ − α_k·(∇L − (∇L·δ̂)δ̂)/‖∇L‖.
  The rescaling undoes the radial part anyway, but in the paper's step it also changes
  how far the direction turns: by atan2(α·sin θ, 1 − α·cos θ) for an angle θ between
  ∇L and δ (with ``alpha_relative``), which halves the turn near the optimum at α = 1
  and swings the direction round when ∇L points along δ. The tangent step turns it by
  arctan(α·sin θ) — zero once δ is aligned with −∇L. Step 0 (δ = 0) is the same either way.
* ``candidates: T`` > 1 — class exploration. The closest boundary is often not the
  one the untargeted loss heads for (on the bundled LeNets the best target class is the
  top logit class for only ~55-70 % of the images). The search first runs untargeted
  for ``explore``·steps steps, then forks every sample into T rows, one per class among
  the T highest logits (label excluded) at its current iterate, each continuing from
  the same δ, ε, γ but with the margin to its target, Z_y − Z_t, for
  ``candidate_steps``·steps steps; it then keeps, per sample, the row with the closest
  adversarial (or, if none of them found one, the smallest ε) and runs it for the rest
  of the budget. Every row of a sample costs that sample one forward and one backward
  pass per step, so the budget per sample stays ``steps``:
  explore·steps + T·candidate_steps·steps + the rest (with ``explore: 0``, plus one
  forward pass for the clean logits that rank the classes).
* ``patience: P`` — per-sample early stop: a row stops once its closest adversarial
  has not improved (by more than 10⁻⁴ relative) in P steps.

Every row works on its own sample only (per-row norms, steps, schedules and per-sample
selection), so a sample's result does not depend on the batch. Rows that stop or are
dropped leave the batch: the model only sees rows still stepping. ``n_grad`` counts one
backward pass per row and step. No random numbers are drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..config import param
from ..errors import ConfigError
from .base import Found, Search, Tally, warn_zero_gradients

_LOSSES = ("ce", "margin")
_NORM_UPDATES = ("fixed", "adaptive")
#: relative improvement of a row's closest adversarial that resets its patience
_PATIENCE_RTOL = 1e-4


@dataclass
class DDNConfig:
    #: gradient steps per sample (one forward + one backward pass each): the budget
    steps: int = param(100, ge=1)
    #: ε₀, the norm of the first perturbation
    init_norm: float = param(1.0, gt=0)
    #: γ, the relative change of ε per step (the first γ with norm_update: adaptive)
    gamma: float = param(0.05, gt=0, lt=1)
    #: direction step at the first step (cosine-annealed to alpha_final)
    alpha: float = param(1.0, gt=0)
    #: direction step at the last step
    alpha_final: float = param(0.01, gt=0)
    #: untargeted loss: 'ce' (the label's log-probability) or 'margin' (Z_y − max_other)
    loss: str = param("ce", choices=_LOSSES)
    #: 'fixed' γ (the paper) or 'adaptive' per-sample γ (see the module docstring)
    norm_update: str = param("fixed", choices=_NORM_UPDATES)
    #: adaptive γ: factor while the side of the boundary stays the same
    gamma_up: float = param(1.5, ge=1)
    #: adaptive γ: factor when it flips
    gamma_down: float = param(0.5, gt=0, le=1)
    #: adaptive γ: bounds
    gamma_min: float = param(0.001, gt=0, lt=1)
    gamma_max: float = param(0.3, gt=0, lt=1)
    #: direction step in units of ε (α·ε) instead of pixel units
    alpha_relative: bool = False
    #: step along the gradient's component tangent to the sphere ‖δ‖ = ε (see the docstring)
    tangent: bool = False
    #: target classes explored per sample (1 = untargeted only, the paper)
    candidates: int = param(1, ge=1)
    #: fraction of the steps run untargeted before the fork (candidates > 1)
    explore: float = param(0.2, ge=0, le=1)
    #: fraction of the steps each candidate row runs before the best is kept (candidates > 1)
    candidate_steps: float = param(0.15, gt=0, le=1)
    #: per-sample early stop after this many steps without a closer adversarial; None = never
    patience: Optional[int] = param(None, ge=1)

    def validate(self) -> None:
        if self.gamma_min > self.gamma_max:
            raise ConfigError(f"ddn: gamma_min ({self.gamma_min}) must be ≤ gamma_max ({self.gamma_max})")
        if self.candidates > 1 and self.explore + self.candidates * self.candidate_steps > 1 + 1e-9:
            raise ConfigError(f"ddn: explore + candidates · candidate_steps must be ≤ 1 (the budget), got "
                              f"{self.explore} + {self.candidates} · {self.candidate_steps}")


def phase_steps(cfg: DDNConfig) -> tuple[int, int, int]:
    """(untargeted steps before the fork, steps per candidate row, steps after the keep).

    With ``candidates`` = 1 everything is one untargeted phase. The three add up to the
    budget: explore + candidates · per_candidate + rest = steps."""
    if cfg.candidates <= 1:
        return cfg.steps, 0, 0
    explore = int(round(cfg.explore * cfg.steps))
    per = max(1, int(round(cfg.candidate_steps * cfg.steps)))
    if explore + cfg.candidates * per > cfg.steps:
        per = max(1, (cfg.steps - explore) // cfg.candidates)
        explore = min(explore, cfg.steps - cfg.candidates * per)
    if explore < 0:
        raise ConfigError(f"ddn: {cfg.steps} steps cannot give {cfg.candidates} candidates one step each; "
                          f"use steps ≥ {cfg.candidates} or fewer candidates")
    return explore, per, cfg.steps - explore - cfg.candidates * per


class _Rows:
    """The search state, one row per (sample, target): target −1 means untargeted."""

    FIELDS = ("s", "t", "delta", "eps", "gam", "prev", "k", "best", "best_adv", "stale", "active", "logits")

    def __init__(self, **kw):
        for f in self.FIELDS:
            setattr(self, f, kw[f])

    def take(self, index: torch.Tensor) -> "_Rows":
        return _Rows(**{f: getattr(self, f)[index] for f in self.FIELDS})


def _first_min(key: torch.Tensor, group: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(smallest ``key`` of each of the ``n`` groups, index of the first row that has it)."""
    gmin = torch.full((n,), float("inf"), dtype=key.dtype, device=key.device).scatter_reduce(
        0, group, key, reduce="amin")
    rows = torch.arange(key.shape[0], device=key.device)
    hit = torch.where(key == gmin[group], rows, torch.full_like(rows, key.shape[0]))
    first = torch.full((n,), key.shape[0], dtype=torch.int64, device=key.device).scatter_reduce(
        0, group, hit, reduce="amin")
    return gmin, first


def keep_best_rows(best: torch.Tensor, eps: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """Per group (sample), the index of its row with the closest adversarial (``best``
    finite), or, where no row has one, of its row with the smallest ``eps``; ties go to
    the first row (the higher-ranked candidate). Depends only on each group's own rows."""
    bmin, bfirst = _first_min(best, group, n)
    _, efirst = _first_min(eps, group, n)
    return torch.where(torch.isfinite(bmin), bfirst, efirst)


class DDNSearch(Search):
    """DDN L2 (decoupled direction and norm), per sample; optional adaptive norm step and
    class exploration (see the module docstring)."""

    name = "ddn"
    Config = DDNConfig

    def _search(self, model, x, y, ids, seed):
        cfg = self.config
        b = x.shape[0]
        dev = x.device
        tally = Tally(b, dev)
        explore, per, rest = phase_steps(cfg)
        total = explore + per + rest  # the schedule length of a row that runs to the end
        # the largest distance the box allows around each x: ε never needs to exceed it
        cap = torch.maximum(x, 1 - x).flatten(1).norm(dim=1).to(torch.float64)
        rows = _Rows(
            s=torch.arange(b, device=dev), t=torch.full((b,), -1, dtype=torch.int64, device=dev),
            delta=torch.zeros_like(x),
            eps=torch.minimum(torch.full((b,), float(cfg.init_norm), dtype=torch.float64, device=dev),
                              cap),
            gam=torch.full((b,), float(cfg.gamma), dtype=torch.float64, device=dev),
            prev=torch.zeros(b, dtype=torch.bool, device=dev),
            k=torch.zeros(b, dtype=torch.int64, device=dev),
            best=torch.full((b,), float("inf"), dtype=torch.float64, device=dev),
            best_adv=torch.full_like(x, float("nan")),
            stale=torch.zeros(b, dtype=torch.int64, device=dev),
            active=torch.ones(b, dtype=torch.bool, device=dev),
            logits=torch.zeros((b, 0), dtype=x.dtype, device=dev),
        )
        run = _Run(model, x, y, cap, total, tally)
        self._run(run, rows, explore)
        if cfg.candidates > 1 and per > 0:
            rows = self._fork(run, rows)
            self._run(run, rows, per)
            rows = rows.take(keep_best_rows(rows.best, rows.eps, rows.s, b))
            self._run(run, rows, rest)
        warn_zero_gradients(self.name, int(run.n_zero))
        # one row per sample is left when candidates > 1; otherwise rows are the samples
        found = torch.isfinite(rows.best)
        return Found(rows.best_adv, found, tally.forward, tally.grad)

    # -- phases --------------------------------------------------------------------------
    def _run(self, run: "_Run", rows: _Rows, n_steps: int) -> None:
        for _ in range(n_steps):
            idx = rows.active.nonzero().squeeze(1)
            if not idx.numel():
                break
            self._step(run, rows, idx)

    def _fork(self, run: "_Run", rows: _Rows) -> _Rows:
        """One row per (sample, class among the T highest logits at its current iterate)."""
        cfg = self.config
        model, x, y, tally = run.model, run.x, run.y, run.tally
        if rows.logits.shape[1] == 0:  # explore = 0: the clean logits
            with torch.no_grad():
                rows.logits = model(x[rows.s] + rows.delta)
            tally.forward.index_add_(0, rows.s, torch.ones_like(rows.s))
        z = rows.logits.clone()
        k = min(cfg.candidates, z.shape[1] - 1)
        z.scatter_(1, y[rows.s][:, None], float("-inf"))
        top = z.topk(k, dim=1).indices  # [rows, k], highest first
        fork = torch.arange(rows.s.shape[0], device=x.device).repeat_interleave(k)
        out = rows.take(fork)
        out.t = top.reshape(-1)
        # a row stopped by patience before the fork stays stopped in all its candidates
        return out

    # -- one step on the active rows -------------------------------------------------------
    def _step(self, run: "_Run", rows: _Rows, idx: torch.Tensor) -> None:
        cfg = self.config
        model, x, y, tally, total = run.model, run.x, run.y, run.tally, run.total
        s = rows.s[idx]
        t = rows.t[idx]
        x0, ys = x[s], y[s]
        delta = rows.delta[idx]
        with torch.enable_grad():
            xin = (x0 + delta).requires_grad_(True)
            logits = model(xin)
            zy = logits.gather(1, ys[:, None]).squeeze(1)
            targeted = t >= 0
            zt = logits.gather(1, t.clamp_min(0)[:, None]).squeeze(1)
            if cfg.loss == "ce":
                untargeted = F.log_softmax(logits, dim=1).gather(1, ys[:, None]).squeeze(1)
            else:
                untargeted = zy - logits.scatter(1, ys[:, None], float("-inf")).amax(1)
            loss = torch.where(targeted, zy - zt, untargeted)
            (g,) = torch.autograd.grad(loss.sum(), xin)
        tally.forward.index_add_(0, s, torch.ones_like(s))
        tally.grad.index_add_(0, s, torch.ones_like(s))
        with torch.no_grad():
            z = logits.detach()
            rows.logits = _set_rows(rows.logits, idx, z)
            is_adv = z.argmax(1) != ys
            dist = delta.flatten(1).double().norm(dim=1)
            better = is_adv & (dist < rows.best[idx])
            improved = better & (dist < rows.best[idx] * (1 - _PATIENCE_RTOL))
            # masked updates: the step's one host-device sync is the active-row lookup
            rows.best[idx] = torch.where(better, dist, rows.best[idx])
            rows.best_adv[idx] = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x0 + delta,
                                             rows.best_adv[idx])
            k = rows.k[idx]
            # norm
            gam = rows.gam[idx]
            if cfg.norm_update == "adaptive":
                same = is_adv == rows.prev[idx]
                gam = torch.where(k == 0, gam, torch.where(same, gam * cfg.gamma_up, gam * cfg.gamma_down))
                gam = gam.clamp(cfg.gamma_min, cfg.gamma_max)
                rows.gam[idx] = gam
            eps = torch.where(is_adv, rows.eps[idx] * (1 - gam), rows.eps[idx] * (1 + gam))
            eps = torch.minimum(eps, run.cap[s])
            rows.eps[idx] = eps
            rows.prev[idx] = is_adv
            # direction
            gn = g.flatten(1).norm(dim=1)
            zero = gn == 0
            run.n_zero = run.n_zero + (zero & (k == 0)).sum()
            rows.active[idx] = rows.active[idx] & ~zero
            kk = k.to(torch.float64)
            alpha = cfg.alpha_final + 0.5 * (cfg.alpha - cfg.alpha_final) * (
                1 + torch.cos(math.pi * kk.clamp(max=max(total, 1)) / max(total, 1)))
            if cfg.alpha_relative:
                alpha = alpha * eps
            if cfg.tangent:
                g = _tangent(g, delta)
            step = (alpha / gn.double().clamp_min(1e-300)).to(x.dtype)
            new = delta - step.view(-1, *([1] * (x.dim() - 1))) * g
            nn_ = new.flatten(1).norm(dim=1).double()
            scale = torch.where(nn_ > 0, eps / nn_.clamp_min(1e-300), torch.zeros_like(nn_)).to(x.dtype)
            new = new * scale.view(-1, *([1] * (x.dim() - 1)))
            rows.delta[idx] = (x0 + new).clamp(0, 1) - x0
            rows.k[idx] = k + 1
            if cfg.patience is not None:
                stale = torch.where(improved, torch.zeros_like(k), rows.stale[idx] + 1)
                rows.stale[idx] = stale
                done = torch.isfinite(rows.best[idx]) & (stale >= cfg.patience)
                rows.active[idx] = rows.active[idx] & ~done


@dataclass
class _Run:
    """What every step of one ``_search`` call shares."""

    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    cap: torch.Tensor  # [b] the largest distance the box allows around each x
    total: int  # schedule length of a row that runs to the end
    tally: Tally
    n_zero: Union[int, torch.Tensor] = 0  # samples with a zero gradient at their first step (summed on device)


def _tangent(g: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per row, the part of ``g`` orthogonal to ``delta`` (``g`` itself where ``delta`` is 0)."""
    shape = (-1, *([1] * (g.dim() - 1)))
    dn = delta.flatten(1).norm(dim=1)
    u = delta / dn.clamp_min(torch.finfo(delta.dtype).tiny).view(shape)
    return g - (g * u).flatten(1).sum(1).view(shape) * u


def _set_rows(buf: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``buf[idx] = values``, (re)allocating ``buf`` with ``values``' width on first use."""
    if buf.shape[1] != values.shape[1]:
        buf = torch.zeros((buf.shape[0], values.shape[1]), dtype=values.dtype, device=values.device)
    buf[idx] = values
    return buf
