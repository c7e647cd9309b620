"""White-noise search (Hoffman et al. 2019, App. F (i)).

Per sample, a Gaussian direction u (unit L2 norm) is drawn from the sample's own
generator (see :mod:`.base`); the candidate at magnitude m is clip(x + m·u, 0, 1).
The magnitude grows geometrically (``growth``, doubling by default) from
``init_magnitude`` until the model is fooled, then is bisected between the last
non-fooling and the first fooling magnitude until the bracket is narrower than
``rtol`` (relative). The clipped distance along a direction never decreases with
m, so the smallest fooling magnitude gives the smallest distance along u. With
``n_directions`` > 1 each direction is searched and the closest fooling image kept.

A direction fails (+inf) when the magnitude passes ``max_magnitude``, when the
clipped image stops changing (every component saturated at 0 or 1, or u = 0 there),
or when the per-direction forward budget ``max_forward`` runs out before fooling.
Forward passes only; no gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import param
from ..errors import ConfigError
from .base import Found, Search, Tally, bisect_fooling, sample_generators


@dataclass
class NoiseConfig:
    #: directions tried per sample; the closest fooling image over them is kept
    n_directions: int = param(1, ge=1)
    #: L2 norm of the first (unclipped) perturbation tried
    init_magnitude: float = param(0.1, gt=0)
    #: factor by which the magnitude grows until the model is fooled
    growth: float = param(2.0, gt=1)
    #: largest magnitude tried; None = 10·sqrt(number of input components)
    max_magnitude: Optional[float] = param(None, gt=0)
    #: bisection stops when (hi − lo) ≤ rtol·hi
    rtol: float = param(1e-3, gt=0, lt=1)
    #: forward passes per sample and direction (growth + bisection)
    max_forward: int = param(64, ge=1)

    def validate(self) -> None:
        if self.max_magnitude is not None and not self.max_magnitude >= self.init_magnitude:
            raise ConfigError(f"noise: max_magnitude must be ≥ init_magnitude ({self.init_magnitude}), "
                              f"got {self.max_magnitude}")


class NoiseSearch(Search):
    """Seeded Gaussian direction per sample, magnitude grown then bisected until fooled."""

    name = "noise"
    Config = NoiseConfig
    uses_gradients = False

    def _search(self, model, x, y, ids, seed):
        cfg = self.config
        b = x.shape[0]
        dev, dt = x.device, x.dtype
        tally = Tally(b, dev)
        gens = sample_generators(seed, ids, self.name, dev)
        max_mag = cfg.max_magnitude if cfg.max_magnitude is not None else 10.0 * math.sqrt(x[0].numel())
        best_adv = torch.full_like(x, float("nan"))
        best_d = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
        for _ in range(cfg.n_directions):
            u = torch.stack([torch.randn(x.shape[1:], generator=g, device=dev, dtype=dt) for g in gens])
            norm = u.flatten(1).norm(dim=1).clamp_min(torch.finfo(dt).tiny)
            u = u / norm.view(-1, 1, 1, 1)
            adv, found = self._one_direction(model, x, y, u, max_mag, tally)
            d = (adv.double() - x.double()).flatten(1).norm(dim=1)
            better = found & (d < best_d)
            best_d = torch.where(better, d, best_d)
            best_adv[better] = adv[better]
        return Found(best_adv, torch.isfinite(best_d), tally.forward, tally.grad)

    def _one_direction(self, model, x, y, u, max_mag, tally):
        cfg = self.config
        b = x.shape[0]
        dev = x.device
        mag = torch.full((b,), float(cfg.init_magnitude), dtype=torch.float64, device=dev)
        lo = torch.zeros(b, dtype=torch.float64, device=dev)
        hi = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
        used = torch.zeros(b, dtype=torch.int64, device=dev)
        adv = torch.full_like(x, float("nan"))
        growing = torch.ones(b, dtype=torch.bool, device=dev)

        def evaluate(idx, m):
            cand = (x[idx] + m.to(x.dtype).view(-1, 1, 1, 1) * u[idx]).clamp(0, 1)
            with torch.no_grad():
                fooled = model(cand).argmax(1) != y[idx]
            used[idx] += 1
            tally.add_forward(idx)
            return cand, fooled

        # growth phase
        while True:
            idx = growing.nonzero().squeeze(1)
            if not idx.numel():
                break
            m = mag[idx]
            cand, fooled = evaluate(idx, m)
            f_idx = idx[fooled]
            hi[f_idx] = m[fooled]
            adv[f_idx] = cand[fooled]
            nf = ~fooled
            n_idx = idx[nf]
            lo[n_idx] = m[nf]
            raw = x[n_idx] + m[nf].to(x.dtype).view(-1, 1, 1, 1) * u[n_idx]
            saturated = ((raw >= 1) | (raw <= 0) | (u[n_idx] == 0)).flatten(1).all(1)
            mag[n_idx] = m[nf] * cfg.growth
            stop = saturated | (mag[n_idx] > max_mag) | (used[n_idx] >= cfg.max_forward)
            growing[f_idx] = False
            growing[n_idx[stop]] = False
        # bisection phase
        bisect_fooling(lo, hi, adv, evaluate, cfg.rtol, allowed=lambda: used < cfg.max_forward)
        return adv, torch.isfinite(hi)
