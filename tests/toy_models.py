"""Small models with known behaviour, shared by the attack tests."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class Affine(nn.Module):
    """logits = W · flatten(x) + b."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


class TinyMLP(nn.Module):
    """d → h (tanh) → k, weights N(0, scale²/fan_in) from ``seed``; optional dropout."""

    def __init__(self, d=64, h=32, k=10, seed=0, dropout=0.0, scale=1.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(d, h)
        self.l2 = nn.Linear(h, k)
        self.drop = nn.Dropout(dropout)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (scale / math.sqrt(p.shape[-1])))

    def forward(self, x):
        return self.l2(self.drop(torch.tanh(self.l1(x.flatten(1)))))


class Counting(nn.Module):
    """Counts the rows of forward passes (``rows``, per call in ``batches``) and of backward
    passes through the logits (``grad_rows``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = 0
        self.grad_rows = 0
        self.batches = []

    def forward(self, x):
        self.rows += x.shape[0]
        self.batches.append(x.shape[0])
        out = self.inner(x)
        if out.requires_grad:
            n = x.shape[0]

            def hook(g, n=n):
                self.grad_rows += n

            out.register_hook(hook)
        return out


def saturated_box(d: int = 64, dist: float = 0.4) -> tuple[Affine, torch.Tensor]:
    """A 2-logit affine model and one image ([1, 1, √d, √d], float64) with a quarter of its
    pixels at exactly 0, a quarter at exactly 1 and the rest at 0.5, whose closest boundary
    point is ``dist`` away and moves every pixel by the same amount, inwards for the
    saturated ones (a search that freezes saturated pixels lands farther away)."""
    x = torch.full((1, d), 0.5, dtype=torch.float64)
    x[0, : d // 4] = 0.0
    x[0, d // 4: d // 2] = 1.0
    w = torch.ones(d, dtype=torch.float64)
    w[d // 4: d // 2] = -1.0
    b1 = -(x[0] @ w) - dist * w.norm()  # w·x + b = −dist·|w|: class 0, boundary dist away
    model = Affine(torch.stack([torch.zeros(d, dtype=torch.float64), w]),
                   torch.tensor([0.0, float(b1)], dtype=torch.float64))
    side = int(round(d ** 0.5))
    return model, x.view(1, 1, side, side)
