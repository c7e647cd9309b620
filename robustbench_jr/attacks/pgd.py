"""PGD fooling-distance search (Hoffman et al. 2019, §4 and App. F (iii)).

FGSM steps of ``step_size`` (1/255) along the sign of the cross-entropy gradient at
the current point, each followed by projection onto the Linf "saturation" box
[x₀ − saturation, x₀ + saturation] (32/255 for MNIST, 16/255 for CIFAR-like data)
and onto [0, 1]. Every sample stops at the first step whose image fools the model;
the reported distance is that image's. ``max_steps`` bounds the steps; a sample
never fooled within it is a failure (+inf).

Per step and active sample: one forward pass (which also tells whether the current
image fools) and, for samples not yet fooled, one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import param
from .base import Found, Search, Tally, warn_zero_gradients


@dataclass
class PGDConfig:
    #: Linf step per iteration, in [0, 1] pixel units
    step_size: float = param(1.0 / 255.0, gt=0)
    #: Linf radius of the box around the clean image; None = no saturation constraint
    saturation: Optional[float] = param(32.0 / 255.0, gt=0)
    #: steps per sample before giving up
    max_steps: int = param(200, ge=1)


class PGDSearch(Search):
    """Iterated 1/255 sign steps inside the saturation box, stopping at the first fooling step."""

    name = "pgd"
    Config = PGDConfig

    def _search(self, model, x, y, ids, seed):
        cfg = self.config
        b = x.shape[0]
        dev = x.device
        tally = Tally(b, dev)
        sat = 1.0 if cfg.saturation is None else float(cfg.saturation)
        box_lo = (x - sat).clamp(0, 1)
        box_hi = (x + sat).clamp(0, 1)
        cur = x.clone()
        adv = torch.full_like(x, float("nan"))
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        active = torch.ones(b, dtype=torch.bool, device=dev)
        zero_grad = torch.zeros(b, dtype=torch.bool, device=dev)
        # one host-device synchronisation per iteration (the compaction to the active samples);
        # everything else is masked arithmetic on the device
        for step in range(cfg.max_steps + 1):
            idx = active.nonzero().squeeze(1)
            if not idx.numel():
                break
            with torch.enable_grad():
                xin = cur[idx].requires_grad_(True)
                logits = model(xin)
                tally.add_forward(idx)
                fooled = logits.detach().argmax(1) != y[idx]
                if step == 0:
                    fooled = torch.zeros_like(fooled)  # the search only gets correctly classified samples
                adv[idx] = torch.where(fooled.view(-1, 1, 1, 1), cur[idx], adv[idx])
                found[idx] |= fooled
                active[idx] &= ~fooled
                if step == cfg.max_steps:
                    continue
                keep = ~fooled
                # a fooled sample's loss is masked out: its input gradient is exactly zero
                loss = (F.cross_entropy(logits, y[idx], reduction="none") * keep).sum()
                (g,) = torch.autograd.grad(loss, xin)
            tally.grad[idx] += keep.to(torch.int64)
            zero_grad[idx] |= (g.flatten(1) == 0).all(1) & keep & (step == 0)
            nxt = cur[idx] + cfg.step_size * g.sign()
            nxt = torch.minimum(torch.maximum(nxt, box_lo[idx]), box_hi[idx])
            # a step that changes nothing repeats forever: that sample is stuck
            stuck = (nxt == cur[idx]).flatten(1).all(1) & keep
            active[idx] &= ~stuck
            cur[idx] = torch.where(keep.view(-1, 1, 1, 1), nxt, cur[idx])
        warn_zero_gradients(self.name, int(zero_grad.sum()))
        return Found(adv, found, tally.forward, tally.grad)
