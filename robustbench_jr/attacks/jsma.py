"""JSMA: Jacobian-based saliency map search over pixel pairs (Papernot et al. 2016).

Targeted to class t: at each iteration the forward derivatives of the logits give,
for every input component p (one pixel-channel), α_p = ∂Z_t/∂x_p and
β_p = Σ_{j≠t} ∂Z_j/∂x_p (two backward passes). Over pairs (p, q) of the search
domain Γ, with s = sign(θ), the saliency is
    S(p, q) = (s·(α_p + α_q)) · (−s·(β_p + β_q))  if s·(α_p+α_q) > 0 and s·(β_p+β_q) < 0,
and the best pair is moved by θ (then clipped to [0, 1]). Γ holds the components
that can still move in the direction of θ (x < 1 for θ > 0, x > 0 for θ < 0); a
component leaves Γ when it reaches the bound, which for θ = ±1 is right after its
first change. The search stops when the model is fooled (``stop_on='misclassified'``,
any class ≠ y — the fooling distance; or ``stop_on='target'``, Papernot's targeted
success), when no pair is admissible, or when more than γ·N components would be
changed (N = C·H·W).

Untargeted: the targeted search is run for every class t ≠ y (or only the
``targets`` classes with the largest clean logits), and the best result per sample
is kept: smallest L0, ties broken by smaller L2. A later target only runs while it
can still match the best L0 found so far.

Memory: the pair search never builds the full [B, N, N] map. Rows p are processed in
chunks of R = max(1, ⌊chunk_elements / (B_a·N)⌋) for B_a active samples, so the pair
tensors are [B_a, R, N]. Peak extra memory of the pair search is about
    (3·itemsize + 3) · B_a · R · N bytes ≤ (3·itemsize + 3) · max(chunk_elements, B_a·N) bytes
(three float tensors — α-sum, β-sum, score — and a few bool masks), i.e. ≈ 60 MB for
float32 and the default chunk_elements = 2²², whatever N is; plus O(B_a·N) for the
gradients and the domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import param
from ..errors import ConfigError
from .base import Found, Search, Tally

_STOP_ON = ("misclassified", "target")


@dataclass
class JSMAConfig:
    #: change applied to the two chosen components (+1: set to max; negative: decrease)
    theta: float = 1.0
    #: largest fraction of input components that may be changed
    gamma: float = param(0.1, gt=0, le=1)
    #: number of target classes tried (largest clean logits first); None = every class ≠ y
    targets: Optional[int] = param(None, ge=1)
    #: 'misclassified' (stop at any wrong class) or 'target' (stop when the target is predicted)
    stop_on: str = param("misclassified", choices=_STOP_ON)
    #: saliency on logits (True) or on softmax probabilities (False)
    use_logits: bool = True
    #: elements per pair-search chunk (bounds memory, see module docstring)
    chunk_elements: int = param(1 << 22, ge=1)

    def validate(self) -> None:
        # not a range: θ may be negative or positive, only 0 (and non-finite) is meaningless
        if self.theta == 0 or not math.isfinite(self.theta):
            raise ConfigError(f"jsma: theta must be a non-zero number, got {self.theta}")


def best_pairs(a: torch.Tensor, bsum: torch.Tensor, domain: torch.Tensor, chunk_elements: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The admissible pair p < q maximising (a_p + a_q)·(−(b_p + b_q)) with a-sum > 0 and
    b-sum < 0, both in ``domain``, per row of the [n, N] inputs (a, b already multiplied
    by sign θ). Returns (p, q, valid), each [n]. Chunked over p (see module docstring)."""
    n, N = a.shape
    dev = a.device
    neg_inf = torch.tensor(float("-inf"), dtype=a.dtype, device=dev)
    best = torch.full((n,), float("-inf"), dtype=a.dtype, device=dev)
    bp = torch.zeros(n, dtype=torch.int64, device=dev)
    bq = torch.zeros(n, dtype=torch.int64, device=dev)
    rows = max(1, chunk_elements // max(1, n * N))
    cols = torch.arange(N, device=dev)
    a_dom = torch.where(domain, a, torch.zeros_like(a))
    b_dom = torch.where(domain, bsum, torch.zeros_like(bsum))
    for start in range(0, N, rows):
        end = min(N, start + rows)
        # only rows p that are in someone's domain matter; skip empty chunks cheaply
        dom_p = domain[:, start:end]
        if not bool(dom_p.any()):
            continue
        A = a_dom[:, start:end, None] + a_dom[:, None, :]
        ok = A > 0
        Bm = b_dom[:, start:end, None] + b_dom[:, None, :]
        ok &= Bm < 0
        ok &= dom_p[:, :, None] & domain[:, None, :]
        ok &= (cols[None, :] > torch.arange(start, end, device=dev)[:, None])[None]
        score = torch.where(ok, A.mul_(Bm.neg_()), neg_inf)
        del A, Bm, ok
        val, flat = score.flatten(1).max(1)
        del score
        better = val > best
        best = torch.where(better, val, best)
        bp = torch.where(better, start + torch.div(flat, N, rounding_mode="floor"), bp)
        bq = torch.where(better, flat % N, bq)
    return bp, bq, torch.isfinite(best)


class JSMASearch(Search):
    """Papernot et al.'s pairwise saliency-map search; untargeted = best over targets."""

    name = "jsma"
    Config = JSMAConfig

    def _search(self, model, x, y, ids, seed):
        cfg = self.config
        b = x.shape[0]
        dev = x.device
        tally = Tally(b, dev)
        N = x[0].numel()
        max_changed = int(math.floor(cfg.gamma * N))
        with torch.no_grad():
            z0 = model(x)
        tally.add_forward(torch.arange(b, device=dev))
        k_all = z0.shape[1]
        order = z0.argsort(1, descending=True)
        others = order[order != y[:, None]].view(b, k_all - 1)
        n_targets = k_all - 1 if cfg.targets is None else min(cfg.targets, k_all - 1)
        best_l0 = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
        best_l2 = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
        best_adv = torch.full_like(x, float("nan"))
        for r in range(n_targets):
            t = others[:, r]
            adv, ok = self._targeted(model, x, y, t, max_changed, best_l0, tally)
            diff = (adv.double() - x.double()).flatten(1)
            l0 = (diff != 0).sum(1).double()
            l2 = diff.norm(dim=1)
            better = ok & ((l0 < best_l0) | ((l0 == best_l0) & (l2 < best_l2)))
            best_l0 = torch.where(better, l0, best_l0)
            best_l2 = torch.where(better, l2, best_l2)
            best_adv[better] = adv[better]
        return Found(best_adv, torch.isfinite(best_l0), tally.forward, tally.grad)

    def _targeted(self, model, x, y, t, max_changed, best_l0, tally):
        cfg = self.config
        b = x.shape[0]
        dev = x.device
        s = 1.0 if cfg.theta > 0 else -1.0
        limit = torch.clamp(best_l0, max=float(max_changed))  # a target only runs while it can tie the best
        cur = x.clone().flatten(1)
        x_flat = x.flatten(1)
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        active = limit >= 2 if max_changed >= 2 else torch.zeros(b, dtype=torch.bool, device=dev)
        per_pixel = max(1, math.ceil(1.0 / abs(cfg.theta)))
        max_iter = per_pixel * (max_changed // 2 + 1) + 1
        for it in range(max_iter + 1):
            idx = active.nonzero().squeeze(1)
            if not idx.numel():
                break
            with torch.enable_grad():
                xin = cur[idx].view((-1,) + tuple(x.shape[1:])).requires_grad_(True)
                logits = model(xin)
                tally.add_forward(idx)
                pred = logits.detach().argmax(1)
                ti = t[idx]
                done = (pred == ti) if cfg.stop_on == "target" else (pred != y[idx])
                found[idx[done]] = True
                active[idx[done]] = False
                if it == max_iter or bool(done.all()):
                    continue
                out = logits if cfg.use_logits else logits.softmax(1)
                onehot = torch.zeros_like(out).scatter_(1, ti[:, None], 1.0)
                (ga,) = torch.autograd.grad(out, xin, onehot, retain_graph=True)
                (gall,) = torch.autograd.grad(out, xin, torch.ones_like(out))
            keep = ~done
            k_idx = idx[keep]
            tally.add_grad(k_idx, 2)
            alpha = ga[keep].flatten(1)
            beta = gall[keep].flatten(1) - alpha
            ck = cur[k_idx]
            domain = (ck < 1) if s > 0 else (ck > 0)
            p, q, valid = best_pairs(s * alpha, s * beta, domain, cfg.chunk_elements)
            rows = torch.arange(k_idx.numel(), device=dev)
            nxt = ck.clone()
            nxt[rows, p] = (nxt[rows, p] + cfg.theta).clamp(0, 1)
            nxt[rows, q] = (nxt[rows, q] + cfg.theta).clamp(0, 1)
            changed = (nxt != x_flat[k_idx]).sum(1).double()
            over = changed > limit[k_idx]
            ok = valid & ~over
            cur[k_idx[ok]] = nxt[ok]
            active[k_idx[~ok]] = False
        adv = cur.view_as(x)
        return adv, found
