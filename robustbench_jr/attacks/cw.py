"""Carlini–Wagner L2 with per-sample binary search (Hoffman et al. 2019, App. F (iv)).

Change of variables: the image is x' = clip(x₀ + (tanh w − tanh w₀) / (2(1 − ε)), 0, 1)
with w₀ = artanh((2x₀ − 1)(1 − ε)), ε = ``tanh_margin`` (0.02). The margin maps [0, 1]
into [−(1 − ε), 1 − ε] before artanh, so a pixel sitting exactly at 0 or 1 has a
finite w₀ and a derivative 1 − tanh² w₀ ≈ 2ε that does not vanish: it can still move
(with plain artanh, or foolbox's ε = 10⁻⁶, such pixels are frozen in practice). x' = x₀
exactly at w = w₀. The clip keeps x' in [0, 1]; its gradient is passed straight
through, so a component pushed against a bound can come back.

Objective per sample (Carlini & Wagner's f6 on logits, confidence κ):
‖x' − x₀‖² + c · max(Z_y(x') − max_{k≠y} Z_k(x'), −κ), minimised by Adam
(lr 0.005, β = (0.9, 0.999)) on w. Every iterate whose logits are adversarial
(margin ≤ −κ and argmax ≠ y) is a candidate; the closest one over all steps is kept.

Binary search over c, per sample: c starts at ``initial_const`` (0.01) and is
multiplied by ``const_growth`` (10) after each unsuccessful step until a step
succeeds, then bisected between the largest failing and the smallest successful c;
``binary_search_steps`` (10) steps in all. A step succeeds when it finds an
adversarial iterate — or, for a step warm-started from an adversarial, when one of
its last ``abort_check_every`` iterates is still adversarial (a too-small c drifts
back to the clean side). A sample leaves the binary search early once
c_hi / c_lo − 1 < ``const_rtol``.

Work per step, per sample — never on batch sums:

* at most ``max_iterations`` (1000) Adam iterations;
* early abort (``abort_early``): every ``abort_check_every`` (50) iterations the
  sample's loss must have dropped by at least ``abort_rtol`` (relative) since the
  previous check, and — once it is fooled in this step (``abort_on_distance``) — its
  best squared distance too; otherwise that sample stops;
* ``fail_check_every`` (a departure, off by default): as long as a sample has never been
  fooled (the first, too small values of c), also apply the loss criterion — less than
  ``abort_rtol`` decrease over the last ``abort_check_every`` iterations — every this many
  iterations, so that a step stalled on the clean side stops up to
  ``abort_check_every`` − ``fail_check_every`` iterations sooner. With 10 on the bundled
  LeNets (256 images) it saves 23–27 % of the passes the steps before the first success
  cost, 3–4.5 % of the total, and moves the median distance by −0.4 … +0.2 %
  (benchmarks/README.md, ``bench_cw_budget.py``): cheaper, but not the same computation,
  so the papers' protocol does not use it;
* ``success_patience``: once fooled in a step, a sample runs at most this many more
  iterations of that step (None, the default: until its abort or the budget);
* ``warm_start`` (default on): each step after the first starts from the sample's best
  adversarial so far (or, before any, from where its previous step ended) with a fresh
  Adam state, instead of from x₀. Set ``warm_start: false`` and
  ``abort_on_distance: false`` for the original restart-from-x₀ schedule.

Finished samples leave the batch: the model only sees samples still iterating.
One forward and one backward pass per iteration and active sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import param
from .base import Found, Search, Tally, margin_to_label


@dataclass
class CWConfig:
    #: Adam learning rate on the tanh variable w (Hoffman et al.: 0.005)
    lr: float = param(0.005, gt=0)
    #: first value of the constant c
    initial_const: float = param(0.01, gt=0)
    #: factor applied to c until the first success
    const_growth: float = param(10.0, gt=1)
    #: number of binary-search steps over c
    binary_search_steps: int = param(10, ge=1)
    #: Adam iterations per binary-search step and sample
    max_iterations: int = param(1000, ge=1)
    #: κ of the f6 loss: adversarial means Z_y − max_other ≤ −κ
    confidence: float = param(0.0, ge=0)
    #: per-sample early abort when the loss stops improving
    abort_early: bool = True
    #: iterations between two abort checks (per sample)
    abort_check_every: int = param(50, ge=1)
    #: relative loss decrease required between two checks
    abort_rtol: float = param(1e-3, ge=0, lt=1)
    #: also abort a fooled sample once its best distance stops improving
    abort_on_distance: bool = True
    #: until a sample is first fooled, apply the loss check also every this many iterations
    #: (against the loss abort_check_every iterations earlier); None = block checks only
    fail_check_every: Optional[int] = param(None, ge=1)
    #: iterations a sample keeps going in a step after it is first fooled; None = no limit
    success_patience: Optional[int] = param(None, ge=0)
    #: start each binary-search step from the best adversarial so far
    warm_start: bool = True
    #: stop the binary search of a sample once c_hi/c_lo − 1 < const_rtol
    const_rtol: float = param(0.01, ge=0)
    #: ε of the tanh change of variables ([0, 1] → [−(1−ε), 1−ε])
    tanh_margin: float = param(0.02, gt=0, lt=1)
    #: Adam β₁, β₂ and ε
    beta1: float = param(0.9, ge=0, lt=1)
    beta2: float = param(0.999, ge=0, lt=1)
    adam_eps: float = param(1e-8, gt=0)


class CWSearch(Search):
    """Carlini–Wagner L2: tanh variables, f6 logits loss, Adam, per-sample binary search on c."""

    name = "cw"
    Config = CWConfig

    def _search(self, model, x, y, ids, seed):
        cfg = self.config
        b = x.shape[0]
        dev = x.device
        tally = Tally(b, dev)
        eps = float(cfg.tanh_margin)
        scale = 1.0 / (2.0 * (1.0 - eps))
        t0 = (2.0 * x - 1.0) * (1.0 - eps)
        w0 = torch.atanh(t0)
        c = torch.full((b,), float(cfg.initial_const), dtype=torch.float64, device=dev)
        c_lo = torch.zeros(b, dtype=torch.float64, device=dev)
        c_hi = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
        best_sq = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
        best_adv = torch.full_like(x, float("nan"))
        w_last = w0.clone()
        in_search = torch.ones(b, dtype=torch.bool, device=dev)
        kappa = float(cfg.confidence)

        for bstep in range(cfg.binary_search_steps):
            idx = in_search.nonzero().squeeze(1)
            if not idx.numel():
                break
            # starting point of this step
            from_adv = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
            if cfg.warm_start and bstep > 0:
                have = torch.isfinite(best_sq[idx])
                from_adv = have
                start = w_last[idx].clone()
                if bool(have.any()):
                    hb = idx[have]
                    tb = ((best_adv[hb] - x[hb]) / scale + t0[hb]).clamp(-1 + 1e-6, 1 - 1e-6)
                    start[have] = torch.atanh(tb)
            else:
                start = w0[idx].clone()
            success = self._optimise(model, x, y, t0, scale, idx, start, c, kappa, best_sq, best_adv,
                                     w_last, tally, from_adv)
            # per-sample binary search update
            s_idx, f_idx = idx[success], idx[~success]
            c_hi[s_idx] = torch.minimum(c_hi[s_idx], c[s_idx])
            c_lo[f_idx] = torch.maximum(c_lo[f_idx], c[f_idx])
            bounded = torch.isfinite(c_hi[idx])
            c[idx] = torch.where(bounded, 0.5 * (c_lo[idx] + c_hi[idx]), c[idx] * cfg.const_growth)
            narrow = bounded & (c_lo[idx] > 0) & (c_hi[idx] / c_lo[idx].clamp_min(1e-300) - 1 < cfg.const_rtol)
            in_search[idx[narrow]] = False
        found = torch.isfinite(best_sq)
        return Found(best_adv, found, tally.forward, tally.grad)

    def _optimise(self, model, x, y, t0, scale, idx, w_start, c, kappa, best_sq, best_adv, w_last, tally,
                  from_adv):
        """One binary-search step for samples ``idx``; updates the bests in place and
        returns which of them succeeded with this c: found an adversarial iterate or,
        for rows started from an adversarial (``from_adv``, warm start), still had one
        among the last ``abort_check_every`` iterates (so a too-small c, which drifts
        back to the clean side, counts as a failure)."""
        cfg = self.config
        n = idx.numel()
        dev = x.device
        w = w_start
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
        pos = torch.arange(n, device=dev)          # row in the compact state -> position in idx
        act = idx.clone()                          # sample index of each compact row
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        since_success = torch.zeros(n, dtype=torch.int64, device=dev)
        last_adv = torch.full((n,), -(1 << 40), dtype=torch.int64, device=dev)
        stop_it = torch.full((n,), cfg.max_iterations, dtype=torch.int64, device=dev)
        # loss_hist[:, i % A]: the loss of iteration i (A = abort_check_every), so that any
        # check at iteration it compares with iteration it − A; +inf before that
        a_every = cfg.abort_check_every
        loss_hist = torch.full((n, a_every), float("inf"), dtype=torch.float64, device=dev)
        prev_best = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        x0, t0a, ya, ca = x[act], t0[act], y[act], c[act].to(x.dtype)
        b1, b2 = cfg.beta1, cfg.beta2
        for it in range(1, cfg.max_iterations + 1):
            with torch.enable_grad():
                wv = w.detach().requires_grad_(True)
                raw = x0 + (torch.tanh(wv) - t0a) * scale
                adv = raw + (raw.clamp(0, 1) - raw).detach()   # clip, straight-through gradient
                logits = model(adv)
                l2sq = (adv - x0).flatten(1).pow(2).sum(1)
                marg = margin_to_label(logits, ya)
                loss = l2sq + ca * marg.clamp_min(-kappa)
                (g,) = torch.autograd.grad(loss.sum(), wv)
            tally.add_forward(act)
            tally.add_grad(act)
            with torch.no_grad():
                z = logits.detach()
                is_adv = (marg.detach() <= -kappa) & (z.argmax(1) != ya)
                d = l2sq.detach().double()
                # masked updates, no host-device sync per iteration (rows of ``act`` are distinct)
                better = is_adv & (d < best_sq[act])
                best_sq[act] = torch.where(better, d, best_sq[act])
                best_adv[act] = torch.where(better.view(-1, *([1] * (x.dim() - 1))), adv.detach(), best_adv[act])
                success[pos] = success[pos] | is_adv
                last_adv[pos] = torch.where(is_adv, torch.full_like(last_adv[pos], it), last_adv[pos])
                since_success = torch.where(success[pos], since_success + 1, since_success)
                # Adam step on w
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                mhat = m / (1 - b1 ** it)
                vhat = v / (1 - b2 ** it)
                w = w - cfg.lr * mhat / (vhat.sqrt() + cfg.adam_eps)
                # per-sample stopping, decided (one sync) only at iterations where a sample can stop
                if not (it == cfg.max_iterations or cfg.success_patience is not None
                        or (cfg.abort_early and (it % a_every == 0 or (cfg.fail_check_every is not None
                                                                       and it % cfg.fail_check_every == 0)))):
                    if cfg.abort_early:
                        loss_hist[:, it % a_every] = loss.detach().double()
                    continue
                stop = torch.zeros(w.shape[0], dtype=torch.bool, device=dev)
                if cfg.abort_early:
                    lval = loss.detach().double()
                    stalled = lval > (1 - cfg.abort_rtol) * loss_hist[:, it % a_every]
                    loss_hist[:, it % a_every] = lval
                    if it % a_every == 0:
                        stop |= stalled
                    elif cfg.fail_check_every is not None and it % cfg.fail_check_every == 0:
                        # not fooled yet in any step: give a stalled step up without waiting for the block
                        stop |= stalled & ~torch.isfinite(best_sq[act])
                if cfg.abort_early and it % a_every == 0:
                    if cfg.abort_on_distance:
                        bnow = best_sq[act]
                        stop |= success[pos] & (bnow > (1 - cfg.abort_rtol) * prev_best)
                        prev_best = bnow
                if cfg.success_patience is not None:
                    stop |= success[pos] & (since_success > cfg.success_patience)
                if it == cfg.max_iterations:
                    stop[:] = True
                if bool(stop.any()):
                    # two syncs per stop event: this test and the rows kept (then index, not mask)
                    w_last[act] = torch.where(stop.view(-1, *([1] * (w.dim() - 1))), w, w_last[act])
                    stop_it[pos] = torch.where(stop, torch.full_like(stop_it[pos], it), stop_it[pos])
                    ki = (~stop).nonzero().squeeze(1)
                    if not ki.numel():
                        break
                    w, m, v = w[ki], m[ki], v[ki]
                    pos, act = pos[ki], act[ki]
                    loss_hist, since_success, prev_best = loss_hist[ki], since_success[ki], prev_best[ki]
                    x0, t0a, ya, ca = x0[ki], t0a[ki], ya[ki], ca[ki]
        success &= ~from_adv | (stop_it - last_adv < cfg.abort_check_every)
        return success
